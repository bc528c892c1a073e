"""experiments/draws.py: Table 4's headline over stage-0 and tokenizer draws, at the tiny preset."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import draws  # noqa: E402


def test_draws_trains_an_encoder_per_seed_and_tabulates_every_draw(tmp_path):
    draws.main(["--preset", "tiny", "--stage0-seeds", "0,1", "--seeds", "0,1", "--runs", str(tmp_path / "runs"),
                "--results", str(tmp_path), "--jobs", "1"])
    res = json.load(open(tmp_path / "draws.json"))
    assert [(r["stage0_seed"], r["seed"]) for r in res["rows"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # the two encoders are different draws, and each tokenizer seed trained its own latents
    e0, e1 = res["encoders"]["0"], res["encoders"]["1"]
    assert e0["readout_psnr"] != e1["readout_psnr"] and e0["stage0"] != e1["stage0"]
    assert len({r["psvae"] for r in res["rows"]}) == 4
    text = open(tmp_path / "draws.md").read()
    gaps = [r["psvae"] - r["rae"] for r in res["rows"]]
    assert f"**{sum(gaps) / 4:+.2f} +- " in text and "| all | 4 |" in text  # the mean over all draws
    assert os.path.isfile(tmp_path / "runs" / "stage0-seed1" / "rae-seed1" / "stage1.pt")
