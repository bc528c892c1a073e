"""
common.py -- what the three training scripts (tokenizer.py, generator.py, edit.py) share and the
paper does not describe: one code path for a laptop CPU, one GPU, or torchrun on many (gloo on
CPU, NCCL on GPU), seeded per-sample noise, atomic checkpoints, the resumable data order, and
the logs. Nothing in training draws from torch's global random state (the noise is seeded per
sample, the data order per epoch), so a resumed run continues exactly without saving it. At the
end, what tokenizer.py uses and does not define the method: image measures and pictures (PSNR,
LPIPS, a reconstruction grid; evaluate.py reads them as tokenizer.psnr, tokenizer.make_lpips) and
LDM's convolutional layers.
"""
import contextlib
import datetime
import io
import json
import math
import os
import platform
import resource
import shutil
import sys
import sysconfig
import textwrap
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

DIST_TIMEOUT_HOURS = 3  # how long a rank waits at a collective before the run aborts


_STARTED_GROUP = []  # the process group compute_init started (a caller's own group is left alone)


def compute_init(device=None):
    """Detect torchrun (RANK in the environment), start gloo on CPU or NCCL on GPU, unless the
    calling program has started a group already (then the run joins it and leaves it up).
    Returns (ddp, rank, local_rank, world_size, device)."""
    ddp, env = "RANK" in os.environ, lambda k, d: int(os.environ.get(k, d))  # noqa: E731
    rank, local_rank, world_size = env("RANK", 0), env("LOCAL_RANK", 0), env("WORLD_SIZE", 1)
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device("cuda", local_rank) if kind == "cuda" else torch.device(kind)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if ddp and not dist.is_initialized():
        # generator.py and edit.py let rank 0 encode the latent cache while the other ranks wait at
        # a barrier; at ImageNet scale that outlasts NCCL's default 10-minute collective timeout
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=DIST_TIMEOUT_HOURS))
        _STARTED_GROUP.append(True)
    return ddp, rank, local_rank, world_size, dev


def compute_cleanup():
    """Tear down the process group, only if compute_init started it."""
    if _STARTED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
        _STARTED_GROUP.clear()


