"""Several runs of the training scripts in one torchrun launch, for the "2 processes = 1" tests.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_runs.py runs.json

runs.json is a list of [module, argv] (argv: strings): each is `module.main(argv)`, one after another, in the
process group started here (the scripts join a group they find and leave it up). One launch
instead of one per run: each start of torchrun and its two workers costs ~10 s of CPU.
"""
import importlib
import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    dist.init_process_group("gloo")
    for module, argv in json.load(open(sys.argv[1])):
        importlib.import_module(module).main(argv)
    dist.destroy_process_group()
