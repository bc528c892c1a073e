"""
toy_manifold.py -- Section 3.2 of the PS-VAE paper: why diffusing in a high-dimensional
representation space goes off-manifold (Figure 3, Equation 1).

The experiment: a 2D density shaped like the letters "PS" is embedded isometrically in an
h-dimensional space, x = Q z with Q in R^{h x 2}, Q^T Q = I. Identical MLP flow-matching models
(256 channels wide) are trained on the 2D data and on the h-D data. Samples of the h-D model are
projected back with Q^T and compared with the true "PS": the mean of the top-5% nearest-neighbour
distances (the tail of samples that land off the strokes) grows with h (Figure 3b).

Equation 1 says why. For a finite data set the optimal velocity in x-space splits into the
2D velocity, carried by Q, plus a term that only pulls x_t back onto the plane:

    v_x(x_t) = Q v_z(Q^T x_t) + (1/t) (I - Q Q^T) x_t

so the h-D network must learn the same 2D field *and* an extra (h - 2)-dimensional field that
blows up like 1/t near the data; with the same capacity and budget it learns the 2D part worse.

Run:
    python toy_manifold.py                       # Figure 3 on a laptop CPU (preset cpu)
    python toy_manifold.py --dims 2 8 32 128     # the tail against the ambient dimension
    python toy_manifold.py --check-eq1           # Equation 1, numerically
    torchrun --nproc_per_node=2 toy_manifold.py  # (dim, seed) runs split across ranks
"""
import argparse
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from scipy.spatial import cKDTree
from tqdm import tqdm

# -----------------------------------------------------------------------------
# Presets: a preset is a dict of defaults; any flag given on the command line wins.
PRESETS = {
    # seconds on a CPU, for tests
    "tiny": dict(dims=[2, 8], seeds=1, steps=60, eval_every=30, batch=256, width=64,
                 n_eval=500, n_ref=4000, sample_steps=10),
    # the laptop demo and the README's main job: Figure 3 in a few minutes on 2 cores
    "cpu": dict(dims=[2, 8], seeds=3, steps=3000, eval_every=300, batch=512, width=256,
                n_eval=2000, n_ref=20000, sample_steps=50),
    # longer training and larger evaluation sets, for one GPU
    "world": dict(dims=[2, 8], seeds=5, steps=20000, eval_every=1000, batch=2048, width=256,
                  n_eval=10000, n_ref=100000, sample_steps=50),
}
PRESETS["paper"] = dict(PRESETS["world"])  # the paper gives no more detail than "256 channels"

# -----------------------------------------------------------------------------
# The ground truth: points along the strokes of "P" and "S", with a small width.


def ps_strokes(points_per_unit=200):
    """The centre lines of the letters as a list of polylines, each an array (k, 2).

    The letters sit side by side in roughly [-1, 1] x [-0.8, 0.8]."""
    def line(a, b):
        n = max(2, int(points_per_unit * math.dist(a, b)))
        return np.linspace(a, b, n)

    def arc(cx, cy, r, a0, a1):
        # from angle a0 to a1 (radians, counter-clockwise positive)
        n = max(2, int(points_per_unit * r * abs(a1 - a0)))
        a = np.linspace(a0, a1, n)
        return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)

    # "P": a stem and a bowl on its upper half
    p_stem = line((-0.9, -0.8), (-0.9, 0.8))
    p_bowl = np.concatenate([line((-0.9, 0.8), (-0.55, 0.8)),
                             arc(-0.55, 0.4, 0.4, math.pi / 2, -math.pi / 2),
                             line((-0.55, 0.0), (-0.9, 0.0))])
    # "S": two stacked arcs of radius 0.4, upper one opening right, lower one opening left
    s_top = arc(0.55, 0.4, 0.4, math.radians(20), 3 * math.pi / 2)
    s_bottom = arc(0.55, -0.4, 0.4, math.pi / 2, math.radians(-160))
    return [p_stem, p_bowl, s_top, s_bottom]


def sample_ps(n, generator, width=0.03):
    """n points from the "PS" density: uniform along the strokes (by length), plus isotropic
    Gaussian jitter of std `width` across them. Returns a float64 tensor (n, 2)."""
    segs = np.concatenate([np.stack([p[:-1], p[1:]], 1) for p in ps_strokes()])  # (S, 2, 2)
    seg_len = np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1)
    probs = torch.from_numpy(seg_len / seg_len.sum())
    idx = torch.multinomial(probs, n, replacement=True, generator=generator).numpy()
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64).numpy()
    pts = segs[idx, 0] + u * (segs[idx, 1] - segs[idx, 0])
    jitter = torch.randn(n, 2, generator=generator, dtype=torch.float64).numpy() * width
    return torch.from_numpy(pts + jitter)


