"""tokenizer.py's learning-rate schedule: constant, then a linear cool-down over the last
fraction of each stage (--cooldown), applied to the tokenizer's and the discriminator's AdamW
alike, logged per step, and exact across a resume."""
import json
import shutil

import pytest
import torch

import tokenizer as T

TINY = ["--preset", "tiny", "--device", "cpu"]


def test_lr_is_constant_then_decays_linearly_over_the_last_fraction():
    cfg = dict(lr=1.0, steps=10, cooldown=0.4)  # the last 4 of 10 steps decay towards 0
    assert [T.lr_at(s, cfg) for s in range(10)] == [1.0] * 6 + [1.0, 0.75, 0.5, 0.25]
    assert [T.lr_at(s, dict(cfg, cooldown=0)) for s in range(10)] == [1.0] * 10  # constant: the old runs
    assert T.lr_at(0, dict(lr=2.0, steps=4)) == 2.0  # a config from before --cooldown existed
    full = [T.lr_at(s, dict(cfg, cooldown=1.0)) for s in range(10)]  # the whole stage decays
    assert full[0] == 1.0 and full[-1] == pytest.approx(0.1) and full == sorted(full, reverse=True)


def test_a_stage_trains_on_the_schedule_and_resumes_exactly(tmp_path):
    """Stage 0 then stage 1 with the GAN on (both optimisers follow lr_at): the logged lr is the
    schedule's, and 3 steps + --resume to 8 equal 8 steps in one go."""
    s0 = tmp_path / "s0"
    T.main([*TINY, "--out", str(s0), "--stage", "0"])
    args = ["--stage", "1", "--steps", "8", "--cooldown", "0.5", "--disc-start", "2", "--lr", "1e-3"]
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        out.mkdir()
        shutil.copy(s0 / "stage0.pt", out / "stage0.pt")
    T.main([*TINY, "--out", str(a), *args])
    # warmup-stable-decay: 3 steps at the constant lr, then resumed as an 8-step stage with its cool-down
    T.main([*TINY, "--out", str(b), *args[:3], "3", "--cooldown", "0", *args[6:]])
    T.main([*TINY, "--out", str(b), *args, "--resume"])
    recs = {o: {r["step"]: r for r in map(json.loads, open(o / "metrics.jsonl")) if "loss" in r} for o in (a, b)}
    assert [round(recs[a][s]["lr"], 9) for s in range(1, 9)] == [1e-3] * 4 + [1e-3, 7.5e-4, 5e-4, 2.5e-4]
    assert [recs[b][s]["lr"] for s in range(4, 9)] == [recs[a][s]["lr"] for s in range(4, 9)]
    # the first 3 steps were at the same lr (both schedules are constant there), so all 8 agree
    assert [recs[a][s]["loss"] for s in range(1, 9)] == [recs[b][s]["loss"] for s in range(1, 9)]
    ca, cb = (torch.load(o / "stage1.pt", weights_only=True) for o in (a, b))
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])


def test_a_cooldown_outside_0_to_1_is_one_sentence(tmp_path):
    with pytest.raises(SystemExit) as e:
        T.main([*TINY, "--out", str(tmp_path), "--stage", "0", "--cooldown", "1.5"])
    assert "--cooldown 1.5 is a fraction" in str(e.value)
