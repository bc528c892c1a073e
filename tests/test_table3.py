"""experiments/table3_encoders.py (Table 3 in miniature: PS-VAE on the twins and the siglip world encoder) at the tiny
preset, end to end in a tmp folder; its markdown against its JSON; a second call reusing every stage and measurement;
`evaluate.py encoder` on a SigLIP-role stage 0.

Run: python -m pytest tests/test_table3.py          (CPU, one thread, about 20 s)
"""
import argparse
import json
import os
import re
import shlex
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import table3_encoders as T3  # noqa: E402
import evaluate as E  # noqa: E402

NUMBER = re.compile(r"(?<![\w.\-/])-?\d+(?:\.\d+)?(?![\w.])")


def run(tmp):
    return T3.main(["--preset", "tiny", "--runs", str(tmp / "runs"), "--results", str(tmp), "--jobs", "1",
                    "--threads", "1"])


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table3")
    return tmp, run(tmp)


def numbers(obj):
    """Every number in a JSON value."""
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def table_rows(md):
    """The data rows of the markdown tables (the rows after a |---| line), as lists of cells."""
    rows, inside = [], False
    for line in md.splitlines():
        if line.startswith("|---"):
            inside = True
        elif line.startswith("| ") and inside:
            rows.append([c.strip() for c in line.strip("|").split("|")])
        else:
            inside = False
    return rows


def assert_md_from_json(md, res):
    """Every number in the tables is a JSON number at the precision shown."""
    values = numbers(res)
    for row in table_rows(md):
        for cell in row:
            for tok in NUMBER.findall(cell):
                d = len(tok.split(".")[1]) if "." in tok else 0
                assert any(f"{v:.{d}f}" == tok for v in values), (tok, cell, row)


def test_the_table_runs_end_to_end_and_its_numbers_are_the_jsons(table):
    tmp, res = table
    saved = json.load(open(tmp / "table3_encoders_tiny.json"))
    assert saved == json.loads(json.dumps(res))
    md = open(tmp / "table3_encoders_tiny.md").read()
    assert_md_from_json(md, saved)
    rows = {r[0].split()[0]: r for r in table_rows(md)[:2]}
    und = {r[0].split()[0]: r for r in table_rows(md)[2:]}
    for obj, e in saved["encoders"].items():
        r = rows[obj]
        assert r[1] == {"twins": "0.1 : 1", "siglip": "0.05 : 1"}[obj]  # tokenizer.py's weights per objective
        assert r[3] == f"{e['recon']['psnr']:.2f}" and r[2] == f"{e['recon']['rfid']:.1f}"
        assert r[4] == f"{e['recon']['ssim']:.3f}" and r[6] == f"{e['probe']['probe_balanced']:.3f}"
        assert r[5] == "n/a" and e["recon"]["lpips"] is None  # 32 px: under AlexNet's 64, and the header says why
        assert r[7] == r[8] == "not measured"
        b, a = (e["encoder_probe"][k]["probe_balanced"] for k in ("before", "after"))
        assert und[obj][1] == f"{b:.3f} -> {a:.3f}"
    assert "LPIPS: images under 64 px" in md and "Machine: " in md and "Precision: fp32" in md
    assert "MME-P 1685 -> 1652" in md and "not measured; they need" in md
    # the trainings: one architecture, stage-0 budget and seed; the objective and its loss weights differ
    cfg = {obj: json.load(open(os.path.join(os.path.dirname(e["stage0"]), "config.json")))["stage0"]
           for obj, e in saved["encoders"].items()}
    diff = {k for k in cfg["twins"] if cfg["twins"][k] != cfg["siglip"].get(k)}
    assert diff == {"stage0_objective", "out", "semantic_weight"}, diff
    for obj, e in saved["encoders"].items():
        stage2 = json.load(open(os.path.join(os.path.dirname(e["psvae"]), "config.json")))["stage2"]
        assert (stage2["semantic_weight"], stage2["pixel_weight"]) == tuple(e["loss_weights"])
        assert stage2["steps"] == saved["budget"]["psvae_steps"][1]
    # understanding: zero-shot only where there is a text tower, the same pairs as `evaluate.py encoder`'s
    zs = saved["encoders"]["siglip"]["zero_shot"]
    assert zs["before"] == saved["encoders"]["siglip"]["encoder"]["zero_shot"] and 0 < zs["chance"] < 1
    assert "zero_shot" not in saved["encoders"]["twins"] and "not defined" in und["twins"][2]
    assert und["siglip"][2] == f"{zs['before']:.3f} -> {zs['after']:.3f} ({zs['chance']:.3f})"
    assert saved["trained"] == 6  # two stage 0, two stage 1, two stage 2


def test_a_second_call_reuses_every_stage_and_measurement(table):
    tmp, res = table
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp / "runs") for f in fs
             if f.endswith(".pt") or f == "measured.json"]
    assert len(files) == 2 * 4 + 1  # stage0-2 and measured.json per encoder, the rFID network
    before = {f: os.stat(f).st_mtime_ns for f in files}
    again = run(tmp)
    assert {f: os.stat(f).st_mtime_ns for f in files} == before
    assert again["trained"] == 0 and all(e["trained"] == 0 for e in again["encoders"].values())
    for obj in ("twins", "siglip"):
        assert again["encoders"][obj]["recon"] == res["encoders"][obj]["recon"]
        assert again["encoders"][obj]["encoder_probe"] == res["encoders"][obj]["encoder_probe"]