def random_isometry(h, generator):
    """Q in R^{h x 2} with orthonormal columns (Q^T Q = I_2), from the QR of a Gaussian matrix.
    For h = 2 this is a random rotation/reflection, so the 2D run is the same problem."""
    a = torch.randn(h, 2, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))  # fix the signs so Q is unique given a

# -----------------------------------------------------------------------------
# Equation 1: the exact optimal velocity of a finite data set.
# With x_t = (1 - t) x_0 + t eps, the regression target eps - x_0 equals (x_t - x_0) / t, so the
# minimiser of the flow-matching loss is v*(x_t) = (x_t - E[x_0 | x_t]) / t, where the posterior
# over the N data points is softmax_i( -|x_t - (1 - t) x_0_i|^2 / (2 t^2) ).


def optimal_velocity(xt, t, data):
    """E[eps - x_0 | x_t] for the empirical distribution on `data` (N, d).
    xt: (B, d), t: (B,) in (0, 1]. Works in any dimension d (z-space or x-space)."""
    t = t[:, None]                                                    # (B, 1)
    diff = xt[:, None, :] - (1 - t)[:, :, None] * data[None]          # (B, N, d)
    d2 = (diff ** 2).sum(-1)                                          # (B, N)
    w = torch.softmax(-d2 / (2 * t ** 2), dim=1)                     # (B, N) posterior
    x0_mean = w @ data                                                # (B, d)
    return (xt - x0_mean) / t


def eq1_rhs(xt, t, z_data, Q):
    """Right-hand side of Eq. 1: Q v_z(Q^T x_t) + (1/t)(I - Q Q^T) x_t."""
    zt = xt @ Q                                                       # (B, 2) = Q^T x_t
    v_z = optimal_velocity(zt, t, z_data)                             # (B, 2)
    off = xt - zt @ Q.T                                               # (I - Q Q^T) x_t
    return v_z @ Q.T + off / t[:, None]


def check_eq1(h=8, n_data=512, n_points=256, seed=0, dtype=torch.float64):
    """Largest |v_x(x_t) - RHS(x_t)| over random x_t and t, relative and absolute.
    Half the x_t are drawn from the forward process, half anywhere in R^h."""
    g = torch.Generator().manual_seed(seed)
    z_data = sample_ps(n_data, g).to(dtype)
    Q = random_isometry(h, g).to(dtype)
    x_data = z_data @ Q.T                                             # (N, h) = Q z
    t = torch.rand(n_points, generator=g, dtype=dtype) * 0.95 + 0.05
    i = torch.randint(0, n_data, (n_points,), generator=g)
    eps = torch.randn(n_points, h, generator=g, dtype=dtype)
    xt = (1 - t[:, None]) * x_data[i] + t[:, None] * eps              # on the forward process
    xt[n_points // 2:] = 3 * torch.randn(n_points - n_points // 2, h, generator=g, dtype=dtype)
    lhs = optimal_velocity(xt, t, x_data)
    rhs = eq1_rhs(xt, t, z_data, Q)
    err = (lhs - rhs).abs().max().item()
    return dict(h=h, dtype=str(dtype).replace("torch.", ""), max_abs_dev=err,
                max_rel_dev=err / lhs.abs().max().item())

# -----------------------------------------------------------------------------
# The model: one MLP per dimension, identical apart from its input/output size.


class VelocityMLP(nn.Module):
    """v_theta(x_t, t): [x_t, sincos(t)] -> width -> ... -> dim, SiLU activations."""

    def __init__(self, dim, width=256, depth=4, t_freqs=16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), t_freqs)))
        layers, d_in = [], dim + 2 * t_freqs
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.SiLU()]
            d_in = width
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x, t):
        ang = t[:, None] * self.freqs[None]                            # (B, F)
        return self.net(torch.cat([x, ang.sin(), ang.cos()], dim=1))   # (B, dim)

# -----------------------------------------------------------------------------
# Flow matching, kept apart from the network. t = 1 is noise, t = 0 is data.


