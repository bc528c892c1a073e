"""experiments/bench.py -- training throughput and model FLOP utilisation, on random inputs of a
preset's shapes (no tokenizer, no data needed). Not part of the method: a measurement.

    python experiments/bench.py generator --preset cpu         # samples/s, GFLOP/sample, TFLOP/s
    python experiments/bench.py generator --preset world --batch-size 16 --json results/bench/x.json

The model FLOPs of a training step (forward + backward) are counted once by PyTorch's
FlopCounterMode over the matrix products and attention; MFU = achieved FLOP/s / peak. On a GPU
the peaks are the datasheet's and a large bf16 matrix product measured on the spot.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generator as G  # noqa: E402
import tokenizer as T  # noqa: E402
from common import memory_gib  # noqa: E402

# dense bf16 tensor-core peaks from the vendors' datasheets, in TFLOP/s (no sparsity)
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.5, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def datasheet_peak(name):
    """The datasheet bf16 peak of a GPU from its name, or None when unknown."""
    for k, v in PEAK_BF16_TFLOPS.items():  # the more specific names come first
        if k in name:
            return v
    return None


def preset_latent_shape(preset):
    """(C, H, W) of the latent made by the tokenizer preset of the same name."""
    t = T.PRESETS[preset]
    grid = t["encoder_size"] // T.ENCODERS[t["encoder"]].patch_size
    return (t["latent_channels"], grid, grid)


def train_step_flops(model, x0, cond, t, eps):
    """Floating-point operations of one training step's forward and backward, counted by
    FlopCounterMode over the matrix products and attention (the model FLOPs of MFU; the
    optimiser and elementwise work are not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    # the counter knows the math and the CUDA attention kernels but not the CPU's fused one: count
    # on the math path, whose products are the same numbers
    with counter, sdpa_kernel(SDPBackend.MATH):
        G.flow_loss(model, x0, cond, t, eps).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(device, n=8192, dtype=torch.bfloat16, reps=10):
    """TFLOP/s of an n x n matrix product measured here: the practical ceiling."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    m = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        m @ m
    sync()
    t0 = time.time()
    for _ in range(reps):
        m @ m
    sync()
    return 2 * n ** 3 * reps / (time.time() - t0) / 1e12


def bench_generator(a):
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pre = G.PRESETS[a.preset]
    cfg = dict(model=pre["model"], patch=1, text_len=pre["text_len"], head="ddt")
    B = a.batch_size or pre["batch_size"]
    shape = tuple(a.latent or preset_latent_shape(a.preset))
    torch.manual_seed(0)
    model = G.build_model(cfg, shape).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))  # as in training
    x0, eps = torch.randn(B, *shape, device=device), torch.randn(B, *shape, device=device)
    cond = torch.randint(1, model.embed_tokens.num_embeddings, (B, cfg["text_len"]), device=device)
    t = torch.rand(B, device=device)
    amp = device.type == "cuda"
    fwd = torch.compile(model) if a.compile else model
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        flops = train_step_flops(model, x0, cond, t, eps)
    ema = G.build_model(cfg, shape).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    ocfg = dict(lr=1e-4, warmup=0, grad_clip=1.0, ema=0.9999)

    def step():  # as a training step: loss averaged, backward, clip, AdamW, EMA
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = G.flow_loss(fwd, x0, cond, t, eps)
        G.optimiser_step(model, ema, opt, loss, ocfg, 0, "bench")

    dt = timed(step, a.steps, a.warmup, device)
    achieved = flops / dt / 1e12
    res = {"preset": a.preset, "model": cfg["model"], "params_m": round(sum(q.numel() for q in model.parameters()) / 1e6, 2),
           "latent": list(shape), "tokens": cfg["text_len"] + shape[1] * shape[2], "batch": B, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "compile": a.compile, "step_s": round(dt, 5), "samples_per_s": round(B / dt, 1),
           "gflop_per_sample": round(flops / B / 1e9, 3), "achieved_tflops": round(achieved, 2),
           "mem_gib": memory_gib(device)}
    if device.type == "cuda":  # the two ceilings: the datasheet, and a large bf16 product measured here
        peak, mm = datasheet_peak(res["device_name"]), matmul_peak(device)
        res.update(datasheet_tflops=peak, matmul_tflops=round(mm, 1), mfu=round(achieved / peak, 4) if peak else None,
                   mfu_of_matmul=round(achieved / mm, 4))
    return res


def timed(step, steps, warmup, device):
    """Seconds per call of step(), after warm-up calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    for _ in range(steps):
        step()
    sync()
    return (time.time() - t0) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description="training throughput and model FLOP utilisation on random inputs")
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("generator", help="a generator preset's training step")
    g.add_argument("--preset", choices=list(G.PRESETS), default="cpu", help="model, text length and batch")
    g.add_argument("--batch-size", type=int, default=None, help="per-device batch (default: the preset's)")
    g.add_argument("--latent", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="latent shape (default: the tokenizer preset of the same name)")
    g.set_defaults(func=bench_generator)
    for q in sub.choices.values():
        q.add_argument("--steps", type=int, default=20, help="timed steps")
        q.add_argument("--warmup", type=int, default=5, help="untimed steps first")
        q.add_argument("--compile", action="store_true", help="torch.compile the model")
        q.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
        q.add_argument("--json", default=None, help="also write the result JSON to this file")
    a = p.parse_args(argv)
    res = a.func(a)
    print(json.dumps(res))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
