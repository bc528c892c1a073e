"""experiments/figure10.py (Figure 10 in miniature: two generator sizes on a narrow and a wide PS-VAE latent) at the
tiny preset, end to end: the tokenizers of a tiny Table 4 run, four runs, the figure, the table and its JSON; a second
call trains nothing; the larger models really have about 2.5x the parameters; a missing width is one sentence.

Run: OMP_NUM_THREADS=1 python -m pytest -q -n 0 -m slow tests/test_figure10.py  (the end-to-end test, ~1 min)
"""
import json
import os
import re
import sys

import pytest
import torch

import evaluate as E
import generator as G
import tokenizer as T

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import figure10  # noqa: E402

WIDTHS, MODELS = (2, 8), ("tiny", "tiny-l")  # the tiny Table 4 sweep's widths; the tiny generator and its larger one


def params(model, shape):
    """Parameters of the generator of MODELS[model] (the tiny preset's text length, DDT head, no LM) on `shape`."""
    cfg = dict(model=model, patch=1, text_len=G.PRESETS["tiny"]["text_len"], head="ddt", lm=None, fusion="transfusion")
    return sum(p.numel() for p in G.build_model(cfg, shape).parameters())


def test_the_larger_models_have_about_2_5x_the_parameters():
    """tiny-l and cpu-l against tiny and cpu, on their presets' latents, from generator.MODELS alone."""
    for small, shape in (("tiny", (4, 4, 4)), ("cpu", (24, 8, 8))):
        ratio = params(small + "-l", shape) / params(small, shape)
        assert 2.2 < ratio < 2.8, (small, ratio)
    for m in ("tiny-l", "cpu-l"):  # heads divide the width, key-value heads divide the heads
        c = G.MODELS[m]
        assert c.width % c.heads == 0 and c.heads % c.kv_heads == 0 and c.head_width % c.head_heads == 0


def test_the_larger_backbone_has_its_caption_lm(tmp_path):
    """--lm caption with --model tiny-l: the caption LM pre-trains on the tiny-l backbone (LM_PRESETS' entry) and the
    generator built on it has tiny-l's sizes and starts from its weights."""
    G.pretrain_caption_lm("tiny-l", str(tmp_path), {**G.LM_PRESETS["tiny-l"], "steps": 2}, torch.device("cpu"))
    model = G.build_model(dict(model="tiny-l", patch=1, text_len=16, head="ddt", lm=str(tmp_path)), (4, 4, 4))
    model.load_lm(str(tmp_path))
    assert (model.cfg.width, model.cfg.depth) == (G.MODELS["tiny-l"].width, G.MODELS["tiny-l"].depth)


def test_a_missing_width_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit) as e:
        figure10.main(["--preset", "tiny", "--runs", str(tmp_path), "--channels", "2,8"])
    msg = str(e.value)
    assert "\n" not in msg and f"`python evaluate.py table4 --preset tiny --runs {tmp_path}`" in msg
    assert "no finished PS-VAE tokenizer of 2 channels" in msg
    with pytest.raises(SystemExit, match="makes PS-VAE latents of 2, 4, 8 channels, not 16;"):
        figure10.main(["--preset", "tiny", "--runs", str(tmp_path), "--channels", "2,16"])


def numbers(res):
    """Every number of the JSON as the table may write it: 1 to 3 decimals, signed or not, millions, GFLOP."""
    out = set()

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            for x in (v, v / 1e6, v / 1e9):
                out.update(f"{x:.{d}f}" for d in (1, 2, 3))
                out.update(f"{x:+.{d}f}" for d in (1, 2, 3))
    walk(res)
    return out


def psvae_widths(runs):
    """The sweep's two PS-VAE latents the figure reads (psvae-c2/, psvae-c8/), trained and measured as `evaluate.py
    table4` does (its job, at the budget 3), without the six other latents of a whole tiny Table 4."""
    stage0, sz = runs / "stage0", E.TABLE4_SIZES["tiny"]
    T.main(["--preset", "tiny", "--stage", "0", "--steps", "2", "--out", str(stage0)])
    ev = dict(split="val", n=sz["n"], batch=32, data=None, evaluator_steps=sz["evaluator_steps"], device=None,
              evaluator_cache=str(runs / "evaluator"), n_train=sz["n_train"], n_test=sz["n_test"])
    for C in WIDTHS:
        E.table4_job(dict(kind="latent", out=str(runs / f"psvae-c{C}"), stage0=str(stage0 / "stage0.pt"), ev=ev,
                          threads=1, plan=list(zip((1, 2), E.table4_steps(3, 2))),
                          args=["--preset", "tiny", "--recipe", "psvae", "--latent-channels", str(C)]))


