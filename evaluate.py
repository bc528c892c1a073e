"""evaluate.py -- metrics and the paper's tables in miniature.

Every sub-command is a function `cmd_<name>(args) -> dict`; the dict is printed as the last line
(JSON) and written to --json. Read top to bottom:

  1. the world: detector accuracy, contact sheets, renderer speed, a real-data check
  2. reconstruction (Table 4, left): PSNR, SSIM, LPIPS and rFID (on a small world-trained CNN, not Inception)
  3. semantics (Table 4, right): linear probes of the latent, and a linear pixel readout
  4. Table 4 and Figure 11: every latent space trained at one budget, then measured
  5. mini-GenEval (Table 2, generation): the scene detector judges generated images
  6. mini-GEdit (Table 2, editing): adherence and consistency of edits
  7. Table 4's right half (Figures 1, 4, 7; Table 1's head row): the same generator and editor per latent

    python evaluate.py detector --n 1000 --size 64   # detector accuracy on held-out scenes
    python evaluate.py world-sheet --out results/world # contact sheets world.png and edits.png
    python evaluate.py detail-bound --size 64          # PSNR of knowing all but the pixel detail
    python evaluate.py encoder --stage0 runs/tokenizer-cpu/stage0.pt  # readout, twin gap, accuracy or zero-shot
    python evaluate.py recon --ckpt runs/tokenizer-cpu  # PSNR, SSIM, LPIPS, rFID of a tokenizer
    python evaluate.py probe --ckpt runs/tokenizer-cpu  # linear probe of its latent
    python evaluate.py table4 --preset cpu             # every recipe: results/table4/table4_cpu.md
    python evaluate.py geneval --ckpt runs/generator-cpu  # mini-GenEval of a generator run
    python evaluate.py gedit --ckpt runs/edit-cpu         # mini-GEdit of an edit run
    python evaluate.py table4-gen --preset cpu         # generation and editing on every Table-4 latent
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import textwrap
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import report
import tokenizer
import world as W
from common import add_speed_args, choose_amp, choose_compile, num_threads, reuse_or_run, run_jobs, write_text

# ----------------------------------------------------------------------------------------------
# 1. The world: how exact the detector is, what the world looks like, how fast it renders

def cmd_detector(args):
    """Detector accuracy on held-out scenes, clean and noisy; captions and edits agreement."""
    if args.n < 1 or not 32 <= args.size <= 256:
        raise ValueError(f"--n {args.n} --size {args.size} is not a test; use --n >= 1 and --size between 32 and 256")
    bar = lambda it: tqdm(it, total=args.n, disable=not sys.stderr.isatty())  # noqa: E731
    count = dict.fromkeys("exact exact_noisy tp tp_noisy pred pred_noisy true captions edits seconds".split(), 0)
    wrong = dict.fromkeys(["bg_colour", "tone", "style"], 0)
    for i in bar(range(args.n)):
        scene = W.sample_scene(W.scene_seed(args.split, i))
        img, true = W.render(scene, args.size), W.describe(scene)
        t0 = time.perf_counter()
        clean = W.detect(img)
        count["seconds"] += time.perf_counter() - t0
        for name, pred in (("", clean), ("_noisy", W.detect(W.add_noise(img, args.noise, seed=i)))):
            count["exact" + name] += W.same_scene(pred, true)
            tp, n_pred, n_true = W.object_counts(pred, true)
            count["tp" + name] += tp
            count["pred" + name] += n_pred
        count["true"] += n_true
        for k in wrong:
            wrong[k] += clean[k] != true[k]
    # captions: does every render satisfy its own caption? edits: does every pair pass?
    captions = W.WorldCaptions(args.split, args.n, args.size)
    for scene, _, spec in map(captions.item, bar(range(args.n))):
        count["captions"] += W.check_caption(W.detect(W.render(scene, args.size)), spec)
    edits = W.WorldEdits(args.split, args.n, args.size)
    for e in map(edits.item, bar(range(args.n))):
        count["edits"] += W.check_edit(W.detect(W.render(e.source, args.size)),
                                       W.detect(W.render(e.target, args.size)), e.spec)
    n = args.n
    f1 = lambda name: 2 * count["tp" + name] / max(1, count["pred" + name] + count["true"])  # noqa: E731 (micro F1)
    return {"n": n, "size": args.size, "split": args.split, "noise_std": args.noise,
            "exact_match": count["exact"] / n, "object_f1": f1(""), "exact_match_noisy": count["exact_noisy"] / n,
            "object_f1_noisy": f1("_noisy"), "scene_errors": wrong, "caption_agreement": count["captions"] / n,
            "edit_agreement": count["edits"] / n, "detect_ms_per_image": 1000 * count["seconds"] / n}


def cmd_world_bench(args):
    """Renderer speed in one process: scenes sampled and rendered, and dataset items."""
    out = {"size": args.size, "n": args.n, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    for i in range(args.n):
        W.render(W.sample_scene(i), args.size)
    out["render_images_per_s"] = args.n / (time.perf_counter() - t0)
    for key, grid in (("dataset_images_per_s", None), ("dataset_with_targets_images_per_s", args.size // 8)):
        data = W.WorldImages("train", args.n, args.size, grid=grid)
        t0 = time.perf_counter()
        for i in range(args.n):
            data[i]
        out[key] = args.n / (time.perf_counter() - t0)
    return out


def cmd_detail_bound(args):
    """The no-detail bound (world.no_detail_bound): the best PSNR of a latent holding all but the pixel detail."""
    if args.n < 1 or args.k < 1:
        raise ValueError(f"--n {args.n} --k {args.k}: use --n >= 1 scenes and --k >= 1 renders each")
    return W.no_detail_bound(args.n, args.size, k=args.k, split=args.split)


@contextlib.contextmanager
def figure(path, *grid, dpi=100, **kw):
    """A figure and its axes, plt.subplots(*grid, **kw), written to path and closed when the block ends."""
    import matplotlib  # here, not at the top: only the figures need it
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(*grid, **kw)
    yield fig, axes
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def cmd_world_sheet(args):
    """Contact sheets: world.png (scenes, captions per GenEval category), edits.png (edit pairs per GEdit category)."""
    os.makedirs(args.out, exist_ok=True)
    out = {"world": os.path.join(args.out, "world.png"), "edits": os.path.join(args.out, "edits.png")}
    cats, n = W.CAPTION_CATEGORIES, args.per_category  # n examples per category
    with figure(out["world"], n, len(cats), figsize=(2.3 * len(cats), 2.9 * n), squeeze=False, dpi=90) as (_, axes):
        for c, cat in enumerate(cats):
            for r in range(n):
                scene, text, _ = W.caption_scene(W.scene_seed("val", r), cat)
                axes[r, c].imshow(W.render(scene, args.size), interpolation="nearest")
                axes[r, c].set_title(("" if r else f"[{cat}]\n") + "\n".join(textwrap.wrap(text, 26)), fontsize=7)
                axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
    cats = W.EDIT_CATEGORIES
    with figure(out["edits"], len(cats), 2 * n, figsize=(4.0 * n, 2.4 * len(cats)), squeeze=False, dpi=90) as (_, axes):
        for r, cat in enumerate(cats):
            for k in range(n):
                e = W.make_edit(W.scene_seed("val", k), cat)
                for j, (scene, title) in enumerate(((e.source, f"[{cat}] source"), (e.target, e.instruction))):
                    ax = axes[r, 2 * k + j]
                    ax.imshow(W.render(scene, args.size), interpolation="nearest")
                    ax.set_title("\n".join(textwrap.wrap(title, 24)), fontsize=7)
                    ax.set_xticks([]), ax.set_yticks([])
    return out


def cmd_data(args):
    """A check of --data before a long run: open a real-data folder or file as training would, read a few items."""
    if sum(x is not None for x in (args.images, args.captions, args.edits)) != 1:
        raise ValueError("give exactly one of --images, --captions, --edits")
    if args.images is not None:
        data = W.ImageFolderDataset(args.images, args.size)
        out = {"kind": "images", "items": len(data), "classes": len(data.classes)}
    elif args.captions is not None:
        data, out = W.CaptionFolderDataset(args.captions, args.size), {"kind": "captions"}
    else:
        data, out = W.EditJsonlDataset(args.edits, args.size), {"kind": "edits"}
    for i in range(min(args.read, len(data))):
        data[i]
    return {**out, "items": len(data), "read": min(args.read, len(data))}


# ----------------------------------------------------------------------------------------------
# 2. Reconstruction (Table 4, left): PSNR, SSIM, LPIPS, rFID. rFID's feature network (Inception-v3
#    in the paper) is here a small CNN trained once on world scenes, never the encoder under test.

def gaussian_window(size=11, sigma=1.5):
    """The SSIM paper's window (Wang et al. 2004): 11x11 circular Gaussian, sigma 1.5, sum 1."""
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(x, y, k1=0.01, k2=0.03):
    """Mean SSIM per image of two (B, C, H, W) batches in [-1, 1] (mapped to [0, 1], dynamic range L = 1) -> (B,):
    the SSIM map under the Gaussian window, over every window inside the image, averaged over positions and channels."""
    x, y = (t.double().clamp(-1, 1).add(1).div(2) for t in (x, y))
    C = x.shape[1]
    w = gaussian_window().to(x.device).expand(C, 1, 11, 11)
    f = lambda t: F.conv2d(t, w, groups=C)  # noqa: E731  (B, C, H-10, W-10)
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = k1 ** 2, k2 ** 2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).float()


