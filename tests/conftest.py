"""Shared pytest set-up: run from the project root with `python -m pytest`."""
import os
import socket
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# ../shared/fixtures beside the project root (reference data from official code)
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures")


def free_port():
    """A free TCP port on the loopback, for torchrun's --master_port in the 2-process tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

# One thread per test process: the models here are tiny, and on a busy 2-core machine torch's
# default of one thread per core makes them wait on each other (10x slower or worse). It also
# keeps the summation order of the CPU kernels fixed, so bit-exact comparisons stay exact.
torch.set_num_threads(1)