@pytest.mark.slow  # about a minute on 2 cores: run with -m slow
def test_figure10_tiny_end_to_end(tmp_path):
    psvae_widths(tmp_path / "runs")
    argv = ["--preset", "tiny", "--runs", str(tmp_path / "runs"), "--channels", ",".join(map(str, WIDTHS)),
            "--models", ",".join(MODELS), "--steps", "2", "--every", "1", "--edit-steps", "1", "--n-off", "8",
            "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res"), "--jobs", "2", "--seed", "0"]
    res = figure10.main(argv)
    res_dir = tmp_path / "res"
    assert open(res_dir / "figure10.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(res_dir / "figure10.json")) == json.loads(json.dumps(res))
    runs = res["runs"]
    assert sorted((r["width"], r["model"]) for r in runs) == sorted((C, m) for C in WIDTHS for m in MODELS)
    batch = G.PRESETS["tiny"]["batch_size"]
    for r in runs:
        assert os.path.basename(r["out"]) == f"c{r['width']}-{r['model']}"  # the folder says width and model
        assert 0 <= r["geneval_rules"] <= 1 and 0 <= r["geneval_strict"] <= 1 and 0 <= r["edit_hit"] <= 1
        assert r["geneval_rules_se"] >= 0 and r["edit_hit_se"] >= 0 and r["n_edits"] > 0
        assert r["samples"] == 2 * batch and [c[0] for c in r["curve"]] == [batch, 2 * batch]  # same samples for all
        assert r["trained_steps"] == {"generator": 2, "editor": 1}
        shape = tuple(G.open_tokenizer(r["tokenizer"])[1])
        assert shape[0] == r["width"] and r["params"] == params(r["model"], shape)  # recomputed from MODELS
    for C in WIDTHS:
        small, large = (next(r for r in runs if (r["width"], r["model"]) == (C, m)) for m in MODELS)
        assert 2 < large["params"] / small["params"] < 3 and large["flops_per_sample"] > 2 * small["flops_per_sample"]
        gain = next(g for g in res["gains"] if g["width"] == C)
        assert gain["param_ratio"] == large["params"] / small["params"]
        assert gain["edit_hit"] == pytest.approx(large["edit_hit"] - small["edit_hit"])
    assert {(g["paper_width"], round(g["paper_geneval"], 2), round(g["paper_editing"], 3)) for g in res["gains"]} == \
        {("32c", 0.60, -0.046), ("96c", 1.58, 0.063)}
    # the table: every number of its rows is one of the JSON's, as written; the command, machine and precision
    md = open(res_dir / "figure10.md").read()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln and not ln.startswith("| latent")
            and not ln.startswith("| samples")]
    assert len(rows) == 4 + 2 + 2  # runs, gains, curve points
    known = numbers(res)
    for ln in rows:
        for num in re.findall(r"[-+]?\d+\.\d+", re.sub(r"Qwen2\.5-\d\.\dB", "", ln)):  # (the paper's LMs' names)
            assert num in known, (num, ln)
    for r in runs:
        assert f"{r['geneval_rules']:.3f} +- {r['geneval_rules_se']:.3f}" in md and f"{r['params'] / 1e6:.3f}M" in md
        assert f"{r['edit_hit']:.3f} +- {r['edit_hit_se']:.3f}" in md and f"{r['paper_geneval']:.2f}" in md
    assert res["command"] in md and res["machine"]["cpu"] in md and res["precision"] in md
    # the same command again trains nothing: every part is read back
    ckpts = [os.path.join(r["out"], "gen", "generator.pt") for r in runs]
    mtimes = [os.path.getmtime(c) for c in ckpts]
    again = figure10.main(argv)
    assert again["trained"] == 0 and all(r["trained_steps"] == {"generator": 0, "editor": 0} for r in again["runs"])
    assert [os.path.getmtime(c) for c in ckpts] == mtimes
    keys = ("geneval_rules", "geneval_strict", "edit_hit", "curve", "params")
    assert [{k: r[k] for k in keys} for r in again["runs"]] == [{k: r[k] for k in keys} for r in runs]


def test_counted_flops_are_those_of_the_generator_the_preset_trains():
    """figure10.py counts the FLOPs of the network the preset builds (its patch size included): a smaller patch
    would count four times the image tokens of the cpu preset's patch-2 generator."""
    from experiments.bench import generator_cost
    shape = (24, 8, 8)
    trains = G.parse_args(["--preset", "cpu", "--lm", "none"])
    assert figure10.model_size("cpu", "cpu", None, shape) == generator_cost({**trains, "lm": None}, shape)
    assert figure10.model_size("cpu", "cpu", None, shape)[1] < generator_cost({**trains, "lm": None, "patch": 1},
                                                                               shape)[1]