def flow_matching_loss(model, x0, generator):
    """x_t = (1 - t) x_0 + t eps, target v = eps - x_0, t ~ U(0, 1)."""
    t = torch.rand(x0.shape[0], generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    return F.mse_loss(model(xt, t), eps - x0)


@torch.no_grad()
def euler_sample(model, noise, steps):
    """Integrate dx/dt = v from t = 1 (noise) down to t = 0 (data) in `steps` equal steps."""
    x, ts = noise, torch.linspace(1.0, 0.0, steps + 1)
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        x = x - (t_cur - t_next) * model(x, t_cur.expand(x.shape[0]))
    return x

# -----------------------------------------------------------------------------
# Evaluation: project samples with Q^T, measure distances to the true "PS" (Figure 3b).


def nn_distances(samples_2d, ref_tree):
    return ref_tree.query(samples_2d, k=1)[0]


def tail_stats(d, far):
    """d: (n,) nearest-neighbour distances. Mean of the top 5%, mean, share beyond `far`."""
    k = max(1, int(math.ceil(0.05 * len(d))))
    top = np.sort(d)[-k:]
    return dict(top5_mean=float(top.mean()), mean=float(d.mean()), frac_far=float((d > far).mean()))


def train_one(dim, seed, cfg, ref_tree, log=functools.partial(print, flush=True), show_progress=False):
    """Train one model in `dim` dimensions; evaluate every cfg.eval_every steps.
    Returns the curve, the last samples (projected) and timings."""
    g = torch.Generator().manual_seed(1000 * seed + dim)   # data, Q and noise of this run
    torch.manual_seed(1000 * seed + dim)                     # the network's initialisation
    Q = random_isometry(dim, g).float()                      # (dim, 2)
    model = VelocityMLP(dim, width=cfg.width, depth=cfg.depth)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)

    def evaluate(step):
        model.eval()
        # the same noise at every evaluation of a run, so the curve shows the model changing
        noise = torch.randn(cfg.n_eval, dim, generator=torch.Generator().manual_seed(seed))
        x = euler_sample(model, noise, cfg.sample_steps)     # (n, dim)
        model.train()
        z = (x @ Q).numpy()                                  # project back: Q^T x
        row = dict(step=step, **tail_stats(nn_distances(z, ref_tree), cfg.far))
        if dim > 2:  # mean norm of the off-manifold residual (I - Q Q^T) x of the raw samples
            row["off_manifold"] = float((x - (x @ Q) @ Q.T).norm(dim=1).mean())
        return row, z

    # a fixed held-out batch (data, t, eps) on which the loss is compared across evaluations
    g_val = torch.Generator().manual_seed(10**6 + seed)
    x_val = sample_ps(4096, g_val).float() @ Q.T

    def val_loss():
        with torch.no_grad():
            return flow_matching_loss(model, x_val, torch.Generator().manual_seed(seed)).item()

    curve, loss_init, t0 = [], val_loss(), time.time()
    bar = tqdm(range(1, cfg.steps + 1), desc=f"dim {dim} seed {seed}", disable=not show_progress,
               leave=False)
    for step in bar:
        x0 = sample_ps(cfg.batch, g).float() @ Q.T           # (B, dim) = Q z
        loss = flow_matching_loss(model, x0, g)
        if not torch.isfinite(loss):
            raise SystemExit(f"error: the loss became {loss.item()} at step {step} (dim {dim}, seed {seed}); "
                             f"lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row, z = evaluate(step)
            row["loss"], row["val_loss"] = loss.item(), val_loss()
            curve.append(row)
            log(f"dim {dim:4d} seed {seed} step {step:6d} loss {row['val_loss']:.4f} "
                f"top5 {row['top5_mean']:.4f} mean {row['mean']:.4f} far {row['frac_far']:.3f}"
                + (f" off {row['off_manifold']:.4f}" if "off_manifold" in row else ""))
    return dict(dim=dim, seed=seed, curve=curve, samples=z.tolist(), val_loss_init=loss_init,
                seconds=time.time() - t0, params=sum(p.numel() for p in model.parameters()))

# -----------------------------------------------------------------------------
# Summary and Figure 3.


def summarise(runs, cfg):
    """Mean and std over seeds of each evaluation, per dim; the final top-5% per dim."""
    out = dict(curves={}, final={}, final_per_seed={}, final_std={}, ratio_to_2d={},
               off_manifold={}, final_mean_dist={}, final_frac_far={})
    for dim in cfg.dims:
        rs = sorted([r for r in runs if r["dim"] == dim], key=lambda r: r["seed"])
        top = np.array([[row["top5_mean"] for row in r["curve"]] for r in rs])  # (seeds, evals)
        steps = [row["step"] for row in rs[0]["curve"]]
        out["curves"][str(dim)] = [dict(step=s, top5_mean=float(m), top5_std=float(d))
                                   for s, m, d in zip(steps, top.mean(0), top.std(0))]
        out["final"][str(dim)] = float(top[:, -1].mean())
        out["final_std"][str(dim)] = float(top[:, -1].std())
        out["final_per_seed"][str(dim)] = [float(v) for v in top[:, -1]]
        out["final_mean_dist"][str(dim)] = float(np.mean([r["curve"][-1]["mean"] for r in rs]))
        out["final_frac_far"][str(dim)] = float(np.mean([r["curve"][-1]["frac_far"] for r in rs]))
        if dim > 2:
            out["off_manifold"][str(dim)] = float(np.mean([r["curve"][-1]["off_manifold"]
                                                           for r in rs]))
    if 2 in cfg.dims:
        for dim in cfg.dims:
            out["ratio_to_2d"][str(dim)] = out["final"][str(dim)] / out["final"]["2"]
    return out


def plot_figure3(runs, summary, cfg, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ref = sample_ps(20000, torch.Generator().manual_seed(12345)).numpy()
    n = len(cfg.dims)
    fig = plt.figure(figsize=(3.2 * n + 4.6, 3.6))
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1] * n + [1.5])
    first_seed = min(r["seed"] for r in runs)
    tree = cKDTree(ref)
    for i, dim in enumerate(cfg.dims):
        ax = fig.add_subplot(grid[0, i])
        z = np.array(next(r for r in runs if r["dim"] == dim and r["seed"] == first_seed)["samples"])
        d = nn_distances(z, tree)
        tail = d >= np.quantile(d, 0.95)
        ax.scatter(ref[:, 0], ref[:, 1], s=0.3, c="0.8", rasterized=True)
        ax.scatter(z[~tail, 0], z[~tail, 1], s=0.8, c="tab:blue", rasterized=True)
        ax.scatter(z[tail, 0], z[tail, 1], s=5, c="tab:red", label="top 5%")
        ax.set_title(f"(a) {dim}D, projected by $Q^T$" if dim > 2 else "(a) 2D")
        ax.set_xlim(-1.6, 1.6), ax.set_ylim(-1.4, 1.4), ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
        if i == 0:
            ax.legend(loc="lower left", fontsize=7, markerscale=1.5)
    ax = fig.add_subplot(grid[0, n])
    for dim in cfg.dims:
        c = summary["curves"][str(dim)]
        s = np.array([r["step"] for r in c])
        m = np.array([r["top5_mean"] for r in c])
        sd = np.array([r["top5_std"] for r in c])
        ax.plot(s, m, marker="o", ms=3, label=f"{dim}D")
        ax.fill_between(s, m - sd, m + sd, alpha=0.25)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean of top-5% NN distance")
    ax.set_yscale("log")
    ax.set_title(f"(b) tail distance ({cfg.seeds} seeds, mean $\\pm$ std)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=130)
    os.replace(path + ".tmp.png", path)
    plt.close(fig)

# -----------------------------------------------------------------------------
# Distributed set-up: torchrun sets RANK/WORLD_SIZE; gloo on CPU, NCCL is not needed here
# because only Python objects are gathered (the models are small and train on the CPU).


def dist_init():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def dist_cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def train_in_processes(jobs, cfg, ref_tree, procs):
    """The (dim, seed) runs on `procs` local processes of one thread each: on a small CPU, one-thread
    processes side by side beat one process whose threads split these small matrix products. Every
    run is seeded on its own, so where it ran does not change it."""
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(pool.map(train_one, *zip(*jobs), [cfg] * len(jobs), [ref_tree] * len(jobs)))


def write_json(obj, path):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="defaults for the flags below (default: cpu, the laptop demo)")
    g = p.add_argument_group("experiment")
    g.add_argument("--dims", type=int, nargs="+", help="ambient dimensions h (default 2 8)")
    g.add_argument("--seeds", type=int, help="repeats per dimension, with different seeds")
    g.add_argument("--seed", type=int, default=0, help="first seed")
    g.add_argument("--width", type=int, help="MLP channels (the paper: 256)")
    g.add_argument("--depth", type=int, default=4, help="hidden layers of the MLP")
    g.add_argument("--steps", type=int, help="training steps per model")
    g.add_argument("--batch", type=int, help="batch size")
    g.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (cosine decay)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-every", type=int, help="evaluate every K steps")
    g.add_argument("--n-eval", type=int, help="samples drawn at each evaluation")
    g.add_argument("--n-ref", type=int, help="true points in the nearest-neighbour reference")
    g.add_argument("--sample-steps", type=int, help="Euler steps of the sampler")
    g.add_argument("--far", type=float, default=0.1,
                   help="a sample farther than this from the PS counts as off the strokes "
                        "(data units; the letters are ~1.8 tall, strokes have std 0.03)")
    g = p.add_argument_group("output")
    g.add_argument("--procs", type=int, default=None, help="local processes of one thread each that share "
                   "the runs (default: one per core, at most one per run; 1 under torchrun)")
    g.add_argument("--out", default="runs/toy_manifold", help="output folder")
    g.add_argument("--check-eq1", action="store_true",
                   help="only check Equation 1 numerically and print the deviation")
    args = p.parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if any(d < 2 for d in args.dims):
        p.error(f"--dims must all be at least 2 (the PS data is 2D), got {args.dims}")
    for k in ("seeds", "width", "depth", "steps", "batch", "eval_every", "n_eval", "n_ref",
              "sample_steps") + (("procs",) if args.procs is not None else ()):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(args, k)}")
    if not (args.lr > 0 and args.far > 0):
        p.error("--lr and --far must be positive numbers")
    args.dims = list(dict.fromkeys(args.dims))  # unique, in the order given
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.check_eq1:
        for h in sorted(set(args.dims) | {8}):
            for dtype in (torch.float32, torch.float64):
                r = check_eq1(h=h, dtype=dtype, seed=args.seed)
                print(f"Eq. 1, h={h:4d} {r['dtype']}: max |v_x - (Q v_z(Q^T x) + (I-QQ^T)x/t)| "
                      f"= {r['max_abs_dev']:.3e} (relative {r['max_rel_dev']:.3e})")
        return r

    rank, world = dist_init()
    if world > 1:  # share the cores between the processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        if rank == 0:
            try:
                os.makedirs(args.out, exist_ok=True)
                write_json(vars(args), os.path.join(args.out, "config.json"))
            except OSError as e:
                raise SystemExit(f"error: cannot write to --out {args.out!r} ({e.strerror}); "
                                 f"choose a writable folder with --out.")
        ref = sample_ps(args.n_ref, torch.Generator().manual_seed(12345)).numpy()
        ref_tree = cKDTree(ref)
        jobs = [(d, args.seed + s) for s in range(args.seeds) for d in args.dims]
        mine = jobs[rank::world]  # (dim, seed) runs split across ranks
        print(f"[rank {rank}/{world}] {len(mine)} of {len(jobs)} runs: {mine}", flush=True)
        show = rank == 0 and sys.stderr.isatty()
        procs = min(len(mine), args.procs or (1 if world > 1 else os.cpu_count() or 1))
        t0 = time.time()
        if procs > 1:
            runs = train_in_processes(mine, args, ref_tree, procs)
        else:
            runs = [train_one(d, s, args, ref_tree, show_progress=show,
                              log=lambda m: print(m, flush=True) if rank == 0 else None)
                    for d, s in mine]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, runs)
            runs = [r for part in gathered for r in part]
        if rank != 0:
            dist.barrier()  # wait for rank 0's summary: tearing gloo down under it can abort
            return None
        summary = summarise(runs, args)
        summary["eq1"] = check_eq1(h=max(max(args.dims), 3), seed=args.seed)
        summary["seconds"] = time.time() - t0
        summary["world_size"] = world
        summary["runs"] = [{k: v for k, v in r.items() if k != "samples"} for r in runs]
        summary["config"] = vars(args)
        write_json(summary, os.path.join(args.out, "figure3.json"))
        plot_figure3(runs, summary, args, os.path.join(args.out, "figure3.png"))
        for dim in args.dims:
            d = str(dim)
            print(f"final top-5% distance {dim:4d}D: {summary['final'][d]:.4f} "
                  f"+- {summary['final_std'][d]:.4f}  per seed "
                  f"{[round(v, 4) for v in summary['final_per_seed'][d]]}"
                  + (f"  ratio to 2D {summary['ratio_to_2d'][d]:.2f}" if summary["ratio_to_2d"]
                     else ""))
        print(f"wrote {args.out}/figure3.png and figure3.json in {summary['seconds']:.1f} s")
        if world > 1:
            dist.barrier()  # the other ranks wait here before leaving
        return summary
    finally:
        dist_cleanup()


if __name__ == "__main__":
    main()
