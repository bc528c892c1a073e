"""experiments/flow_where.py -- where a trained generator's flow loss goes, and whether the caption
reaches the image tokens. Not part of the method: the measurement behind the recipe.

On held-out captioned scenes, the velocity error of the EMA generator is split by time step t
(10 bins) and by latent token: tokens under an object (their 8x8 px cell at least a quarter
covered) against background tokens (the world's lines and gradient). Each item is scored with its
own caption, with the null caption and with another item's caption: what the caption is worth
is the loss it saves over the null caption, and a caption that reaches the image beats a wrong
one on the object tokens. Same noise and t for all three.

    python experiments/flow_where.py --ckpt runs/recipe/lm_psvae_f1e+14_seed0 --json out.json
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generator as G  # noqa: E402
import world as W  # noqa: E402

BINS = 10


def object_tokens(scene, size, grid):
    """(grid, grid) bool: latent cells at least a quarter covered by an object."""
    m = W.object_masks(scene, size).any(0).astype(np.float32)
    cell = size // grid
    return torch.from_numpy(m.reshape(grid, cell, grid, cell).mean((1, 3)) >= 0.25)


@torch.no_grad()
def flow_where(ckpt, n=512, batch=64, seed=0):
    """{condition: {"object": [per-bin mse], "background": [...]}} over n held-out items."""
    model, cfg, tok_path = G.load_generator(ckpt)
    tok, shape, size = G.open_tokenizer(tok_path)
    data = W.WorldCaptions("val", n, size)
    sums = {c: {r: torch.zeros(BINS) for r in ("object", "background")} for c in ("caption", "null", "other")}
    counts = {r: torch.zeros(BINS) for r in ("object", "background")}
    mean, std = model.latent_mean, model.latent_std
    for b in range(0, n, batch):
        idx = list(range(b, min(n, b + batch)))
        items = [data.item(i) for i in idx]
        x = torch.stack([W.to_tensor(W.render(s, size)) for s, _, _ in items])
        x0 = (tok.encode(x).float() - mean) / std
        obj = torch.stack([object_tokens(s, size, shape[-1]) for s, _, _ in items])  # (B, h, w)
        eps = G.flow_draws(torch.tensor(idx), x0.shape[1:], seed, 0, 1.0)[0]
        t = torch.rand(len(idx), generator=torch.Generator().manual_seed(seed + b))  # uniform t: every bin filled
        x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
        texts = [c for _, c, _ in items]
        conds = {"caption": texts, "null": [""] * len(texts), "other": texts[1:] + texts[:1]}
        bins = (t * BINS).long().clamp(max=BINS - 1)
        for region, mask in (("object", obj), ("background", ~obj)):
            counts[region].index_add_(0, bins, mask.flatten(1).sum(1).float())
        for c, tx in conds.items():
            ids = model.text.batch(tx, cfg["text_len"])[0]
            err = (model(x_t, t, ids).float() - (eps - x0)).pow(2).mean(1)  # (B, h, w): per token
            for region, mask in (("object", obj), ("background", ~obj)):
                sums[c][region].index_add_(0, bins, (err * mask).flatten(1).sum(1))
    out = {c: {r: (sums[c][r] / counts[r].clamp(min=1)).tolist() for r in sums[c]} for c in sums}
    out["object_share"] = (counts["object"] / (counts["object"] + counts["background"])).mean().item()
    out["bins"] = [(i / BINS, (i + 1) / BINS) for i in range(BINS)]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a generator run folder")
    p.add_argument("--n", type=int, default=512, help="held-out captioned scenes")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    res = flow_where(a.ckpt, a.n)
    for region in ("object", "background"):
        print(region, "t-bin:   " + " ".join(f"{lo:.1f}-{hi:.1f}" for lo, hi in res["bins"]))
        for c in ("caption", "null", "other"):
            print(f"  {c:8s}", " ".join(f"{v:7.3f}" for v in res[c][region]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ckpt": a.ckpt, **res}, f, indent=1)
    return res


if __name__ == "__main__":
    main()
