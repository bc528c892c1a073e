"""experiments/bench.py -- training throughput and model FLOP utilisation, on random inputs of a
preset's shapes (no data, no checkpoints). Not part of the method: a measurement.

    python experiments/bench.py generator --preset cpu              # samples/s, GFLOP/sample, MFU
    python experiments/bench.py tokenizer --preset cpu --stage 1    # the same for a tokenizer stage
    python experiments/bench.py modes --preset cpu --json results/bench/modes_cpu.json
                                                  # generator, stages 1 and 2 x fp32 / bf16 / compiled / both
    python experiments/bench.py curves --a RUN_A0 RUN_A1 --b RUN_B0 RUN_B1 --steps 1000
                                                  # does mode B's loss curve stay within mode A's seed noise?

The model FLOPs of a training step (forward + backward) are counted once by PyTorch's
FlopCounterMode over the matrix products, convolutions and attention; MFU = achieved FLOP/s /
peak. The peaks are measured in the same run: a large fp32 and a large bf16 matrix product on
the device and threads in use (on a GPU also the datasheet's dense bf16 peak).
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
from common import choose_amp, choose_compile, memory_gib  # noqa: E402

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


def step_flops(step):
    """Floating-point operations of one call of step() (a training step's forward and backward),
    counted by FlopCounterMode over matrix products, convolutions and attention (the model FLOPs
    of MFU; the optimiser and elementwise work are not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    # the counter knows the math and the CUDA attention kernels but not the CPU's fused one: count
    # on the math path, whose products are the same numbers
    with counter, sdpa_kernel(SDPBackend.MATH):
        step()
    return counter.get_total_flops()


def train_step_flops(model, x0, cond, t, eps):
    """FLOPs of one flow-matching step of a generator (or any model(x_t, t, cond))."""
    flops = step_flops(lambda: G.flow_loss(model, x0, cond, t, eps).backward())
    model.zero_grad(set_to_none=True)
    return flops


def generator_cost(cfg, latent_shape):
    """(parameters, model FLOPs of one training sample, forward + backward) of the generator that build_model makes
    from `cfg` on latents of `latent_shape`: what a bigger model pays per sample at equal training FLOPs."""
    model = G.build_model(cfg, latent_shape)
    x0, eps = torch.randn(2, *latent_shape), torch.randn(2, *latent_shape)
    ids = torch.randint(1, model.embed_tokens.num_embeddings, (2, cfg["text_len"]))
    return sum(p.numel() for p in model.parameters()), train_step_flops(model, x0, ids, torch.rand(2), eps) / 2


def matmul_peak(device, dtype, seconds=1.0):
    """TFLOP/s of an n x n matrix product in `dtype`, measured here: the practical ceiling (n 8192
    on a GPU; 512 on a CPU, where larger products are no faster per FLOP)."""
    n = 8192 if device.type == "cuda" else 512
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    m = torch.randn(n, n, device=device, dtype=dtype)
    m @ m
    sync()
    reps, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        m @ m
        reps += 1
    sync()
    return 2 * n ** 3 * reps / (time.time() - t0) / 1e12


def timed(step, device, warmup=2, min_steps=3, seconds=10.0):
    """Seconds per call of step(): warm-up calls, then calls until both min_steps and `seconds`."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n, t0 = 0, time.time()
    while n < min_steps or time.time() - t0 < seconds:
        step()
        n += 1
    sync()
    return (time.time() - t0) / n


def generator_step(a, device, amp, compiled):
    """(step(), flops, batch, description) of a generator preset's training step."""
    pre = G.PRESETS[a.preset]
    cfg = dict(model=pre["model"], patch=pre.get("patch", 1), text_len=pre["text_len"], head="ddt")
    B, shape = a.batch_size or pre["batch_size"], tuple(a.latent or preset_latent_shape(a.preset))
    torch.manual_seed(0)
    model = G.build_model(cfg, shape).to(device)
    ema = G.build_model(cfg, shape).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))  # as in training
    x0, eps = torch.randn(B, *shape, device=device), torch.randn(B, *shape, device=device)
    cond = torch.randint(1, model.embed_tokens.num_embeddings, (B, cfg["text_len"]), device=device)
    t = torch.rand(B, device=device)
    fwd = torch.compile(model) if compiled else model
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        flops = train_step_flops(model, x0, cond, t, eps)
    ocfg = dict(lr=1e-4, warmup=0, grad_clip=1.0, ema=0.9999)

    def step():  # as a training step: loss averaged, backward, clip, AdamW, EMA
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = G.flow_loss(fwd, x0, cond, t, eps)
        G.optimiser_step(model, ema, opt, loss, ocfg, 0, "bench")

    about = {"params_m": round(sum(q.numel() for q in model.parameters()) / 1e6, 2), "latent": list(shape),
             "tokens": cfg["text_len"] + shape[1] * shape[2]}
    return step, flops, B, about


