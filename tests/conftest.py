"""Shared pytest set-up: run from the project root with `python -m pytest`."""
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# ../shared/fixtures beside the project root (reference data from official code)
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures")


# One thread per test process: the models here are tiny, and on a busy 2-core machine torch's
# default of one thread per core makes them wait on each other (10x slower or worse). It also
# keeps the summation order of the CPU kernels fixed, so bit-exact comparisons stay exact.
torch.set_num_threads(1)


def torchrun(runs, folder):
    """[(module, argv), ...] by 2 processes (gloo, one thread each) in one torchrun launch
    (tests/ddp_runs.py); the launch's output is returned, and shown when it fails."""
    spec = os.path.join(folder, "ddp_runs.json")
    with open(spec, "w") as f:
        json.dump([[m, [str(a) for a in argv]] for m, argv in runs], f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "ddp_runs.py"), spec]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r