def frechet_distance(mu1, cov1, mu2, cov2):
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (the FID formula).
    S1 S2 is similar to the symmetric S1^(1/2) S2 S1^(1/2), so Tr (S1 S2)^(1/2) is the sum of the
    square roots of that matrix's eigenvalues: two symmetric eigendecompositions, no general matrix
    square root, and exact for the singular covariances of small sets too."""
    w, V = np.linalg.eigh(cov1)
    root1 = (V * np.sqrt(w.clip(min=0))) @ V.T  # S1^(1/2)
    tr_covmean = np.sqrt(np.linalg.eigvalsh(root1 @ cov2 @ root1).clip(min=0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_covmean)


def fid_of_features(a, b):
    """Fréchet distance between two feature sets (N, d), each summarised by mean and covariance."""
    a, b = a.double().numpy(), b.double().numpy()
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def fid_and_stderr(a, b, resamples=20, seed=0):
    """The FID of two paired feature sets and its s.e.: its spread over the pairs resampled with replacement."""
    rows = torch.randint(len(a), (resamples, len(a)), generator=torch.Generator().manual_seed(seed))
    return fid_of_features(a, b), float(np.std([fid_of_features(a[r], b[r]) for r in rows], ddof=1))


class WorldEvaluator(torch.nn.Module):
    """rFID's feature network: 4 convolutions (64 px -> 8x8 map) trained on world scenes to predict the semantic
    targets; features: the last map's channel means and stds, (B, 8 * width). Width 16 trains once in ~1 CPU-minute."""

    def __init__(self, width=16):
        super().__init__()
        nn, c = torch.nn, width
        self.body = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.SiLU(), nn.Conv2d(c, 2 * c, 4, 2, 1), nn.SiLU(),
                                  nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.SiLU(), nn.Conv2d(4 * c, 4 * c, 4, 2, 1), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(4 * c, n) if k in ("count", "bg_colour") else nn.Conv2d(4 * c, n, 1)
                                    for k, n in sorted(W.TARGET_CLASSES.items())})

    def forward(self, x):
        if x.shape[-1] != 64:
            x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True)
        return self.body(x)  # (B, 4c, 8, 8)

    def features(self, x):
        h = self(x)
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)

    def logits(self, x):
        h = self(x)
        return {k: head(h.mean((2, 3))) if isinstance(head, torch.nn.Linear) else head(h)
                for k, head in self.heads.items()}