def tokenizer_step(a, device, amp, compiled):
    """(step(), flops, batch, description) of a tokenizer preset's training step in a stage."""
    cfg = {**T.parse_args(["--preset", a.preset, "--stage", str(a.stage), "--recipe", a.recipe]), "encoder_ckpt": None}
    B = a.batch_size or cfg["batch_size"]
    torch.manual_seed(0)
    model = T.build_tokenizer(cfg, stage=a.stage)
    train, losses = model.plan(a.stage)
    model.freeze_all_but(train)
    if "encoder" in train and "L_s" in losses:
        model.add_reference()
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.5, 0.9))
    x, idx = torch.rand(B, 3, cfg["image_size"], cfg["image_size"], device=device) * 2 - 1, torch.arange(B)
    fwd = torch.compile(model) if compiled else model

    def step():  # the loss of tokenizer.train (GAN off, as the cpu preset), backward, AdamW
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = T.tokenizer_loss(fwd, model, x, idx, a.stage, 0, cfg, None, None)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    flops = step_flops(step)
    about = {"recipe": a.recipe, "stage": a.stage, "image_size": cfg["image_size"],
             "params_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2)}
    return step, flops, B, about


def sig(x, digits=4):
    """x to `digits` significant figures: tiny CPU rates keep their precision (a fixed number of
    decimals would leave 0.0022 TFLOP/s with two)."""
    return float(f"{x:.{digits}g}")


def bench(a, what, device, amp, compiled):
    """One measurement: samples/s, achieved TFLOP/s, and MFU against the measured peaks."""
    step, flops, B, about = (generator_step if what == "generator" else tokenizer_step)(a, device, amp, compiled)
    dt = timed(step, device, seconds=a.seconds)
    achieved = flops / dt / 1e12
    res = {"what": what, "preset": a.preset, **about, "batch": B, "device": str(device), "threads": torch.get_num_threads(),
           "amp": "bf16" if amp else "fp32", "compile": compiled, "step_s": round(dt, 4), "samples_per_s": round(B / dt, 2),
           "gflop_per_sample": sig(flops / B / 1e9), "achieved_tflops": sig(achieved),
           "mem_gib": memory_gib(device)}
    res.update({f"mfu_{k}": sig(achieved / v) for k, v in a.peaks.items() if k.endswith("tflops") and v})
    return res


def peaks(device):
    """The ceilings MFU is measured against, from this run."""
    out = {"fp32_matmul_tflops": sig(matmul_peak(device, torch.float32)),
           "bf16_matmul_tflops": sig(matmul_peak(device, torch.bfloat16))}
    if device.type == "cuda":
        out["datasheet_bf16_tflops"] = datasheet_peak(torch.cuda.get_device_name(device))
    return out


def window_means(run, steps, window):
    """The mean logged training loss of a run (a folder with metrics.jsonl) over consecutive windows
    of `window` steps up to `steps`. A step logged twice (a run resumed from an earlier checkpoint
    logs it again) counts once, with its last record."""
    loss = {}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec and rec["step"] <= steps:
                loss[rec["step"]] = rec["loss"]
    means = []
    for lo in range(0, steps, window):
        vals = [v for s, v in loss.items() if lo < s <= lo + window]
        if not vals:
            raise SystemExit(f"{run}: no loss logged in steps {lo + 1}-{lo + window}")
        means.append(sum(vals) / len(vals))
    return means


def rms(xs):
    return (sum(x * x for x in xs) / len(xs)) ** 0.5


def curve_gap(runs_a, runs_b, steps, window):
    """Mode B against mode A, seed for seed (runs_a[i] and runs_b[i] share a seed, hence the same
    batches and noise draws): the gap |B_i - A_i| of the windowed loss curves, against the
    run-to-run noise of mode A, |A_0 - A_1| (two seeds). Returns the per-window values and their
    root mean squares; B is within A's noise when its gap's RMS is no larger than the seeds'."""
    a = [window_means(r, steps, window) for r in runs_a]
    b = [window_means(r, steps, window) for r in runs_b]
    seeds = [abs(x - y) for x, y in zip(a[0], a[1])]
    gaps = [max(abs(y - x) for x, y in zip(col_a, col_b)) for col_a, col_b in
            zip(zip(*a), zip(*b))]  # per window, the larger of the seeds' gaps
    return {"steps": steps, "window": window, "window_ends": list(range(window, steps + 1, window)),
            "a": a, "b": b, "seed_spread_a": seeds, "mode_gap": gaps, "rms_seed_spread_a": rms(seeds),
            "rms_mode_gap": rms(gaps), "within_noise": rms(gaps) <= rms(seeds)}


def curves_figure(res, path, labels):
    """Loss against steps, one line per run, mode A solid and mode B dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, style, label in (("a", "-", labels[0]), ("b", "--", labels[1])):
        for i, curve in enumerate(res[mode]):
            ax[0].plot(res["window_ends"], curve, style, color=f"C{i}", label=f"{label}, seed {i}")
    ax[0].set(xlabel="training step", ylabel=f"mean loss over {res['window']} steps", yscale="log",
              title="loss curves")
    ax[0].legend(fontsize=8)
    ax[1].plot(res["window_ends"], res["seed_spread_a"], "-o", label=f"|seed 0 - seed 1|, {labels[0]}")
    ax[1].plot(res["window_ends"], res["mode_gap"], "-s", label=f"|{labels[1]} - {labels[0]}|, same seed (max)")
    ax[1].set(xlabel="training step", ylabel="loss difference", yscale="log", title="mode gap against seed noise")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description="training throughput and model FLOP utilisation on random inputs")
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("generator", help="a generator preset's training step")
    q = sub.add_parser("tokenizer", help="a tokenizer preset's training step in one stage")
    q.add_argument("--stage", type=int, default=1, choices=(1, 2), help="stage (1: S-VAE, 2: PS-VAE)")
    q.add_argument("--recipe", default="psvae", choices=list(T.RECIPES), help="latent space")
    q = sub.add_parser("modes", help="generator and tokenizer stages 1 and 2, each in fp32 / bf16 / compiled / both")
    q.add_argument("--recipe", default="psvae", choices=list(T.RECIPES), help="the tokenizer's latent space")
    q.add_argument("--skip", default="", help="comma-separated modes to leave out, e.g. bf16,bf16+compiled")
    for q in sub.choices.values():
        q.add_argument("--preset", choices=list(G.PRESETS), default="cpu", help="sizes and batch")
        q.add_argument("--batch-size", type=int, default=None, help="per-device batch (default: the preset's)")
        q.add_argument("--latent", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                       help="generator: latent shape (default: the tokenizer preset of the same name)")
        q.add_argument("--seconds", type=float, default=10.0, help="time each measurement at least this long")
        q.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="bf16 autocast (not for modes)")
        q.add_argument("--compile", nargs="?", const="on", choices=("auto", "on", "off"), default="off",
                       help="torch.compile (not for modes)")
        q.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
        q.add_argument("--json", default=None, help="also write the result JSON to this file")
    q = sub.add_parser("curves", help="loss curves of two modes, two seeds each: is B within A's seed noise?")
    q.add_argument("--a", nargs=2, required=True, metavar=("SEED0", "SEED1"), help="mode A's runs (the reference)")
    q.add_argument("--b", nargs=2, required=True, metavar=("SEED0", "SEED1"), help="mode B's runs, same seeds")
    q.add_argument("--labels", nargs=2, default=("fp32 eager", "default"), help="names of modes A and B")
    q.add_argument("--steps", type=int, default=1000, help="compare the first this many steps")
    q.add_argument("--window", type=int, default=100, help="average the logged loss over windows of this many steps")
    q.add_argument("--figure", default=None, help="also draw the curves and gaps to this PNG")
    q.add_argument("--json", default=None, help="also write the result JSON to this file")
    a = p.parse_args(argv)
    if a.what == "curves":
        res = {"labels": list(a.labels), "runs_a": a.a, "runs_b": a.b, **curve_gap(a.a, a.b, a.steps, a.window)}
        print(f"rms over {len(res['mode_gap'])} windows: |{a.labels[1]} - {a.labels[0]}| {res['rms_mode_gap']:.4g}, "
              f"|seed 0 - seed 1| of {a.labels[0]} {res['rms_seed_spread_a']:.4g}: "
              f"{'within' if res['within_noise'] else 'NOT within'} the noise")
        if a.figure:
            curves_figure(res, a.figure, a.labels)
        return write_json(res, a.json)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a.peaks = peaks(device)
    if a.what == "modes":
        modes = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "compiled": (None, True),
                 "bf16+compiled": (torch.bfloat16, True)}
        rows = []
        for what, stage in (("generator", None), ("tokenizer", 1), ("tokenizer", 2)):
            a.stage = stage
            rows += [{"mode": m, **bench(a, what, device, *modes[m])} for m in modes if m not in a.skip.split(",")]
            print(json.dumps(rows[-1]), flush=True)
        compiled, why = choose_compile("auto", device, 2000)  # what a 2000-step run picks on its own
        res = {**a.peaks, "rows": rows, "auto": [choose_amp("auto", device, compiled)[1], why]}
    else:
        compiled = choose_compile(a.compile, device, 10**9)[0]
        amp = choose_amp(a.amp, device, compiled)[0]
        res = {**a.peaks, **bench(a, a.what, device, amp, compiled)}
    print(json.dumps(res))
    return write_json(res, a.json)


def write_json(res, path):
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