def is_rank0():
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs):
    """print on rank 0 only."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_mean(t):
    """Average a tensor over ranks (a no-op in one process)."""
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def gather_ranks(t):
    """The rows of every rank's t, in rank order (world * b, ...), gradients flowing back to each rank's own rows
    (torch.distributed.nn's all_gather; a no-op in one process)."""
    return torch.cat(dist_nn.all_gather(t)) if dist.is_initialized() else t


def cpu_has_bf16():
    """Does this CPU compute in bf16 natively (AVX512-BF16 or AMX)? Elsewhere torch emulates bf16,
    many times slower than fp32 (measured on an AVX2 CPU: 20x)."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def choose_amp(flag, device, compiled):
    """--amp auto|bf16|off -> (the autocast dtype or None for fp32, why). auto: bf16 on a GPU; on a
    CPU only where it has bf16 units and the run is compiled. Measured on such a CPU (AVX512-BF16,
    results/README.md, bench/): eager bf16 autocast made the convolutional tokenizer slower than
    fp32 (31 against 43 samples/s, the casts around every layer), compiled bf16 made every stage
    the fastest (1.5-1.8x fp32 eager). Without bf16 units torch emulates bf16, many times slower."""
    if flag != "auto":
        return (torch.bfloat16 if flag == "bf16" else None), f"--amp {flag}"
    if device.type == "cuda":
        return torch.bfloat16, "auto: bf16 autocast on the GPU"
    if device.type == "cpu" and cpu_has_bf16():
        if compiled:
            return torch.bfloat16, "auto: bf16 autocast, this CPU has bf16 units (AVX512-BF16 or AMX) and the run is compiled"
        return None, "auto: fp32, this CPU has bf16 units but eager bf16 is slower than fp32 here (the casts)"
    return None, f"auto: fp32, this {device.type} has no native bf16 (emulated bf16 is slower than fp32)"


COMPILE_MIN_STEPS = 1000  # compiling takes one to a few minutes on a CPU: worth it for long runs only


def choose_compile(flag, device, steps):
    """--compile auto|on|off -> (compile?, why). auto compiles a run of at least COMPILE_MIN_STEPS
    steps where torch.compile can build its kernels (a C compiler and Python's headers): measured
    on a CPU, compiled training steps were 8-17% faster (results/README.md, bench/), which repays
    the minutes compiling takes only on long runs."""
    if flag != "auto":
        return flag == "on", f"--compile {flag}"
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if steps < COMPILE_MIN_STEPS:
        return False, f"auto: eager, {steps} steps are too few to repay compiling (< {COMPILE_MIN_STEPS})"
    if not cc or not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return False, "auto: eager, no C compiler or no Python headers to build compiled kernels"
    return True, f"auto: compiled ({cc}, {steps} steps)"


def choose_speed(cfg, device, steps):
    """--amp and --compile of a run of `steps` steps, with the one log line that says what was chosen
    and why: (the autocast dtype or None for fp32, compile?)."""
    compiled, why_compile = choose_compile(cfg["compile"], device, steps)
    amp, why_amp = choose_amp(cfg["amp"], device, compiled)
    print0(f"precision: {'bf16 autocast' if amp else 'fp32'} ({why_amp}); {'compiled' if compiled else 'eager'} "
           f"({why_compile})")
    return amp, compiled


def add_speed_args(g):
    """--amp and --compile, the same in every training script."""
    g.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="bf16 autocast: auto = on a GPU, "
                   "and on a CPU with bf16 units (AVX512-BF16 / AMX) when the run is compiled; off = fp32")
    g.add_argument("--compile", nargs="?", const="on", choices=("auto", "on", "off"), default="auto",
                   help=f"torch.compile: auto = for runs of >= {COMPILE_MIN_STEPS} steps, where a C compiler is found")


def wsd_lr(step, lr, steps, warmup=0, cooldown=0):
    """The learning rate of 0-based `step` of `steps` (warmup-stable-decay): linear warm-up over
    `warmup` steps, constant, and a linear decay to zero over the last `cooldown` steps. A function
    of the step alone, so a resume is exact. The trainers' lr_at read their configs into it."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return lr * warm * (min(1.0, (steps - step) / cooldown) if cooldown else 1.0)


def seeded_randn(keys, shape, *salt):
    """Standard-normal noise (len(keys), *shape): row k from a generator seeded by hash((*salt,
    key)). Keyed by the data index, a sample draws the same numbers in 1 process or on rank 1 of
    2, and after a resume; keyed by the position in a list of prompts, an image does not depend
    on the batch size. Keys and salt are ints: Python salts the hash of a str per process.
    torch.special.ndtr of it gives uniform draws."""
    g = torch.Generator()
    return torch.stack([torch.randn(shape, generator=g.manual_seed(hash((*salt, int(k))) % 2**63)) for k in keys])


class Deadline:
    """`--time-limit MIN`: a run stops cleanly (last checkpoint written, --resume continues)
    once this many minutes of training have passed, as a cluster's job limit would stop it,
    but at a step boundary. Rank 0's clock decides for every rank, so all stop at one step."""

    def __init__(self, minutes, device):
        self.t0, self.minutes, self.device = time.time(), minutes, device

    def __call__(self):
        if not self.minutes:
            return False
        up = time.time() - self.t0 > 60 * self.minutes
        if not dist.is_initialized():
            return up
        up = torch.tensor([float(up)], device=self.device)
        dist.broadcast(up, 0)
        return bool(up.item())


def save_checkpoint(path, ckpt):
    """Rank 0 writes to a temporary file and renames it (atomic); then everyone waits."""
    if is_rank0():
        torch.save(ckpt, path + ".tmp")
        os.replace(path + ".tmp", path)
    barrier()


def read_checkpoint(path, script, what="checkpoint", error=ValueError):
    """A checkpoint written by `script`, read on the CPU, or `error` with one sentence saying
    why it cannot be used."""
    if not os.path.isfile(path):
        raise error(f"the {what} {path} does not exist")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise error(f"cannot read {path} ({type(e).__name__}): it is not a PyTorch checkpoint or it is damaged")
    if not isinstance(ck, dict) or ck.get("script") != script:
        who = ck.get("script", "an unknown program") if isinstance(ck, dict) else "an unknown program"
        raise error(f"{path} was written by {who}, not {script}; pass a checkpoint written by {script}")
    return ck


def last_stage(path):
    """A tokenizer run folder's last checkpoint (stage3.pt, else stage2.pt, else stage1.pt); a file as it is."""
    if not os.path.isdir(path):
        return path
    found = [os.path.join(path, f"stage{s}.pt") for s in (3, 2, 1) if os.path.isfile(os.path.join(path, f"stage{s}.pt"))]
    return found[0] if found else os.path.join(path, "stage2.pt")


def batches(ds, local_bs, rank, world, seed, epoch, pos, workers):
    """Endless batches (data index, images, targets or None). Each epoch is a DistributedSampler
    permutation, rank r taking every world-th index, so the ranks' batches at a step make the same
    global batch for any number of processes. Yields ((epoch, position after it), batch)."""
    while True:
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        idx = list(sampler)
        n = len(idx) // local_bs
        if pos < n:  # on resume: skip the batches already seen in this epoch
            part = idx[pos * local_bs:n * local_bs]
            for k, item in enumerate(DataLoader(Subset(ds, part), batch_size=local_bs, num_workers=workers)):
                pos += 1
                x, y = item if isinstance(item, (list, tuple)) else (item, None)
                yield (epoch, pos), (torch.tensor(part[k * local_bs:(k + 1) * local_bs]), x, y)
        epoch, pos = epoch + 1, 0


def memory_gib(device):
    """Peak memory of this process: CUDA allocations on a GPU, the resident set size on a CPU."""
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return round(peak / 2**30, 2)


def append_metrics(out, rec):
    if is_rank0():
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")


def truncate_metrics(out, step, stage=None):
    """On resume, drop the records (of this stage) after `step`: they will be written again."""
    path = os.path.join(out, "metrics.jsonl")
    if is_rank0() and os.path.isfile(path):
        recs = [json.loads(line) for line in open(path) if line.strip()]
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs if r.get("stage") != stage or r.get("step", 0) <= step)
        os.replace(path + ".tmp", path)


def write_config(out, cfg, key=None):
    """<out>/config.json: the run's settings (tokenizer.py keeps one entry per stage)."""
    path = os.path.join(out, "config.json")
    if is_rank0():
        if key is not None:
            cfg = {**(json.load(open(path)) if os.path.isfile(path) else {}), key: cfg}
        with open(path + ".tmp", "w") as f:
            json.dump(cfg, f, indent=1, default=str)
        os.replace(path + ".tmp", path)


class StepLog:
    """The progress bar and, every `every` steps (and at the last), one metrics.jsonl record and
    one log line: the given values (already averaged over processes), samples/s since the last
    record (checkpoint time left out: call restart_clock() after saving) and peak memory."""

    def __init__(self, out, total, step, every, desc, extra=None):
        self.out, self.total, self.every, self.desc, self.extra = out, total, every, desc, extra or {}
        self.pbar = tqdm(total=total, initial=step, disable=not (is_rank0() and sys.stderr.isatty()), desc=desc)
        self.t_start = self.t_last = time.time()
        self.seen, self.last = 0, {}

    def __call__(self, step, n_samples, values, device, force=False):
        self.seen += n_samples
        self.pbar.update(1)
        if step % self.every and step != self.total and not force:
            return
        rec = {**self.extra, "step": step, **{k: float(f"{v:.7g}") for k, v in values.items()},
               "samples_per_s": round(self.seen / (time.time() - self.t_last), 2),
               "elapsed_s": round(time.time() - self.t_start, 1), "mem_gib": memory_gib(device)}
        append_metrics(self.out, rec)
        if is_rank0():
            self.pbar.write(f"{self.desc} step {step}/{self.total} | " + " ".join(f"{k} {v:.4g}" for k, v in
                                                                                  values.items()) +
                            f" | {rec['samples_per_s']:.1f} samples/s | mem {rec['mem_gib']} GiB")
        self.last, self.seen = rec, 0
        self.restart_clock()

    def restart_clock(self):
        self.t_last = time.time()

    def close(self):
        self.pbar.close()


# ------------------------------------------------------------------------------------------
# Running experiments (evaluate.py's tables, experiments/): jobs in processes, files written whole
# ------------------------------------------------------------------------------------------

def machine():
    """CPU model, cores, the device the models ran on, torch's version."""
    cpu = platform.processor() or "unknown CPU"
    if os.path.isfile("/proc/cpuinfo"):
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__}