def test_another_stage0_budget_is_refused_on_the_tables_runs_and_trained_at_its_batch(table, tmp_path):
    """--stage0-batch / --stage0-steps: a runs folder holding the preset's stage 0 is refused, not silently reused;
    train_stage0 trains the encoder at that batch to those steps (the table's PS-VAE keeps its own batch)."""
    tmp, res = table
    with pytest.raises(SystemExit, match="give this table its own --runs"):
        T3.main(["--preset", "tiny", "--runs", str(tmp / "runs"), "--results", str(tmp_path), "--jobs", "1",
                 "--threads", "1", "--stage0-batch", "6", "--stage0-steps", "4"])
    job = dict(stage0=str(tmp_path / "siglip" / "stage0" / "stage0.pt"), stage0_steps=4, stage0_batch=6,
               objective="siglip", seed=0, args=["--preset", "tiny", "--device", "cpu", "--stage0-objective", "siglip"])
    assert T3.train_stage0(job) == 1 and T3.train_stage0(job) == 0  # trained, then reused
    s0 = torch.load(job["stage0"], map_location="cpu", weights_only=True)
    assert (s0["config"]["batch_size"], s0["step"], s0["config"]["stage0_objective"]) == (6, 4, "siglip")
    assert res["budget"]["batch"] != 6


def test_evaluate_encoder_on_a_siglip_stage0_gives_its_readout_and_zero_shot(table, capsys):
    tmp, res = table
    s0 = res["encoders"]["siglip"]["stage0"]
    out = E.main(["encoder", "--stage0", s0, "--n-train", "32", "--n-test", "16"])
    assert out["objective"] == "siglip" and not any(k.startswith("acc_") for k in out)  # no label heads
    assert 0 <= out["zero_shot"] <= 1 and 0 < out["zero_shot_chance"] < 1 and out["s0_invariance"] is None
    assert out["readout_psnr"] > 0 and out["twin_gap_db"] == out["readout_psnr"] - out["readout_psnr_twin"]
    assert out["zero_shot"] == res["encoders"]["siglip"]["zero_shot"]["before"]
    twins = E.main(["encoder", "--stage0", res["encoders"]["twins"]["stage0"], "--n-train", "32", "--n-test", "16"])
    assert twins["objective"] == "twins" and "acc_shape" in twins and "zero_shot" not in twins
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a later stage: one sentence
        E.main(["encoder", "--stage0", res["encoders"]["siglip"]["psvae"]])
    assert "give a tokenizer.py --stage 0 one" in str(e.value) and "\n" not in str(e.value)


def test_the_table_writes_a_made_up_json(tmp_path):
    """write_table reads the JSON alone: made-up numbers land in their cells."""
    def encoder(obj, psnr, zs=None):
        probe = lambda v: {"probe_balanced": v}  # noqa: E731
        e = {"role": T3.ENCODERS[obj][0], "loss_weights": [0.1 if obj == "twins" else 0.05, 1.0],
             "recon": {"rfid": 123.456, "psnr": psnr, "ssim": 0.4321, "lpips": 0.25},
             "probe": probe(0.7123), "encoder_probe": {"before": probe(0.8111), "after": probe(0.7999)},
             "encoder": {"readout_psnr": 18.555, "twin_gap_db": 1.14}}
        return {**e, "zero_shot": zs} if zs else e
    res = {"command": "python experiments/table3_encoders.py", "seed": 0, "runs": "runs/x", "precision": "fp32",
           "machine": {"cpu": "CPU", "cores": 2, "gpu": None, "torch": "2"}, "lpips": "lpips package, AlexNet",
           "budget": {"encoder": "world-cpu", "stage0_steps": 300, "stage0_batch": 64, "batch": 16,
                      "psvae_steps": [240, 960]},
           "sizes": {"n": 256, "n_train": 512, "n_test": 256, "evaluator_steps": 400}, "seconds": 900.0,
           "trained": 6, "not_measured": "they need a generator", "encoders": {
               "twins": encoder("twins", 18.851), "siglip": encoder("siglip", 17.5, {"before": 0.41, "after": 0.375,
                                                                                  "chance": 0.0081, "n": 256})},
           "paper": {"twins": "words", "siglip": "the method transfers", "mme_p": [1685, 1652]}}
    md = open(T3.write_table(str(tmp_path / "t.md"), res)).read()
    assert_md_from_json(md, res)
    rows = table_rows(md)
    assert rows[0][:7] == ["twins (DINOv2-B)", "0.1 : 1", "123.5", "18.85", "0.432", "0.250", "0.712"]
    assert rows[1][1] == "0.05 : 1" and rows[1][-1] == "the method transfers"
    assert rows[3][1:] == ["0.811 -> 0.800", "0.410 -> 0.375 (0.008)", "18.55 / 1.14", "MME-P 1685 -> 1652"]
    assert "stage 0 for 300 steps of batch 64" in md and "240 + 960 steps of batch 16" in md


class Parsed(Exception):
    pass


def test_the_readme_command_parses(monkeypatch):
    line = next(ln for ln in open(os.path.join(ROOT, "README.md")) if ln.startswith("python experiments/table3_"))
    argv = shlex.split(line.split(" #")[0])[2:]
    seen = {}
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        seen["args"] = real(self, args, namespace)
        raise Parsed  # stop before anything runs

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        T3.main(argv)
    assert seen["args"].preset == "cpu" and seen["args"].jobs == 2
