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
    # Leaving: measured on an AMD EPYC (torch 2.14.1), about 1 launch in 30 of any script (tokenizer,
    # generator, caption LM) ended with "terminate called without an active exception" in one rank
    # AFTER all its work and the group's teardown, in the interpreter's exit (a C++ thread still
    # joinable when its owner is destroyed), and torchrun then failed the launch. Both ranks meet at a
    # barrier, tear the group down, flush and leave without the C++ teardown: 0 failures in 40.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)