def write_text(path, text):
    """Write text to path atomically (a temporary file, then a rename: a reader never sees half a file); -> path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


@contextlib.contextmanager
def num_threads(n):
    """torch's thread count inside the block only: a job run in this process leaves it as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def one_maker(lock_path):
    """The block runs in one process at a time of those that take the lock file `lock_path`: of two jobs that would
    make the same missing thing (the caption LM), the second waits, then finds it made. Under torchrun the ranks make
    it together, so no lock is taken there (nor where POSIX file locks are missing)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.name != "posix":
        yield
        return
    import fcntl
    os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def run_jobs(jobs, n_proc, job_fn):
    """job_fn of each job, n_proc at a time (in this process when n_proc is 1), in job order."""
    if n_proc <= 1:
        return [job_fn(j) for j in jobs]
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(job_fn, j) for j in jobs]
        for f in concurrent.futures.as_completed(futures):
            if f.exception() is not None:  # stop at the first failure instead of finishing the queue
                pool.shutdown(wait=False, cancel_futures=True)
                raise f.exception()
        return [f.result() for f in futures]


def reuse_or_run(path, key, fn):
    """fn()'s result, saved at path with its key; read back instead when it was made with that key."""
    saved = json.load(open(path)) if os.path.isfile(path) else {}
    if saved.get("key") == key:
        return saved["result"]
    write_text(path, json.dumps({"key": key, "result": fn()}, indent=1))
    return json.load(open(path))["result"]  # the same types as a reused one (json keys are strings)


