"""experiments/gpu_world.sh, the world preset's lease-sized phases, dry-run at the tiny preset on the CPU:
a typo in the script would otherwise first show on a GPU lease. About two minutes of start-ups on 2
cores, so marked slow: run `python -m pytest -m slow tests/test_gpu_world.py` before a GPU run."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from evaluate import TABLE4_SIZES


@pytest.mark.slow
def test_every_phase_of_gpu_world_runs_at_the_tiny_preset_and_writes_its_results(tmp_path):
    res, runs = tmp_path / "results", tmp_path / "runs"
    # stage 0 stops on its clock after one step; the table4 budget comes from the measured speed
    env = {**os.environ, "PRESET": "tiny", "EVAL_STEPS": "20", "BUDGET": "", "T4_SECONDS": "122", "RESULTS": str(res),
           "RUNS": str(runs), "TOK_MIN": "1e-9 1 1", "GEN_MIN": "1", "WORKERS": "0", "T4_WORKERS": "0", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "MEASURE_N": "64 64 32"}
    for phase in ("check", "bench", "tokenizer", "generator", "table4"):
        r = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_world.sh"), phase], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, (phase, r.stdout[-2000:], r.stderr[-2000:])
        if phase == "check":
            assert "torch " + torch.__version__ in r.stdout
        if phase == "table4":
            budget = int(re.search(r"budget (\d+) steps per latent", r.stdout).group(1))
    assert json.load(open(res / "bench" / "generator_tiny.json"))["gflop_per_sample"] > 0
    for s in (0, 1, 2):  # each stage marked done; a second run skips it
        assert (runs / "tiny" / f"stage{s}.done").exists()
    steps = [torch.load(runs / "tiny" / f"stage{s}.pt", weights_only=True)["step"] for s in (0, 1, 2)]
    assert steps == [1, 6, 6]  # the clock stopped stage 0; stages 1 and 2 ran their preset steps
    assert (res / "generation" / "samples_tiny.png").stat().st_size > 0 and (res / "table4" / "tokenizer_tiny_probe.json").exists()
    assert 0 <= json.load(open(res / "generation" / "geneval_tiny.json"))["overall_geneval_rules"] <= 1
    assert json.load(open(res / "table4" / "tokenizer_tiny_recon.json"))["n"] > 0
    # the budget depends on this machine's speed; the preset's own budget (tiny: 12) keeps the plain name
    assert budget >= 3
    tag = "" if budget == TABLE4_SIZES["tiny"]["budget"] else f"_b{budget}"
    table = res / "table4" / f"table4_tiny{tag}_psvae_svae_rae_pvae_vae_rpiae.md"
    assert (f"--budget {budget} " in table.read_text()) == bool(tag)
    r = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_world.sh"), "tokenizer"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.count("done before") == 3
    r = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_world.sh"), "pack", str(tmp_path / "a.tgz")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (tmp_path / "a.tgz").stat().st_size > 0
