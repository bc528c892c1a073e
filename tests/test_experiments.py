"""experiments/: draws.py (Table 4's headline over stage-0 and tokenizer draws, at the tiny preset),
recipe.py's table and sampler levers, and the measurements of the judge (ceilings.py, judge_blur.py)."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import draws  # noqa: E402
import gen_vs_ceiling  # noqa: E402
import recipe  # noqa: E402
import generator as G  # noqa: E402


def test_draws_trains_an_encoder_per_seed_and_tabulates_every_draw(tmp_path):
    draws.main(["--preset", "tiny", "--stage0-seeds", "0,1", "--seeds", "0,1", "--runs", str(tmp_path / "runs"),
                "--results", str(tmp_path), "--jobs", "1", "--recipes", "psvae,vae"])
    res = json.load(open(tmp_path / "draws_psvae_vae.json"))
    assert [(r["stage0_seed"], r["seed"]) for r in res["rows"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # the two encoders are different draws, and each tokenizer seed trained its own latents
    e0, e1 = res["encoders"]["0"], res["encoders"]["1"]
    assert e0["readout_psnr"] != e1["readout_psnr"] and e0["stage0"] != e1["stage0"]
    assert len({r["psvae"] for r in res["rows"]}) == 4
    # the pixel VAE reads no encoder: each draw trains it with its own seed, not one training per encoder
    assert len({r["vae"] for r in res["rows"]}) == 4
    assert all(os.path.isfile(tmp_path / "runs" / f / "stage1.pt") for f in
               ("stage0-seed0/vae", "stage0-seed0/vae-seed1", "stage0-seed1/vae-seed100", "stage0-seed1/vae-seed101"))
    text = open(tmp_path / "draws_psvae_vae.md").read()
    assert "vae reads no encoder: in the draw (stage-0 seed e, tokenizer seed s) it trains with seed 100 e + s" in text
    gaps = [r["psvae"] - r["vae"] for r in res["rows"]]
    assert f"**{sum(gaps) / 4:+.2f} +- " in text and "| all | 4 |" in text  # the mean over all draws
    assert os.path.isfile(tmp_path / "runs" / "stage0-seed1" / "psvae-seed1" / "stage2.pt")
    assert res["machine"]["cpu"] in text  # a timing names its CPU
    assert res["rows"][0]["metrics"]["psvae"]["psnr"] == res["rows"][0]["psvae"]


def test_every_row_over_the_draws_ranks_and_pairs_the_gaps(tmp_path):
    m = {(0, 0): {"a": dict(psnr=20.0, probe_balanced=0.70, rfid=90.0), "b": dict(psnr=18.0, probe_balanced=0.80,
                                                                                   rfid=50.0),
                  "c": dict(psnr=19.0, probe_balanced=0.60, rfid=70.0)},
         (1, 0): {"a": dict(psnr=21.0, probe_balanced=0.72, rfid=80.0), "b": dict(psnr=18.5, probe_balanced=0.76,
                                                                                   rfid=60.0),
                  "c": dict(psnr=19.5, probe_balanced=0.62, rfid=75.0)}}
    path = tmp_path / "d.md"
    path.write_text("head\n")
    text = open(draws.write_rows(str(path), m, ["a", "b", "c"])).read()
    assert text.startswith("head\n") and "| a | 2 | 20.50 +- 0.50 | 0.710 +- 0.010 | 85.0 +- 5.0 |" in text
    # PSNR a > c > b, gaps a-c (1.0, 1.5) and c-b (1.0, 1.0), paired by draw; rFID lower first: b < c < a
    assert "PSNR dB, best first: a (+1.25 +- 0.25) c (+1.00 +- 0.00) b;" in text
    assert "rFID, best first: b (+17.5 +- 2.5) c (+12.5 +- 7.5) a;" in text


def record(lever, latent, rules, sampling=None):
    """A recipe record as recipe_job writes it, with made-up scores."""
    return dict(lever=lever, latent=latent, flags=["--lm", "none"], steps=10, batch=4, flops_per_sample=1e9,
                flops=4e10, sampling=sampling or {}, samples=40, train_seconds=1.0, geneval_rules=rules,
                geneval_rules_se=0.03, geneval_strict=rules / 2, geneval_strict_se=0.04, gfid=100.0 * rules,
                per_category={}, n_images=12)


def test_recipe_table_shows_sampler_levers_and_means_over_latents(tmp_path):
    folder = tmp_path / "recipe"
    folder.mkdir()
    recs = [record("baseline", "psvae", 0.1), record("baseline", "rae", 0.3),
            record("guidance3", "psvae", 0.2, {"guidance": 3.0}), record("guidance3", "rae", 0.6, {"guidance": 3.0})]
    for r in recs:
        (folder / f"{r['lever']}_{r['latent']}_f4e+10_seed0.json").write_text(json.dumps(r))
    ceil = dict(overall_geneval_rules=0.26, overall_geneval_rules_stderr=0.02, overall=0.13, overall_stderr=0.01,
                gfid=294.0, per_category_geneval_rules={"colors": 0.58})
    table = recipe.write_table(str(tmp_path / "recipe.md"), recipe.read_records(str(folder), 0), "cmd", {"psvae": ceil})
    rows = {line.split(" | ")[0].strip("| "): line for line in open(table) if line.startswith("| ")}
    assert "sampled with guidance 3.0" in rows["guidance3"] and "sampled with" not in rows["baseline"]
    mean_rules = rows["guidance3"].split(" | ")[-3]
    assert mean_rules.startswith(f"{(0.2 + 0.6) / 2:.3f} +- {(2 * 0.03 ** 2) ** 0.5 / 2:.3f}")
    assert rows["psvae"].startswith("| psvae | 0.260 +- 0.020 | 0.130 +- 0.010 | 294 | colors 0.58")  # the ceiling
    png = recipe.plot_curves(str(tmp_path / "recipe.png"), recipe.read_records(str(folder), 0), {"psvae": ceil})
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_gen_vs_ceiling_pairs_each_generator_with_its_own_tokenizers_ceiling(tmp_path):
    """Two recipe folders (two sets of tokenizers): each generator is set beside the ceiling of its own folder;
    a latent without a record is left out, not paired with another folder's."""
    short, long = tmp_path / "short", tmp_path / "long"
    for folder, ceilings in ((short, {"psvae": 0.26, "rae": 0.24}), (long, {"psvae": 0.40})):
        folder.mkdir()
        for latent, c in ceilings.items():
            (folder / f"ceiling_{latent}_real.json").write_text(json.dumps(dict(
                overall_geneval_rules=c, overall_geneval_rules_stderr=0.02, overall=c / 2, overall_stderr=0.01)))
    recs = {short: [record("patch2", "psvae", 0.13), record("patch2", "rae", 0.18)],
            long: [record("patch2", "psvae", 0.30), record("baseline", "psvae", 0.05)]}
    for folder, rs in recs.items():
        for r in rs:
            (folder / f"{r['lever']}_{r['latent']}_f4e+10_seed0.json").write_text(json.dumps(r))
    out = gen_vs_ceiling.main(["--folders", f"{short}:tok 1200", f"{long}:tok 4800", "--flops", "4e10",
                               "--out", str(tmp_path / "g")])
    rows = json.load(open(out + ".json"))["rows"]
    assert [(r["tokenizers"], r["latent"]) for r in rows] == [("tok 1200", "psvae"), ("tok 1200", "rae"),
                                                             ("tok 4800", "psvae")]
    assert [round(r["ratio"], 4) for r in rows] == [round(0.13 / 0.26, 4), 0.75, 0.75]
    assert "| tok 4800 | psvae | 0.400 +- 0.020 | 0.200 | 0.300 +- 0.030 | 0.150 | 30 | 0.75 | 10 x 4 |" in \
        open(out + ".md").read()
    assert open(out + ".png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="no .ceiling, generator. pair"):
        gen_vs_ceiling.main(["--folders", str(long), "--lever", "wide", "--flops", "4e10", "--out", str(tmp_path / "h")])


def test_a_sampler_lever_refuses_to_train(tmp_path):
    job = dict(record=str(tmp_path / "r.json"), out=str(tmp_path / "gen"), threads=1, sampling={"guidance": 3.0},
               steps=10, lever="guidance3", argv=[])
    with pytest.raises(SystemExit, match="train its lever first"):
        recipe.recipe_job(job)
    assert not os.path.exists(tmp_path / "gen" / "generator.pt")


def test_every_sampler_lever_scores_a_training_lever():
    for lever in recipe.EVAL_LEVERS:
        assert recipe.trained_lever(lever) in recipe.LEVERS and recipe.EVAL_LEVERS[lever][1]
    assert all(recipe.trained_lever(lv) == lv for lv in recipe.LEVERS)


def test_every_training_lever_is_a_generator_flag_set_and_pays_for_its_size():
    """Each lever parses as generator.py flags and changes the cpu recipe; at equal FLOPs the larger model
    ('wide') gets fewer samples and patch 2 more, by their counted FLOPs per sample."""
    base = G.parse_args([*recipe.STUDIED, *recipe.LEVERS["baseline"]])
    for lever, flags in recipe.LEVERS.items():
        a = G.parse_args([*recipe.STUDIED, *[f.replace("{cool}", "7") for f in flags]])
        assert lever == "baseline" or a != base, lever
    shape = (24, 8, 8)
    cost = {lv: recipe.flops_per_sample(recipe.LEVERS[lv], shape) for lv in ("baseline", "wide", "patch2", "tloc0.5")}
    assert cost["wide"] > 2 * cost["baseline"] > 4 * cost["patch2"]
    assert cost["tloc0.5"] == cost["baseline"]  # a lever of the time draws costs nothing per sample


def test_the_cpu_default_is_a_lever_the_study_measured():
    """The cpu preset the study chose (patch 2, from the caption LM) is the recipe of one of its levers, and the
    study's own baseline stays the recipe it began with: its records keep their meaning."""
    assert G.parse_args(["--preset", "cpu"]) == G.parse_args([*recipe.STUDIED, *recipe.LEVERS["patch2_lm"]])
    assert G.parse_args([*recipe.STUDIED])["patch"] == 1 != G.parse_args(["--preset", "cpu"])["patch"]


def test_ceilings_judge_real_scenes_through_each_tokenizer(tmp_path):
    import ceilings
    import evaluate
    runs = tmp_path / "runs"
    evaluate.main(["table4", "--preset", "tiny", "--recipes", "psvae,rae,vae", "--runs", str(runs), "--results",
                   str(tmp_path), "--jobs", "1", "--budget", "3"])
    res = ceilings.main(["--runs", str(runs), "--preset", "tiny", "--results", str(tmp_path)])
    assert sorted(r["row"] for r in res["rows"]) == ["psvae", "rae", "vae"]
    assert all(r["steps"] == 3 for r in res["rows"])  # the table's budget, over all of a tokenizer's stages
    r = next(r for r in res["rows"] if r["row"] == "rae")  # the geneval of real scenes through it; its PSNR
    ge = evaluate.main(["geneval", "--baseline", "real", "--tokenizer", str(runs / "rae"), "--preset", "tiny"])
    assert (r["rules"], r["strict"]) == (ge["overall_geneval_rules"], ge["overall"])
    assert r["psnr"] == json.load(open(runs / "rae" / "measured.json"))["recon"]["psnr"]
    text = open(tmp_path / "ceilings.md").read()
    assert all(f"| {r['steps']} | {r['psnr']:.2f} | {r['rfid']:.0f} | {r['rules']:.3f} +- {r['rules_se']:.3f} |" in text
               for r in res["rows"])
    assert f"PSNR {res['corr_psnr']:+.2f}" in text and -1 <= res["corr_psnr"] <= 1
    assert open(tmp_path / "ceilings.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no measured tokenizer"):
        ceilings.main(["--runs", str(tmp_path / "empty"), "--preset", "tiny"])


def test_judge_blur_reads_clean_scenes_and_sets_each_ceiling_beside_the_blur_of_its_psnr(tmp_path):
    import judge_blur
    import numpy as np
    img = np.zeros((16, 16, 3), np.uint8)
    img[6:10, 6:10] = 200
    soft = judge_blur.blur(img, 1.0)
    assert soft.sum() == pytest.approx(img.astype(float).sum(), rel=1e-3) and soft.max() < 200  # spread, not lost
    ceil = {"rows": [dict(row="a", run="x/a", psnr=21.0, rules=0.3, rules_se=0.02),
                     dict(row="b", run="x/b", psnr=5.0, rules=0.1, rules_se=0.01)]}
    (tmp_path / "ceilings.json").write_text(json.dumps(ceil))
    res = judge_blur.main(["--preset", "tiny", "--sigmas", "0,1,4", "--results", str(tmp_path),
                           "--ceilings", str(tmp_path / "ceilings.json")])
    clean, b1, b4 = res["blur"]
    assert clean["rules"] == clean["strict"] == 1.0 and clean["read_shape"] == 1.0  # the judge reads real scenes
    assert b1["psnr"] > b4["psnr"] and b4["read_shape"] < 1.0  # a heavy blur loses shapes
    a, b = res["tokenizers"]
    lo, hi = sorted([b1["psnr"], b4["psnr"]])
    assert lo <= 21.0 <= hi  # between the two blurs: interpolated in PSNR
    w = (21.0 - b4["psnr"]) / (b1["psnr"] - b4["psnr"])
    assert a["blur_rules"] == pytest.approx(b4["rules"] + w * (b1["rules"] - b4["rules"]))
    assert b["blur_rules"] is None  # 5 dB: below every blur's PSNR, not extrapolated
    text = open(tmp_path / "judge_blur.md").read()
    assert "| 0 | clean | 1.000 +- 0.000 |" in text and "| b (x/b) | 5.00 | 0.100 +- 0.010 | beyond" in text
    assert open(tmp_path / "judge_blur.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