# ------------------------------------------------------------------------------------------
# Image measures and pictures of a tokenizer run, not the method (evaluate.py reads them via tokenizer.py)
# ------------------------------------------------------------------------------------------

def psnr(x, y):
    """Per-image PSNR in dB of images in [-1, 1] (peak = 1 after mapping to [0, 1]). -> (B,)"""
    mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


_LPIPS_WARNED = []


def make_lpips(device):
    """The lpips package's AlexNet LPIPS, or None (with one warning) when its backbone weights
    cannot be loaded (torchvision downloads them; offline machines have no copy)."""
    try:
        import lpips
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(net="alex", verbose=False)
        return net.to(device).eval().requires_grad_(False)
    except Exception as e:
        if not _LPIPS_WARNED and is_rank0():
            warnings.warn(f"LPIPS skipped: its AlexNet weights could not be loaded ({type(e).__name__}); "
                          f"L_p uses L1 + GAN only", stacklevel=2)
        _LPIPS_WARNED.append(1)
        return None


def save_recon_grid(path, x, x_hat, title):
    """Top row: inputs; bottom row: reconstructions. PNG via matplotlib (no display needed)."""
    from matplotlib.figure import Figure
    n, S = x.shape[0], x_hat.shape[-1]
    x = F.interpolate(x, size=x_hat.shape[-2:], mode="nearest") if x.shape[-1] != S else x
    imgs = torch.stack([x, x_hat]).clamp(-1, 1).add(1).div(2)  # (2, n, 3, S, S)
    fig = Figure(figsize=(1.3 * n, 3.0))
    ax = fig.add_subplot()
    ax.imshow(imgs.permute(0, 3, 1, 4, 2).reshape(2 * S, n * S, 3).numpy(), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_grid(path, imgs, titles, suptitle):
    """A row-major grid of images ((3, H, W) in [-1, 1]) with their prompts as titles (PNG via matplotlib)."""
    from matplotlib.figure import Figure

    from world import to_uint8  # (world.py does not import this file)
    cols = min(len(imgs), 4)
    rows = math.ceil(len(imgs) / cols)
    fig = Figure(figsize=(2.4 * cols, 2.7 * rows), layout="constrained")  # (keeps room for the suptitle)
    for i, img in enumerate(imgs):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(to_uint8(img), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(titles[i], 28)), fontsize=7)
        ax.set_axis_off()
    fig.suptitle(suptitle, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------------------------------------
# LDM's convolutional layers (Rombach et al. 2022; its keys), from which tokenizer.py builds the
# pixel decoder, the pixel VAE's encoder and the PatchGAN: LDM's, not the paper's method
# ------------------------------------------------------------------------------------------

def Norm(c):
    return nn.GroupNorm(math.gcd(32, c), c, eps=1e-6)  # 32 groups as LDM where c allows


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = Norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        y = self.conv1(F.silu(self.norm1(x)))
        y = self.conv2(F.silu(self.norm2(y)))
        return self.nin_shortcut(x) + y


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (LDM), residual."""

    def __init__(self, c):
        super().__init__()
        self.norm = Norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # (B, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(y.transpose(1, 2).reshape(B, C, H, W))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