def world_evaluator(steps=400, seed=0, cache="runs/evaluator", verbose=True, width=16):
    """The rFID feature network, trained once (seeded), cached as <cache>/world_w<width>_s<steps>_seed<seed>.pt."""
    path = os.path.join(cache, f"world_w{width}_s{steps}_seed{seed}.pt")
    net = WorldEvaluator(width)
    if os.path.isfile(path):
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
        return net.eval().requires_grad_(False)
    torch.manual_seed(seed)
    net = WorldEvaluator(width)
    data = torch.utils.data.DataLoader(W.WorldImages("train", steps * 64, 64, grid=8), batch_size=64)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for i, (x, t) in enumerate(data):
        loss = sum(F.cross_entropy(lg, t[k]) for k, lg in net.logits(x).items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if verbose and (i + 1) % 100 == 0:
            print(f"evaluator step {i + 1}/{steps} loss {loss.item():.3f}", flush=True)
    os.makedirs(cache, exist_ok=True)
    torch.save({"script": "evaluate.py", "steps": steps, "seed": seed, "model": net.state_dict()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return net.eval().requires_grad_(False)


def gfid_evaluator(preset):
    """gFID's feature network: the one the preset's rFID uses (its Table 4 size), so both read one space."""
    return world_evaluator(TABLE4_SIZES[preset]["evaluator_steps"], verbose=False)


def eval_device(args):
    """The device a measurement runs the model on: --device, else cuda when there is one."""
    return torch.device(getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))


def tokenizer_run(path, device="cpu"):
    """(checkpoint path, its config, loaded tokenizer): a run folder gives its last stage (3, 2, 1)."""
    folder, path = path, tokenizer.last_stage(path)
    if os.path.isdir(folder) and not os.path.isfile(path):
        raise ValueError(f"{folder} holds no stage1/2/3.pt; train a tokenizer into it (tokenizer.py --out {folder})")
    tok = tokenizer.load_tokenizer(path, device)  # its TokenizerError is a ValueError: main prints one sentence
    return path, torch.load(path, map_location="cpu", weights_only=True)["config"], tok


def read_back(images, scenes):
    """A semantic view of reconstruction: what the detector reads back from images of known scenes, i.e. the share
    of images with the right object count ('read_count') and, over the objects matched by position ('read_matched':
    their share of all true ones), the share with the right shape, colour, texture, size. All 1.0 on clean renders."""
    n_ok = n_true = n_match = 0
    right = dict.fromkeys(W.ATTRS, 0)
    for img, scene in zip(images, scenes):
        pred, true = W.detect(img)["objects"], W.describe(scene)["objects"]
        n_ok += len(pred) == len(true)
        n_true += len(true)
        for i, j in W.match_objects(pred, true):
            n_match += 1
            for k in W.ATTRS:
                right[k] += pred[i][k] == true[j][k]
    return {"read_count": n_ok / max(1, len(scenes)), "read_matched": n_match / max(1, n_true),
            **{f"read_{k}": right[k] / max(1, n_match) for k in W.ATTRS}}


def cmd_recon(args):
    """PSNR, SSIM, LPIPS and rFID of a tokenizer's reconstructions of held-out images; on world scenes, read_back."""
    t0, dev = time.time(), eval_device(args)
    path, cfg, tok = tokenizer_run(args.ckpt, dev)
    size = cfg["image_size"]
    data = W.ImageFolderDataset(args.data, size) if args.data else W.WorldImages(args.split, args.n, size)
    n = min(args.n, len(data))
    lp = tokenizer.make_lpips("cpu") if size >= 64 else None
    ev = world_evaluator(args.evaluator_steps, cache=args.evaluator_cache)
    ps, ss, lps, fa, fb, outs = [], [], [], [], [], []
    with torch.no_grad():
        for i in range(0, n, args.batch):
            items = [data[j] for j in range(i, min(n, i + args.batch))]
            x = torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])  # (b, 3, S, S)
            y = tok.decode(tok.encode(x.to(dev))).float().cpu()  # metrics on the CPU
            outs.append(y)
            if x.shape[-1] != y.shape[-1]:  # e.g. 224 px in, 256 px out: compare at the output size
                x = F.interpolate(x, size=y.shape[-2:], mode="bilinear", antialias=True)
            ps.append(tokenizer.psnr(y, x)), ss.append(ssim(y, x)), fa.append(ev.features(x)), fb.append(ev.features(y))
            if lp is not None:
                lps.append(lp(y, x).flatten())
    out = {"ckpt": path, "recipe": cfg["recipe"], "n": n, "data": args.data or f"world/{args.split}",
           "psnr": torch.cat(ps).mean().item(), "ssim": torch.cat(ss).mean().item(),
           "lpips": torch.cat(lps).mean().item() if lps else None, "rfid": fid_of_features(torch.cat(fa), torch.cat(fb)),
           "rfid_features": f"WorldEvaluator trained {args.evaluator_steps} steps on world scenes"}
    if lp is None:
        out["lpips_reason"] = ("images under 64 px (AlexNet)" if size < 64 else
                               "the lpips package's AlexNet weights could not be loaded (offline)")
    if not args.data:
        out.update(read_back(torch.cat(outs), [data.scene(i) for i in range(n)]))
    return {**out, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# 3. Semantics (Table 4, right): how linearly the latent names the world's semantics, and, for
#    contrast, how much of the pixels it holds linearly.

def balanced_accuracy(pred, y):
    """Mean over the classes present in y of the share of that class predicted right (recall):
    a constant guess of the majority class scores 1 / (number of classes), not its share."""
    return torch.stack([(pred[y == c] == c).float().mean() for c in y.unique()]).mean().item()


def probe_predictions(ftr, ytr, fte, yte, steps=100):
    """Predicted classes for fte of a softmax-regression probe fit on standardised (ftr, ytr)
    with L-BFGS from zero weights (deterministic). f: (N, d) float, y: (N,) long."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    lin = torch.nn.Linear(ftr.shape[1], int(max(ytr.max(), yte.max())) + 1)
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(ftr), ytr) + 1e-4 * lin.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return lin(fte).argmax(1)


def linear_probe(ftr, ytr, fte, yte, steps=100, balanced=False):
    """Accuracy (or balanced_accuracy) of the probe on (fte, yte)."""
    pred = probe_predictions(ftr, ytr, fte, yte, steps)
    return balanced_accuracy(pred, yte) if balanced else (pred == yte).float().mean().item()


def per_token(z):
    """(N, C, h, w) latents -> (N*h*w, C): one row per token, the rows of the probes and readout."""
    return z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1])


def pixel_readout(ztr, xtr, zte, xte, ridge=1e-4):
    """How much of the pixels a latent holds *linearly*: ridge regression from each token (C values, standardised,
    plus a bias) to the 3 * p * p pixels of its own p x p patch, fit on (ztr, xtr), applied to zte -> mean PSNR (dB)
    of the reassembled test images. The semantic probe's pixel counterpart: a token naming a red striped square but
    not its stripes' phase reads out as a blurred square. z: (N, C, h, w), x: (N, 3, H, W) in [-1, 1]."""
    h = ztr.shape[-1]
    p = xtr.shape[-1] // h
    ftr, fte = per_token(ztr.double()), per_token(zte.double())
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr = torch.cat([(ftr - mu) / sd, torch.ones(len(ftr), 1, dtype=ftr.dtype)], 1)
    fte = torch.cat([(fte - mu) / sd, torch.ones(len(fte), 1, dtype=fte.dtype)], 1)
    reg = ridge * len(ftr) * torch.eye(ftr.shape[1], dtype=ftr.dtype)
    reg[-1, -1] = 0  # the bias is not shrunk
    W_ = torch.linalg.solve(ftr.T @ ftr + reg, ftr.T @ per_token(F.pixel_unshuffle(xtr.double(), p)))  # (C + 1, 3pp)
    pred = (fte @ W_).reshape(len(zte), h * h, 3 * p * p).transpose(1, 2).reshape(len(zte), 3 * p * p, h, h)
    return tokenizer.psnr(F.pixel_shuffle(pred, p).float(), xte.float()).mean().item()


def encoded_split(tok, split, n, size, batch, dev):
    """(latents (n, C, h, w), semantic targets, images) of n world scenes of a split."""
    data = W.WorldImages(split, n, size, grid=tok.grid[0])
    z, t, xs = [], [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            items = [data[j] for j in range(i, min(n, i + batch))]
            xs.append(torch.stack([x for x, _ in items]))
            z.append(tok.encode(xs[-1].to(dev)).float().cpu())  # (b, C, h, w)
            t.append({k: torch.stack([y[k] for _, y in items]) for k in items[0][1]})
    return torch.cat(z), {k: torch.cat([d[k] for d in t]) for k in t[0]}, torch.cat(xs)


def probes(ztr, ttr, zte, tte):
    """Probes of maps (N, C, h, w), per token and pooled; balanced: the mean recall per class (87% of cells: empty)."""
    tasks = {f"token_{k}": (per_token(ztr), ttr[k].flatten(), per_token(zte), tte[k].flatten())
             for k in ("shape", "colour", "texture")}
    tasks.update({f"pooled_{k}": (ztr.mean((2, 3)), ttr[k], zte.mean((2, 3)), tte[k]) for k in ("count", "bg_colour")})
    acc, bal = {}, {}
    for name, (ftr, ytr, fte, yte) in tasks.items():
        pred = probe_predictions(ftr, ytr, fte, yte)
        acc[name], bal[f"balanced_{name}"] = (pred == yte).float().mean().item(), balanced_accuracy(pred, yte)
    tokens, pooled = ([v for k, v in acc.items() if k.startswith(p)] for p in ("token_", "pooled_"))
    return {**acc, "probe_token": sum(tokens) / len(tokens), "probe_pooled": sum(pooled) / len(pooled),
            "probe": sum(tokens + pooled) / len(tokens + pooled), **bal, "probe_balanced": sum(bal.values()) / len(bal)}


def cmd_probe(args):
    """Linear-probe accuracy of the latent on world semantics (per token, mean-pooled), and its linear pixel readout."""
    t0, dev = time.time(), eval_device(args)
    path, cfg, tok = tokenizer_run(args.ckpt, dev)
    ztr, ttr, xtr = encoded_split(tok, "train", args.n_train, cfg["image_size"], args.batch, dev)
    zte, tte, xte = encoded_split(tok, "val", args.n_test, cfg["image_size"], args.batch, dev)
    mean_colour = lambda x: F.adaptive_avg_pool2d(x, ztr.shape[-2:])  # noqa: E731  (N, 3, h, w)
    return {"ckpt": path, "recipe": cfg["recipe"], "latent": list(ztr.shape[1:]), "n_train": args.n_train,
            "n_test": args.n_test, **probes(ztr, ttr, zte, tte), "readout_psnr": pixel_readout(ztr, xtr, zte, xte),
            # a yardstick on the same scenes: what each patch's mean colour alone reads out to
            "readout_psnr_mean_colour": pixel_readout(mean_colour(xtr), xtr, mean_colour(xte), xte),
            "seconds": round(time.time() - t0, 1)}


def encoder_tokens(model, scenes, size, batch, dev):
    """(patch tokens (N, D, g, g) of the stage-0 encoder, its heads' logits, images) of a list of scenes."""
    z, logits, x = [], [], torch.stack([W.to_tensor(W.render(s, size)) for s in scenes])
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out, f = model(x[i:i + batch].to(dev))
            f = f.float().cpu()  # (b, L, D)
            z.append(f.transpose(1, 2).reshape(len(f), f.shape[-1], *[math.isqrt(f.shape[1])] * 2))
            logits.append({k: v.cpu() for k, v in out.items()})
    return torch.cat(z), {k: torch.cat([b[k] for b in logits]) for k in logits[0]}, x


def cmd_encoder(args):
    """A stage-0 world encoder: its patch tokens' linear pixel readout and twin gap (that readout from a scene's own
    tokens minus from its twin's, detail redrawn: an encoder keeping detail reads its own scene better), either
    objective; then its label heads' accuracy (twins, DINOv2's role) or zero-shot caption matching (siglip)."""
    t0, dev = time.time(), eval_device(args)
    ck = tokenizer.load_checkpoint(args.stage0, "stage-0 checkpoint")
    if ck["stage"] != 0:
        raise ValueError(f"{args.stage0} is a stage-{ck['stage']} checkpoint; give a tokenizer.py --stage 0 one")
    objective, enc = ck["config"].get("stage0_objective", "twins"), tokenizer.build_encoder(ck["config"]["encoder"])
    model = tokenizer.SigLIPStageZero(enc) if objective == "siglip" else tokenizer.StageZero(enc, W.TARGET_CLASSES)
    model.to(dev).eval().load_state_dict(ck["model"])
    heads = model if objective == "twins" else tokenizer.StageZero(model.encoder, {})  # siglip's: no label heads
    size = ck["config"]["encoder_size"]
    scenes = {s: [W.sample_scene(W.scene_seed(s, i)) for i in range(n)] for s, n in (("train", args.n_train),
                                                                                      ("val", args.n_test))}
    twins = [W.resample_detail(sc, np.random.default_rng([W.scene_seed("val", i), 23])) for i, sc in enumerate(scenes["val"])]
    (ztr, _, xtr), (zte, logits, xte), (ztw, _, _) = (encoder_tokens(heads, sc, size, args.batch, dev)
                                                      for sc in (scenes["train"], scenes["val"], twins))
    own, twin = pixel_readout(ztr, xtr, zte, xte), pixel_readout(ztr, xtr, ztw, xte)
    t = [W.semantic_targets(sc, ztr.shape[-1]) for sc in scenes["val"]]
    hits = heads.hits(logits, {k: torch.stack([d[k] for d in t]) for k in t[0]})  # the heads on held-out scenes
    scores = {f"acc_{k}": h / n for k, (h, n) in hits.items()}
    if objective == "siglip":  # zero-shot matching of n_test held-out (image, caption) pairs; chance: picks at random
        images, caps = zip(*[W.WorldCaptions("val", args.n_test, size)[i] for i in range(args.n_test)])
        scores = {"zero_shot": tokenizer.zero_shot_matching(model, torch.stack(images).to(dev), list(caps)),
                  "zero_shot_chance": sum(map(caps.count, caps)) / len(caps) ** 2, "s0_invariance": None}
    return {"stage0": args.stage0, "objective": objective, "steps": ck["step"], "n_train": args.n_train,
            "n_test": args.n_test, "s0_invariance": ck["config"].get("s0_invariance", 0.0), "readout_psnr": own,
            "readout_psnr_twin": twin, "twin_gap_db": own - twin, **scores, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# 4. Table 4 in miniature: every latent space trained by tokenizer.py on the same world data and
#    stage-0 encoder for the same total number of steps B (shared out by TABLE4_SPLITS), then
#    measured by recon and probe on the same held-out scenes. Equal budgets matter: with stage
#    budgets, PS-VAE would beat S-VAE partly by training longer. Fig. 11 (left): PS-VAE against C.

TABLE4_ROWS = [("PS-VAE", "psvae", 2), ("S-VAE", "svae", 1), ("RAE", "rae", 1), ("P-VAE", "pvae", 1),
               ("VAE (MAR-VAE role)", "vae", 1), ("RPiAE", "rpiae", 3)]
# Share of the budget per stage. PS-VAE's stage 2 gets the larger share: its pixel decoder trains in
# both stages, but only stage 2 lets the pixel loss reach the encoder, which is what PS-VAE adds
# to S-VAE (at the cpu budget, PSNR follows the number of stage-2 steps; results/README.md).
TABLE4_SPLITS = {1: (1.0,), 2: (0.2, 0.8), 3: (0.4, 0.3, 0.3)}
# budget B, recon images, probe train/test scenes, evaluator steps, channels (Fig. 11); batch: the
# trainings' batch when not the tokenizer preset's (cpu: 16 instead of 32). At the cpu budget
# PS-VAE's decoder draws the world's background lines (at 600 steps no semantic latent did); the
# whole table, 8 trainings, took 33 minutes of 2 cores on the latest CPU here (results/README.md).
TABLE4_SIZES = {
    "tiny": dict(budget=12, n=16, n_train=32, n_test=16, evaluator_steps=20, channels=(2, 8)),
    "cpu": dict(budget=1200, batch=16, n=256, n_train=512, n_test=256, evaluator_steps=400, channels=(8, 48)),
    "world": dict(budget=60000, n=1000, n_train=2000, n_test=1000, evaluator_steps=3000, channels=(8, 48, 96))}


def table4_steps(budget, stages):
    """Steps of each stage: the budget split by TABLE4_SPLITS, summing exactly to the budget."""
    if budget < stages:
        raise ValueError(f"--budget {budget} is too small for a {stages}-stage recipe; give at least {stages}")
    steps = [max(1, round(budget * f)) for f in TABLE4_SPLITS[stages]]
    steps[0] += budget - sum(steps)
    return steps


def train_latent(out, args, plan, stage0):
    """Bring one latent space's run folder to its plan [(stage, steps), ...] on the stage-0 encoder `stage0`: a stage
    at its planned steps is reused, one short of them resumed, a missing one trained, and every stage above a
    (re)trained one trained afresh. A folder of another encoder (<out>/encoder.sha1) is refused. -> stages trained."""
    import generator
    sha, mark = generator.file_hash(stage0), os.path.join(out, "encoder.sha1")
    if os.path.isfile(mark) and open(mark).read().strip() != sha:
        raise ValueError(f"{out} was trained on another stage-0 encoder; give --stage0 {stage0} its own --runs folder")
    write_text(mark, sha + "\n")
    trained = 0
    for stage, steps in plan:
        path = os.path.join(out, f"stage{stage}.pt")
        ck = None if trained or not os.path.isfile(path) else torch.load(path, map_location="cpu", weights_only=True)
        done = None if ck is None else ck["step"]
        if done is not None and done > steps:
            raise ValueError(f"{path} has {done} steps, more than the planned {steps}; use another --runs folder")
        if ck is not None:
            same_recipe(path, ck["config"], tokenizer.parse_args([*args, "--stage", str(stage)]))
        if done != steps:  # (a stage trained afresh drops its old metrics records itself)
            tokenizer.main([*args, "--stage", str(stage), "--steps", str(steps), "--out", out, "--encoder-ckpt",
                            stage0, *(["--resume"] if done is not None else [])])
            trained += 1
    return trained


# same names, other training
REUSE_KEYS = ("batch_size", "lr", "cooldown", "semantic_weight", "pixel_weight", "kl_weight", "disc_start")


def same_recipe(path, had, want):
    """A stage is reused (or resumed) only if it was trained with the settings asked for now."""
    diff = [f"{k} {had.get(k)} (asked {want[k]})" for k in REUSE_KEYS if had.get(k) != want[k]]
    if diff:
        raise ValueError(f"{path} was trained with {', '.join(diff)}; give these settings their own --runs folder")


def table4_job(job):
    """A latent space (or the rFID evaluator, or stage 0) trained as planned, then measured; log: <out>/table4.log."""
    t0 = time.time()
    os.makedirs(job["out"], exist_ok=True)
    with open(os.path.join(job["out"], "table4.log"), "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), num_threads(job["threads"]):
        if job["kind"] == "evaluator":
            world_evaluator(job["steps"], cache=job["out"])
        elif job["kind"] == "stage0" and not os.path.isfile(job["stage0"]):
            tokenizer.main([*job["args"], "--stage", "0", "--out", job["out"]])
        if job["kind"] != "latent":  # the evaluator and stage 0 are trained, not measured
            return {"seconds": round(time.time() - t0, 1), "trained": 0}
        trained = train_latent(job["out"], job["args"], job["plan"], job["stage0"])
        a = argparse.Namespace(ckpt=job["out"], **job["ev"])
        measured = {"recon": cmd_recon(a), "probe": cmd_probe(a)}
        write_text(os.path.join(job["out"], "measured.json"), json.dumps(measured, indent=1))  # read by table4-gen
        return {**measured, "seconds": round(time.time() - t0, 1), "trained": trained}


def cmd_table4(args):
    """Train (or reuse) every latent space at one budget, measure recon + probe, write the table and channels figure."""
    t0, sz = time.time(), TABLE4_SIZES[args.preset]
    runs, B = args.runs or os.path.join("runs", f"table4-{args.preset}"), args.budget or sz["budget"]
    own_batch = sz.get("batch", tokenizer.PRESETS[args.preset]["batch_size"])  # the table's; stage 0 always uses it
    batch = args.batch_size or own_batch
    n_proc = args.jobs or (2 if eval_device(args).type == "cpu" else 1)
    threads = args.threads or max(1, (os.cpu_count() or 1) // n_proc)
    wanted = args.recipes.split(",") if args.recipes else [r for _, r, _ in TABLE4_ROWS]
    rows = [row for row in TABLE4_ROWS if row[1] in wanted]
    if len(rows) != len(wanted):
        raise ValueError(f"--recipes {args.recipes!r}: give a comma-separated subset of "
                         f"{','.join(r for _, r, _ in TABLE4_ROWS)}")
    if args.stage0 and not os.path.isfile(args.stage0):
        raise ValueError(f"--stage0 {args.stage0} does not exist; give a tokenizer.py --stage 0 checkpoint")
    table4_steps(B, max(TABLE4_SPLITS))  # a budget too small for RPiAE stops here, before any training
    speed, precision = table_speed(args, B)  # judged by a latent's whole budget
    base = ["--preset", args.preset, *speed] + (["--device", args.device] if args.device else []) + \
        (["--workers", str(args.workers)] if args.workers else []) + \
        [a for flag in ("semantic_weight", "pixel_weight", "disc_start") if getattr(args, flag) is not None
         for a in ("--" + flag.replace("_", "-"), str(getattr(args, flag)))]
    s0 = args.stage0 or os.path.join(runs, "stage0", "stage0.pt")
    ev_cache = os.path.join(runs, "evaluator")
    print(f"table4 preset {args.preset}: budget {B} steps per latent, {n_proc} jobs at a time, {threads} thread(s) "
          f"each, runs in {runs}", flush=True)
    train_s0 = [] if args.stage0 else [dict(kind="stage0", out=os.path.dirname(s0), stage0=s0, threads=threads,
                                            args=base + ["--batch-size", str(own_batch)])]  # the preset's stage 0
    run_jobs([dict(kind="evaluator", out=ev_cache, steps=sz["evaluator_steps"], threads=threads)] + train_s0, n_proc,
             table4_job)
    C0 = tokenizer.PRESETS[args.preset]["latent_channels"]
    Cs = [] if args.recipes else sorted(set(sz["channels"]) | {C0})  # Fig. 11 belongs to the whole table
    ev = dict(split="val", n=sz["n"], batch=32, data=None, evaluator_steps=sz["evaluator_steps"], device=args.device,
              evaluator_cache=ev_cache, n_train=sz["n_train"], n_test=sz["n_test"])
    specs = [(name, recipe, last, C0) for name, recipe, last in rows] + \
        [(f"PS-VAE C={C}", "psvae", 2, C) for C in Cs if C != C0]
    # another seed of the latents (stage 0 stays the same): its own folders <recipe>-seed<N> and files *_seed<N>
    seed, dir_sfx, file_sfx = (["--seed", str(args.seed)], f"-seed{args.seed}", f"_seed{args.seed}") if args.seed \
        else ([], "", "")
    jobs = [dict(kind="latent", out=os.path.join(runs, (recipe if C == C0 else f"psvae-c{C}") + dir_sfx), stage0=s0,
                 ev=ev, threads=threads, plan=list(zip(range(1, last + 1), table4_steps(B, last))),
                 args=base + ["--batch-size", str(batch)] + seed + ["--recipe", recipe, "--latent-channels", str(C)]) for _, recipe, last, C in specs]
    results = dict(zip([s[0] for s in specs], run_jobs(jobs, n_proc, table4_job)))
    chans = [(C, results["PS-VAE" if C == C0 else f"PS-VAE C={C}"]) for C in Cs]
    # file names: what differs from the preset's table (the channels figure has no recipe subset)
    head = (f"_b{B}" if B != sz["budget"] else "") + (f"_bs{batch}" if batch != own_batch else "")
    tail = "".join(f"_{k}{v:g}" for k, v in (("ws", args.semantic_weight), ("wp", args.pixel_weight),
                                              ("ds", args.disc_start))
                   if v is not None) + file_sfx
    name = f"table4_{args.preset}{head}" + ("_" + "_".join(r for _, r, _ in rows) if args.recipes else "") + tail
    command = "python evaluate.py table4 " + " ".join(sys.argv[2:] if args.command_line is None else args.command_line)
    md = write_table4(os.path.join(args.results, name + ".md"), rows, results, chans, command, B, batch, sz, s0, runs,
                      time.time() - t0, n_proc, threads, precision)
    out = {"table": md, "rows": {n: {**results[n]["recon"], **results[n]["probe"]} for n, _, _ in rows},
           "channels": [(C, r["recon"]["psnr"], r["probe"]["probe"]) for C, r in chans],
           "seconds": round(time.time() - t0, 1)}
    if chans:
        out["figure"] = plot_channels(os.path.join(args.results, f"channels_{args.preset}{head}{tail}.png"),
                                      out["channels"], args.preset)
    return out


def write_table4(path, rows, results, chans, command, B, batch, sz, s0, runs, seconds, n_proc, threads, precision):
    """The markdown table: one row per latent, then Figure 11's sweep."""
    fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    r0 = results[rows[0][0]]["recon"]
    lines = [f"# Table 4 (reconstruction half) in miniature, budget {B}", "",
             f"`{command}`; runs in `{runs}`; every latent trained for {B} steps of batch {batch} in all (2 stages: "
             f"{'+'.join(map(str, table4_steps(B, 2)))}, 3 stages: {'+'.join(map(str, table4_steps(B, 3)))}); "
             f"precision: {precision}; {sz['n']} held-out world scenes; probe: {sz['n_train']} train / {sz['n_test']} held-out scenes; rFID "
             f"features: WorldEvaluator ({sz['evaluator_steps']} steps). World encoder (stage 0): `{s0}`, "
             f"{torch.load(s0, map_location='cpu', weights_only=True)['step']} steps. LPIPS: "
             f"{r0.get('lpips_reason', 'lpips package, AlexNet')}. Read back: what the scene detector reads from the "
             f"reconstructions (share of images with the right object count; of the objects found in place, share "
             f"with the right shape; with the right texture).", "",
             "| latent | recipe (stages) | latent shape | PSNR | SSIM | LPIPS | rFID | read back: count / shape / "
             "texture | probe per token | probe pooled | probe | probe, balanced |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, recipe, last in rows:
        r, p = results[name]["recon"], results[name]["probe"]
        C, h, w = p["latent"]  # written h x w x C
        lines.append(f"| {name} | {recipe} ({'+'.join(map(str, table4_steps(B, last)))}) | {h}x{w}x{C} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} | {fmt(r['lpips'], 3)} | {r['rfid']:.3f} | "
                     f"{r['read_count']:.2f} / {r['read_shape']:.2f} / {r['read_texture']:.2f} | "
                     f"{p['probe_token']:.3f} | {p['probe_pooled']:.3f} | {p['probe']:.3f} | {p['probe_balanced']:.3f} |")
    if chans:
        lines += ["", "Figure 11 (left), PS-VAE against latent channels C:", "", "| C | PSNR | probe |", "|---|---|---|"]
        lines += [f"| {C} | {r['recon']['psnr']:.2f} | {r['probe']['probe']:.3f} |" for C, r in chans]
    trained = sum(r["trained"] for r in results.values())
    lines += ["", f"Total time: {seconds:.0f} s ({n_proc} jobs at a time, {threads} thread(s) each, {os.cpu_count()} "
              f"CPU cores, device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}); "
              f"{trained} stage(s) trained here, the others reused from `{runs}`."]
    return write_text(path, "\n".join(lines) + "\n")


def plot_channels(path, chans, preset):
    """Figure 11 (left): PS-VAE's PSNR and probe against the latent channels C."""
    Cs = [c for c, _, _ in chans]
    with figure(path, 1, 2, figsize=(7, 2.8)) as (fig, ax):
        ax[0].plot(Cs, [p for _, p, _ in chans], "o-"), ax[0].set_ylabel("PSNR (dB)")
        ax[1].plot(Cs, [p for _, _, p in chans], "o-"), ax[1].set_ylabel("linear probe")
        for a in ax:
            a.set_xscale("log", base=2), a.set_xlabel("latent channels C"), a.set_xticks(Cs, [str(c) for c in Cs])
        fig.suptitle(f"PS-VAE against C (Fig. 11 left), preset {preset}", fontsize=9)
    return path


# ----------------------------------------------------------------------------------------------
# 5. mini-GenEval: the suite (world.geneval_suite) generated by a run, judged by the detector
#    twice: strictly (check_caption) and by GenEval's own rules (check_caption_geneval_rules).

def load_for_sampling(loader, args, sizes, guidance):
    """(model, tokenizer, image size, suite preset, sampling settings) of a generator or edit run, each its flag's,
    else the run's (steps, shift, the `guidance` scales, tokenizer; preset: world where `sizes` lacks the run's)."""
    import generator
    model, cfg, tok_path = loader(args.ckpt, eval_device(args))
    tok, _, size = generator.open_tokenizer(args.tokenizer or tok_path, eval_device(args), cfg["tokenizer_sha1"])
    preset = args.preset or (cfg["preset"] if cfg["preset"] in sizes else "world")
    kw = dict(steps=args.steps or cfg["sample_steps"], shift=args.sample_shift or cfg["sample_shift"])
    kw.update({g: cfg[g] if getattr(args, g) is None else getattr(args, g) for g in guidance})
    return model, tok, size, preset, kw


def cmd_geneval(args):
    """mini-GenEval of a generator run: per-category and overall accuracy."""
    import generator
    device = eval_device(args)
    if args.ckpt:
        model, tok, size, preset, kw = load_for_sampling(generator.load_generator, args, W.GENEVAL_SIZES, ["guidance"])
    elif args.baseline and args.tokenizer:  # the ceiling of any tokenizer: no generator is read
        (tok, _, size), model, preset = generator.open_tokenizer(args.tokenizer, device), None, args.preset or "cpu"
        kw = dict(steps=None, shift=None, guidance=None)  # nothing is sampled
    else:
        raise ValueError("geneval needs --ckpt (a generator run), or --baseline real with --tokenizer")
    per_cat, per_prompt = W.GENEVAL_SIZES[preset]
    per_cat, per_prompt = args.prompts or per_cat, args.images or per_prompt
    suite = W.geneval_suite(per_cat)
    sha = hashlib.sha1(json.dumps([p[1] for p in suite]).encode()).hexdigest()[:12]
    print(f"{W.GENEVAL_VERSION} ({sha}): {per_cat} prompts x {len(W.CAPTION_CATEGORIES)} categories x {per_prompt} "
          "images, " + ("real scenes through the tokenizer" if args.baseline else
                        f"{kw['steps']} Euler steps, shift {kw['shift']}, guidance {kw['guidance']}"), flush=True)
    jobs = [(c, text, spec, k) for k, (c, text, spec) in enumerate(suite) for _ in range(per_prompt)]
    strict, rules = torch.zeros(len(suite)), torch.zeros(len(suite))  # per prompt, summed over its images
    ev, feats = gfid_evaluator(preset), {"generated": [], "real": []}  # gFID, in the world's features
    t0 = time.time()
    for b in tqdm(range(0, len(jobs), args.batch), disable=not sys.stderr.isatty()):
        part = jobs[b:b + args.batch]
        real = torch.stack([W.to_tensor(W.render(W.caption_scene(W.scene_seed("test", k % per_cat), c)[0], size))
                            for c, _, _, k in part])  # the held-out scenes the suite's captions describe
        if args.baseline:  # no generator: these scenes (each satisfies its caption) through the run's
            # tokenizer, the best any generator on this latent can be scored
            with torch.no_grad():
                imgs = tok.decode(tok.encode(real.to(device))).cpu()
        else:  # image j of the job list draws its noise from (seed, j): reproducible for any --batch
            imgs = generator.generate(model, tok, [j[1] for j in part], seed=args.seed, first=b, batch=args.batch, **kw)
        feats["generated"].append(ev.features(imgs.float().cpu().clamp(-1, 1))), feats["real"].append(ev.features(real))
        for (c, _, spec, k), img in zip(part, imgs):
            desc = W.detect(img)
            strict[k] += W.check_caption(desc, spec)
            rules[k] += W.check_caption_geneval_rules(desc, spec)
    cats = W.CAPTION_CATEGORIES
    # per_cat prompts in every category: the overall score (mean over categories) is the mean over prompts, s.e. theirs
    scores = {name: v.view(len(cats), per_cat) / per_prompt for name, v in (("", strict), ("_geneval_rules", rules))}
    # generation FID: the suite's images against the real held-out scenes its captions describe
    # (WorldEvaluator features, as rFID); it moves before shapes appear, GenEval does not
    gfid, gfid_se = fid_and_stderr(*(torch.cat(feats[k]) for k in ("generated", "real")))
    out = {"suite": W.GENEVAL_VERSION, "suite_sha1": sha, "ckpt": args.ckpt, "preset": preset, "n_images": len(jobs),
           "prompts_per_category": per_cat, "images_per_prompt": per_prompt, "gfid": gfid, "gfid_stderr": gfid_se}
    for name, v in scores.items():
        out.update({f"per_category{name}": dict(zip(cats, v.mean(1).tolist())), f"overall{name}": v.mean().item(),
                    f"overall{name}_stderr": (v.std() / len(v.flatten()) ** 0.5).item() if v.numel() > 1 else 0.0})
    return {**out, **kw, "baseline": args.baseline, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# 6. mini-GEdit: the suite (world.gedit_suite) edited by a run, scored by world.score_edit

def cmd_gedit(args):
    """mini-GEdit of an edit run: per-category adherence, instruction hit and consistency."""
    import edit
    device = eval_device(args)
    model, tok, size, preset, kw = load_for_sampling(edit.load_edit_model, args, W.GEDIT_SIZES,
                                                     ["guidance_text", "guidance_image"])
    per_cat = args.edits or W.GEDIT_SIZES[preset]
    suite = W.gedit_suite(per_cat)
    sha = hashlib.sha1(json.dumps([e.instruction for e in suite]).encode()).hexdigest()[:12]
    print(f"{W.GEDIT_VERSION} ({sha}): {per_cat} edits x {len(W.EDIT_CATEGORIES)} categories, {kw['steps']} Euler "
          f"steps, shift {kw['shift']}, text guidance {kw['guidance_text']}, image guidance {kw['guidance_image']}",
          flush=True)
    scores, t0, shown = {c: [] for c in W.EDIT_CATEGORIES}, time.time(), []
    render = lambda s: W.to_tensor(W.render(s, size))  # noqa: E731
    for b in tqdm(range(0, len(suite), args.batch), disable=not sys.stderr.isatty()):
        part = suite[b:b + args.batch]
        src = torch.stack([render(e.source) for e in part])
        if args.baseline:  # no edit model: the source ("ignore the instruction") or the exact target ("a
            # perfect editor"), each through the run's tokenizer, whose blur limits every score
            x = src if args.baseline == "source" else torch.stack([render(e.target) for e in part])
            with torch.no_grad():
                out = tok.decode(tok.encode(x.to(device))).cpu()
        else:  # edit i of the suite draws its noise from (seed, i), whatever --batch is
            out = edit.edit_images(model, tok, src, [e.instruction for e in part], seed=args.seed, first=b,
                                   batch=args.batch, **kw)
        for e, x, y in zip(part, src, out):
            scores[e.category].append(W.score_edit(e, y, size))
            if args.grid and sum(s[3] == e.category for s in shown) < 2:
                shown.append((x, y, e.instruction, e.category, render(e.target)))
    if args.grid:
        shown.sort(key=lambda s: W.EDIT_CATEGORIES.index(s[3]))
        src, out, text, _, target = (list(v) for v in zip(*shown))
        edit.save_pairs(args.grid, src, out, text, f"{W.GEDIT_VERSION}: {args.ckpt}", targets=target, per_row=2)
    per_category = {c: dict(zip(("adherence", "consistency_psnr", "instruction_hit"),
                                (sum(v) / len(v) for v in zip(*s)))) for c, s in scores.items()}
    mean = lambda k: sum(v[k] for v in per_category.values()) / len(per_category)  # noqa: E731
    return {"suite": W.GEDIT_VERSION, "suite_sha1": sha, "ckpt": args.ckpt, "preset": preset,
            "edits_per_category": per_cat, "n_edits": len(suite), "per_category": per_category,
            **{k: mean(k) for k in ("adherence", "consistency_psnr", "instruction_hit")}, **kw,
            "baseline": args.baseline, "grid": args.grid, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# 7. Table 4's right half, Figures 1, 4 and 7: the same generator (preset, seed, batch, lr, steps)
#    trained on every latent of `evaluate.py table4`, then the same editor; mini-GenEval along the
#    way (Fig. 1 / 7's convergence) and at the end, mini-GEdit, and how far generated latents fall
#    from the data (Fig. 3's measure). Table 1's DDT-head row: PS-VAE and RAE with --head none.

GEN_SIZES = {  # generator and editor steps, evaluation interval, prompts per category along the way
    "tiny": dict(gen_steps=4, edit_steps=2, every=2, prompts=1, n_off=24),
    "cpu": dict(gen_steps=10000, edit_steps=1500, every=1000, prompts=10, n_off=600),  # ~2e14 FLOPs at patch 2
    "world": dict(gen_steps=60000, edit_steps=20000, every=5000, prompts=20, n_off=2000)}


def nn_distances(a, b):
    """The distance from each row of a to its nearest row of b."""
    return torch.cat([torch.cdist(a[i:i + 256], b).min(1).values for i in range(0, len(a), 256)])


def tail_mean(d, top=0.05):
    """The mean of the largest `top` share of the distances d: how far the farthest samples lie."""
    return d.sort().values[-max(1, int(top * len(d))):].mean().item()


def tail_ratio(d_gen, d_real, top=0.05, boot=200, seed=0):
    """tail_mean(d_gen) / tail_mean(d_real), and its standard error: the spread of the ratio over
    `boot` bootstrap resamples of both sets of samples (the noise of drawing n of each)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda d: d[torch.randint(len(d), (len(d),), generator=g)]  # noqa: E731
    boots = torch.tensor([tail_mean(draw(d_gen), top) / tail_mean(draw(d_real), top) for _ in range(boot)])
    return tail_mean(d_gen, top) / tail_mean(d_real, top), boots.std().item()


def off_manifold_ratio(model, tok, size, cache_path, n, seed, kw):
    """The top-5% nearest-neighbour distance of n generated latents to the training latents over the same for n
    held-out real ones (encoded val scenes): 1 when samples lie as close to the data as unseen data does, larger when
    they stray. Latents are normalised per channel first, so that spaces of any size compare. -> (ratio, stderr)."""
    import generator
    norm = lambda z: ((z.float() - model.latent_mean.cpu()) / model.latent_std.cpu()).flatten(1)  # noqa: E731
    train = norm(torch.load(cache_path, map_location="cpu", weights_only=True)["latents"])
    val = W.WorldCaptions("val", n, size)
    items = [val[i] for i in range(n)]
    with torch.no_grad():
        real = norm(torch.cat([tok.encode(torch.stack([x for x, _ in items[i:i + 64]])).cpu() for i in range(0, n, 64)]))
    gen = norm(generator.generate_latents(model, [c for _, c in items], seed=seed, **kw).cpu())
    return tail_ratio(nn_distances(gen, train), nn_distances(real, train))


def latent_directions(z, share=0.99):
    """How many directions of channel space hold `share` of a latent's (N, C, H, W) variance, channels normalised as
    the generator sees them: its width per token against C (Sec. 3.1: few filled directions leave room to stray)."""
    t = z[:2000].float().transpose(0, 1).flatten(1)  # (C, tokens)
    t = (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True)
    ev = torch.linalg.eigvalsh(torch.cov(t)).flip(0)  # largest first
    return int((ev.cumsum(0) / ev.sum() < share).sum()) + 1


def trained_steps(path):
    """The step a generator's or editor's checkpoint has reached; 0 when there is none yet."""
    return torch.load(path, map_location="cpu", weights_only=True)["step"] if os.path.isfile(path) else 0


def generation_job(job):
    """One latent space (or head variant): the generator trained in chunks of `every` steps, each followed by
    mini-GenEval on the small suite (curve.json: a killed table resumes there), then the full suite (generation.json),
    the off-manifold ratio (off-manifold.json), the editor and mini-GEdit (edit-from<steps>/ and .json; none at an
    editor budget of 0). A finished part is reused only if its sizes and tokenizer (sha1) are the same."""
    import edit
    import generator
    out, sz, sha = job["out"], job["sizes"], job["tokenizer_sha1"]
    os.makedirs(out, exist_ok=True)
    curve_path, gen = os.path.join(out, "curve.json"), os.path.join(out, "gen")
    ed = os.path.join(out, f"edit-from{sz['gen_steps']}")  # a longer-trained generator gets a new editor
    common = ["--preset", job["preset"], "--seed", str(job["seed"]), "--n-samples", "0", *job["flags"]]
    ev = lambda **k: argparse.Namespace(**{**GEN_EVAL_DEFAULTS, **k})  # noqa: E731

    def generation():
        t0, curve = time.time(), json.load(open(curve_path)) if os.path.isfile(curve_path) else {}
        done = trained_steps(os.path.join(gen, "generator.pt"))
        for s in sorted({*range(sz["every"], sz["gen_steps"], sz["every"]), sz["gen_steps"]}):  # chunks, then the budget
            if str(s) in curve or s < done:  # measured, or passed by a run with another interval
                continue
            generator.main([*common, *job.get("generator_flags", []), "--tokenizer", job["tokenizer"], "--out", gen,
                            "--steps", str(s), "--head", job["head"], "--cache", job["cache"],
                            *(["--resume"] if done else [])])  # (the editor takes the generator's size from it)
            done = s
            curve[str(s)] = cmd_geneval(ev(ckpt=gen, preset=job["preset"], prompts=sz["prompts"], images=1))
            write_text(curve_path, json.dumps(curve, indent=1))
        final = cmd_geneval(ev(ckpt=gen, preset=job["preset"]))
        return {"geneval": final, "curve": curve, "seconds": round(time.time() - t0, 1)}

    def off_manifold(latents_file):
        model, cfg, tok_path = generator.load_generator(gen)
        tok, _, size = generator.open_tokenizer(tok_path)
        kw = dict(steps=cfg["sample_steps"], shift=cfg["sample_shift"], guidance=cfg["guidance"])
        ratio, stderr = off_manifold_ratio(model, tok, size, latents_file, sz["n_off"], 1, kw)
        return {"off_manifold_ratio": ratio, "off_manifold_stderr": stderr}

    def editing():
        done = trained_steps(os.path.join(ed, "edit.pt"))
        if done < sz["edit_steps"]:
            edit.main([*common, "--init", gen, "--out", ed, "--steps", str(sz["edit_steps"]), "--cache", job["cache"],
                       *(["--resume"] if done else [])])
        return cmd_gedit(ev(ckpt=ed, preset=job["preset"]))

    with open(os.path.join(out, "table4-gen.log"), "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), num_threads(job["threads"]):
        gen_key = {k: sz[k] for k in ("gen_steps", "every", "prompts", "n_off")} | {"tokenizer_sha1": sha} | \
            ({"generator_flags": job["generator_flags"]} if job.get("generator_flags") else {})
        res = reuse_or_run(os.path.join(out, "generation.json"), gen_key, generation)
        latents_file = json.load(open(os.path.join(gen, "config.json")))["cache_file"]  # what it was trained on
        res |= reuse_or_run(os.path.join(out, "off-manifold.json"), gen_key, lambda: off_manifold(latents_file))
        z = torch.load(latents_file, weights_only=True)["latents"]
        res["directions"], res["channels"] = latent_directions(z), z.shape[1]
        res |= training_cost(gen, sz["gen_steps"], tuple(z.shape[1:]))
        if job["edit"] and sz["edit_steps"] > 0:
            res["gedit"] = reuse_or_run(ed + ".json", {**gen_key, "edit_steps": sz["edit_steps"]}, editing)
    return res


def training_cost(gen, steps, latent_shape):
    """{batch, samples, flops} of a generator trained `steps` steps: experiments/bench.py's counter (model FLOPs of
    one sample, forward and backward) x samples, so that rows and seeds compare at equal compute."""
    from experiments.bench import generator_cost
    cfg = json.load(open(os.path.join(gen, "config.json")))
    per_sample = generator_cost({**cfg, "lm": None}, latent_shape)[1]  # (the LM's weights do not change the count)
    return {"batch": cfg["batch_size"], "samples": steps * cfg["batch_size"], "flops": steps * cfg["batch_size"] * per_sample}


GEN_EVAL_DEFAULTS = dict(tokenizer=None, prompts=None, images=None, steps=None, sample_shift=None, guidance=None,
                         guidance_text=None, guidance_image=None, seed=0, batch=100, baseline=None, device=None,
                         edits=None, grid=None)


def table_speed(args, steps):
    """One precision and compilation for every training of a table, from --amp / --compile and the length `steps` of
    its trainings, passed to each as flags so that rows differ only in the latent (with `auto` judged per training, a
    1200-step RAE ran bf16 compiled beside a 240 + 960-step PS-VAE in fp32). -> (flags, the table's sentence)."""
    compiled, why_compile = choose_compile(args.compile, eval_device(args), steps)
    amp, why_amp = choose_amp(args.amp, eval_device(args), compiled)
    flags = ["--amp", "bf16" if amp else "off", "--compile", "on" if compiled else "off"]
    return flags, (f"{'bf16 autocast' if amp else 'fp32'}, {'compiled' if compiled else 'eager'}, the same for every "
                   f"training of the table ({why_amp}; {why_compile})")


def cmd_table4_gen(args):
    """Generation and editing on every Table-4 latent: table4_gen.md, figure7.png, figure4.png."""
    import generator
    t0, runs = time.time(), args.runs or os.path.join("runs", f"table4-{args.preset}")
    sz = {**GEN_SIZES[args.preset], **({"gen_steps": args.budget} if args.budget else {}),
          **({"edit_steps": args.edit_budget} if args.edit_budget is not None else {}),
          **({"every": args.every} if args.every else {})}
    wanted = args.recipes.split(",") if args.recipes else [r for _, r, _ in TABLE4_ROWS]
    rows = [(name, recipe, "ddt") for name, recipe, _ in TABLE4_ROWS if recipe in wanted] + \
        [(f"{name}, no DDT head", recipe, "none") for name, recipe, _ in TABLE4_ROWS
         if recipe in wanted and recipe in ("psvae", "rae") and args.head_ablation]
    jobs, measured = [], {}
    # the generator trains in chunks of `every` steps, one process call each: the choice judges the
    # chunk, not the budget, so that short chunks do not each pay a compilation
    speed, precision = table_speed(args, min(sz["every"], sz["gen_steps"]))
    pre = generator.PRESETS[args.preset]  # the caption LM the generators start from, made once before they run
    generator.resolve_lm({"lm": pre.get("lm"), "model": pre["model"]}, eval_device(args))
    n = args.tokenizer_seed  # the latents of `table4 --seed N`, in <recipe>-seed<N>/
    dir_sfx, seed_flag = (f"-seed{n}", f" --seed {n}") if n else ("", "")
    for name, recipe, head in rows:
        latent = os.path.join(runs, recipe + dir_sfx)
        if not os.path.isfile(os.path.join(latent, "measured.json")):
            raise ValueError(f"{latent} holds no measured latent; run `python evaluate.py table4 --preset "
                             f"{args.preset} --runs {runs}{seed_flag}` first")
        measured[name] = json.load(open(os.path.join(latent, "measured.json")))
        tok = tokenizer.last_stage(latent)  # its measured (last) stage
        folder = ("gen-nohead" if head == "none" else "gen-ddt") + (f"-seed{args.seed}" if args.seed else "")
        jobs.append(dict(out=os.path.join(latent, folder), tokenizer=tok, tokenizer_sha1=generator.file_hash(tok),
                         generator_flags=[] if args.patch is None else ["--patch", str(args.patch)],
                         seed=args.seed, head=head, preset=args.preset, cache=os.path.join(runs, "cache"), sizes=sz,
                         edit=head == "ddt", threads=args.threads or max(1, (os.cpu_count() or 1) // args.jobs),
                         flags=(["--device", args.device] if args.device else []) + speed))
    print(f"table4-gen preset {args.preset}: generator {sz['gen_steps']} steps (small suite every {sz['every']}), editor "
          f"{sz['edit_steps']} steps per latent, {args.jobs} jobs at a time, runs in {runs}", flush=True)
    results = dict(zip([r[0] for r in rows], run_jobs(jobs, args.jobs, generation_job)))
    os.makedirs(args.results, exist_ok=True)
    preset = GEN_SIZES[args.preset]  # a budget, latent subset or missing ablation of its own gets its own files
    name = args.preset + "".join(f"_{k}{sz[key]}" for k, key in (("b", "gen_steps"), ("e", "edit_steps"))
                                 if sz[key] != preset[key]) + \
        ("_" + "_".join(dict.fromkeys(r for _, r, _ in rows)) if args.recipes else "") + \
        ("" if args.head_ablation else "_ddt") + (f"_seed{args.seed}" if args.seed else "") + \
        (f"_p{args.patch}" if args.patch not in (None, pre.get("patch", 1)) else "") + \
        (f"_tok{args.tokenizer_seed}" if args.tokenizer_seed else "")
    command = "python evaluate.py table4-gen " + " ".join(sys.argv[2:] if args.command_line is None else args.command_line)
    md = write_table4_gen(os.path.join(args.results, f"table4_generation_{name}.md"), rows, results, measured,
                          sz, time.time() - t0, command, precision)
    fig7 = plot_curves(os.path.join(args.results, f"figure7_{name}.png"), results)
    fig4 = figure4(os.path.join(args.results, f"figure4_{name}.png"), rows, jobs)
    return {"table": md, "figure7": fig7, "figure4": fig4, "rows": {n: {k: v for k, v in r.items() if k != "curve"}
                                                                    for n, r in results.items()}}


def write_table4_gen(path, rows, results, measured, sz, seconds, command, precision):
    """Per latent: mini-GenEval (strict, GenEval rules; +- stderr over prompts), GEdit, off-manifold ratio, recon."""
    cats = W.CAPTION_CATEGORIES
    lines = [f"# Table 4 in miniature, generation and editing: generator {sz['gen_steps']} steps, editor "
             f"{sz['edit_steps']} steps on every latent", "", f"`{command}`; precision: {precision}", "",
             "| latent | mini-GenEval strict | GenEval rules | " + " | ".join(cats) + " | gFID | GEdit hit | adherence | "
             "consistency (dB) | off-manifold ratio | directions / channels | PSNR | probe, balanced | training FLOPs "
             "(samples) |", "|---|" + "---|" * (len(cats) + 11)]
    for name, _, _ in rows:
        r, m = results[name], measured[name]
        g, e = r["geneval"], r.get("gedit")
        lines.append(f"| {name} | {g['overall']:.3f} +- {g['overall_stderr']:.3f} | {g['overall_geneval_rules']:.3f} +- "
                     f"{g['overall_geneval_rules_stderr']:.3f} | " + " | ".join(f"{g['per_category_geneval_rules'][c]:.2f}"
                                                                      for c in cats) + f" | {g['gfid']:.0f}" +
                     (f" | {e['instruction_hit']:.3f} | {e['adherence']:.3f} | {e['consistency_psnr']:.2f}" if e else
                      " | - | - | -") + f" | {r['off_manifold_ratio']:.2f} +- {r['off_manifold_stderr']:.2f} | "
                     f"{r['directions']} / {r['channels']} | "
                     f"{m['recon']['psnr']:.2f} | {m['probe']['probe_balanced']:.3f} | {r['flops']:.2g} ({r['samples']}) |")
    lines += ["", f"Per-category columns: GenEval rules. Off-manifold ratio: top-5% nearest-neighbour distance of "
              f"{sz['n_off']} generated latents to the training latents over that of {sz['n_off']} held-out real "
              f"ones, +- its bootstrap standard error. Directions: how many principal directions of the per-channel "
              f"normalised latent (per token) hold 99% of its variance, of its channels. {seconds:.0f} s in all."]
    return write_text(path, "\n".join(lines) + "\n")


def plot_curves(path, results):
    """Figures 1 and 7 in miniature: the small suite's GenEval (rules) and gFID against training FLOPs, per latent."""
    with figure(path, 1, 2, figsize=(11, 3.8)) as (_, axes):
        for name, r in results.items():
            steps = sorted(r["curve"], key=int)  # (json keys: strings)
            flops = [int(s) * r["flops"] / r["samples"] * r["batch"] for s in steps]
            for ax, key in zip(axes, ("overall_geneval_rules", "gfid")):
                ax.plot(flops, [r["curve"][s][key] for s in steps], "o-", label=name)
        for ax, what in zip(axes, ("mini-GenEval (GenEval rules)", "gFID (world features; lower is better)")):
            ax.set(xlabel="generator training FLOPs", ylabel=what)
        axes[0].legend(fontsize=7)
    return path


def figure4(path, rows, jobs, n=8):
    """Figure 4: the same n held-out captions and the same noise through every latent's generator."""
    import generator
    prompts = [W.WorldCaptions("val", n, 32).item(i)[1] for i in range(n)]
    imgs, names = [], []
    for (name, _, _), job in zip(rows, jobs):
        model, cfg, tok_path = generator.load_generator(os.path.join(job["out"], "gen"))
        imgs += list(generator.generate(model, generator.open_tokenizer(tok_path)[0], prompts, seed=4,
                                        steps=cfg["sample_steps"], shift=cfg["sample_shift"], guidance=cfg["guidance"]))
        names += [f"{name}: {p}" for p in prompts]
    generator.save_grid(path, imgs, names, "Figure 4 in miniature: the same captions and noise on every latent")
    return path


# ----------------------------------------------------------------------------------------------
# Command line

def cmd_report(args):
    """results/REPORT.md and its figure sheet: every claim of the paper beside the miniature's data (report.py);
    with --run, first the runs it lacks, in dependency order (report.steps)."""
    return report.command(args)


def add_command(sub, name, func, what):
    """The sub-command `name`, which runs func(args); `what` is its line in --help."""
    p = sub.add_parser(name, help=what)
    p.set_defaults(func=func)
    return p


def build_parser():
    """One sub-parser per cmd_<name>; each gets --json (and clean errors) in main()."""
    parser = argparse.ArgumentParser(description="PS-VAE, minimal: evaluation and the paper's tables in miniature")
    sub = parser.add_subparsers(dest="command", required=True)
    p = add_command(sub, "detector", cmd_detector, "scene-detector accuracy on held-out world scenes")
    p.add_argument("--n", type=int, default=1000, help="number of held-out scenes")
    p.add_argument("--size", type=int, default=64, help="render size in px (32..256)")
    p.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian pixel noise, on the [0, 1] scale")
    p.add_argument("--split", default="val", help="world split the scenes come from")
    p = add_command(sub, "world-bench", cmd_world_bench, "renderer speed (images/s, one process)")
    p.add_argument("--n", type=int, default=3000, help="images to render")
    p.add_argument("--size", type=int, default=64, help="render size in px")
    p = add_command(sub, "detail-bound", cmd_detail_bound,
                    "PSNR of a scene's no-detail mean render (the no-detail bound)")
    p.add_argument("--n", type=int, default=200, help="number of held-out scenes")
    p.add_argument("--size", type=int, default=64, help="render size in px")
    p.add_argument("--k", type=int, default=16, help="renders with redrawn detail averaged per scene")
    p.add_argument("--split", default="val", help="world split the scenes come from")
    p = add_command(sub, "world-sheet", cmd_world_sheet, "contact sheets world.png and edits.png")
    p.add_argument("--out", default=os.path.join("results", "world"), help="folder for the PNGs")
    p.add_argument("--size", type=int, default=96, help="render size in px")
    p.add_argument("--per-category", type=int, default=3, help="examples per category")
    p = add_command(sub, "data", cmd_data, "check a real-data folder / file by reading a few items")
    p.add_argument("--images", default=None, help="image folder in ImageNet layout")
    p.add_argument("--captions", default=None, help="folder of images with same-named .txt")
    p.add_argument("--edits", default=None, help="JSONL of input/instruction/output triplets")
    p.add_argument("--size", type=int, default=64, help="resize + centre-crop size in px")
    p.add_argument("--read", type=int, default=8, help="how many items to read")
    report.add_flags(add_command(sub, "report", cmd_report, "results/REPORT.md: every claim of the paper beside the "
                                 "miniature's data; --run first makes what it lacks"))
    add_tokenizer_commands(sub)
    add_generation_commands(sub)
    for name, p in sub.choices.items():
        p.add_argument("--json", default=None, help="also write the result JSON to this file")
        if name not in ("detector", "world-bench", "world-sheet", "data", "detail-bound"):
            p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="where the models run "
                           "(default: cuda if available); the metrics are computed on the CPU")
    return parser


def add_tokenizer_commands(sub):
    for name, func, what in (("recon", cmd_recon, "PSNR, SSIM, LPIPS, rFID of a tokenizer's reconstructions"),
                             ("probe", cmd_probe, "linear-probe accuracy of a tokenizer's latent on world semantics")):
        p = add_command(sub, name, func, what)
        p.add_argument("--ckpt", required=True, help="tokenizer run folder (its last stage) or a stage<N>.pt")
        p.add_argument("--data", default=None, help="recon: image folder instead of held-out world scenes")
        p.add_argument("--split", default="val", help="recon: world split of the held-out scenes")
        p.add_argument("--n", type=int, default=256, help="recon: number of images")
        p.add_argument("--n-train", type=int, default=512, help="probe: world scenes the probe is fit on")
        p.add_argument("--n-test", type=int, default=256, help="probe: held-out (val) scenes it is scored on")
        p.add_argument("--batch", type=int, default=32, help="images per forward pass")
        p.add_argument("--evaluator-steps", type=int, default=400, help="rFID network: training steps")
        p.add_argument("--evaluator-cache", default="runs/evaluator", help="rFID network: cache folder")
    p = add_command(sub, "encoder", cmd_encoder, "a stage-0 encoder: head accuracy, linear pixel readout, twin gap")
    p.add_argument("--stage0", required=True, help="a tokenizer.py --stage 0 checkpoint")
    p.add_argument("--n-train", type=int, default=512, help="world scenes the readout is fit on")
    p.add_argument("--n-test", type=int, default=256, help="held-out (val) scenes it is scored on, with their twins")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p = add_command(sub, "table4", cmd_table4, "Table 4's reconstruction half: train every recipe, recon + probe")
    p.add_argument("--preset", choices=list(TABLE4_SIZES), default="cpu", help="tokenizer preset and table size")
    p.add_argument("--runs", default=None, help="run folder (default runs/table4-<preset>); finished stages are reused")
    p.add_argument("--results", default=os.path.join("results", "table4"), help="folder for the table and figure")
    p.add_argument("--budget", type=int, default=None, help="training steps per latent (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch of every training (default: TABLE4_SIZES'); "
                   "give it its own --runs")
    add_speed_args(p)  # passed to every training of the table
    p.add_argument("--jobs", type=int, default=None, help="trainings at a time (default 2 on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=None, help="threads per training (default cpu_count / jobs)")
    p.add_argument("--stage0", default=None, help="a world encoder (tokenizer.py --stage 0 checkpoint) to use "
                   "instead of training the preset's stage 0 here")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per training (GPU runs)")
    p.add_argument("--recipes", default=None, help="a subset of rows, e.g. psvae,rae,pvae (no channel sweep; own file)")
    p.add_argument("--semantic-weight", type=float, default=None, help="w_s of L_s in every training (default: "
                   "the tokenizer's, Sec 4.4: 0.1); 1 with --pixel-weight 0.1 is Sec 4.1's; give them their own --runs")
    p.add_argument("--pixel-weight", type=float, default=None, help="w_p of L_p in every training (default: the "
                   "tokenizer's)")
    p.add_argument("--disc-start", type=int, default=None, help="step of each stage from which L_p's PatchGAN "
                   "term is on (default: the preset's; cpu: never); give it its own --runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents' trainings (stage 0 and the rFID "
                   "network stay the same); another seed trains beside the first, in <recipe>-seed<N>/")


def add_sampling_flags(p, guidance):
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: the run's)")
    p.add_argument("--sample-shift", type=float, default=None, help="inference shift (default: the run's)")
    for flag, what in guidance:
        p.add_argument(flag, type=float, default=None, help=f"{what} (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--tokenizer", default=None, help="tokenizer checkpoint (default: the run's)")


def add_generation_commands(sub):
    p = add_command(sub, "geneval", cmd_geneval, "mini-GenEval of a generator run (the detector judges)")
    p.add_argument("--ckpt", default=None, help="generator run folder or its generator.pt (--baseline real: or none)")
    p.add_argument("--preset", choices=list(W.GENEVAL_SIZES), default=None,
                   help="suite size: tiny (tests), cpu, world (default: the run's preset, else cpu)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per category (overrides the preset)")
    p.add_argument("--images", type=int, default=None, help="images per prompt (overrides the preset)")
    add_sampling_flags(p, [("--guidance", "guidance scale")])
    p.add_argument("--batch", type=int, default=100, help="images generated at once")
    p.add_argument("--baseline", choices=("real",), default=None, help="score, instead of generated images, "
                   "the suite's own scenes reconstructed by the run's tokenizer (the ceiling on this latent)")
    p = add_command(sub, "gedit", cmd_gedit, "mini-GEdit of an edit run (adherence by the detector, consistency PSNR)")
    p.add_argument("--ckpt", required=True, help="edit run folder or its edit.pt")
    p.add_argument("--preset", choices=list(W.GEDIT_SIZES), default=None,
                   help="suite size: tiny (tests), cpu, world (default: the run's preset)")
    p.add_argument("--edits", type=int, default=None, help="edits per category (overrides the preset)")
    add_sampling_flags(p, [("--guidance-text", "instruction guidance"), ("--guidance-image", "source-image guidance")])
    p.add_argument("--batch", type=int, default=64, help="edits at once")
    p.add_argument("--grid", default=None, help="also write a PNG of two edits per category")
    p.add_argument("--baseline", choices=("source", "target"), default=None, help="score, instead of the "
                   "edits, the source (ignoring the instruction) or the exact target (a perfect editor), each "
                   "reconstructed by the run's tokenizer")
    p = add_command(sub, "table4-gen", cmd_table4_gen,
                    "Table 4's right half: the same generator and editor on every latent")
    p.add_argument("--preset", choices=list(GEN_SIZES), default="cpu", help="generator / editor preset and sizes")
    p.add_argument("--runs", default=None, help="the table4 run folder (default runs/table4-<preset>)")
    p.add_argument("--results", default=os.path.join("results", "generation"), help="folder for the table and figures")
    p.add_argument("--budget", type=int, default=None, help="generator steps per latent (default: the preset's)")
    p.add_argument("--edit-budget", type=int, default=None, help="editor steps per latent (default: the preset's; "
                   "0: no editor, the GEdit columns left empty)")
    p.add_argument("--every", type=int, default=None, help="generator steps between the small suite's "
                   "evaluations, Figure 7's points (default: the preset's)")
    p.add_argument("--recipes", default=None, help="comma-separated subset of the latents, e.g. psvae,rae")
    p.add_argument("--patch", type=int, default=None, help="the generators' patch size (default: the preset's; "
                   "the cpu tables before 2026-12-08 used 1)")
    p.add_argument("--no-head-ablation", dest="head_ablation", action="store_false",
                   help="leave out Table 1's rows (PS-VAE and RAE without the DDT head)")
    p.add_argument("--seed", type=int, default=0, help="training seed of the generators and editors (another seed "
                   "trains new ones, in gen-*-seed<N>/; the suites' prompts and noise stay the same)")
    p.add_argument("--tokenizer-seed", type=int, default=0, help="use the latents that `table4 --seed N` trained "
                   "(<recipe>-seed<N>/) instead of the first ones")
    p.add_argument("--jobs", type=int, default=2, help="latents trained at a time")
    p.add_argument("--threads", type=int, default=None, help="threads per job (default cpu_count / jobs)")
    add_speed_args(p)  # passed to every generator and editor of the table


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.command_line = None if argv is None else list(argv)[1:]
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad paths / inputs: one sentence, no traceback
        sys.exit(f"error: {e}")
    if args.json:
        write_text(args.json, json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
