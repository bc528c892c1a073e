"""experiments/judge_blur.py -- is a tokenizer's GenEval ceiling set by what it loses, or by how the
judge reads any soft image? (results/generation/judge_blur.md, .json and .png). Not part of the
method: a measurement of the judge, beside experiments/ceilings.py.

mini-GenEval's real held-out scenes (each satisfies its prompt) are blurred by a Gaussian of sigma
pixels, a loss of detail with no other error, and judged by the detector as a generated image is.
Each blur gives a PSNR against the clean scene and a GenEval score, a curve. A tokenizer's ceiling
(ceilings.json: the same scenes through its decoder) sits on the curve if its loss is like blur; below
it if the decoder makes errors blur does not (wrong shapes, colours, smeared objects).

    python experiments/judge_blur.py --ceilings results/generation/ceilings.json
"""
import argparse
import json
import os
import sys

import numpy as np
import scipy.ndimage as ndi
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as C  # noqa: E402
import evaluate as E  # noqa: E402
import world as W  # noqa: E402


def blur(img, sigma):
    """uint8 (H, W, 3) -> the same blurred by a Gaussian of sigma pixels in each image axis."""
    return img if sigma == 0 else ndi.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0), mode="nearest")


def judged(sigma, suite, per_cat, size):
    """GenEval (rules and strict, per category) of the suite's real scenes blurred by sigma, their mean PSNR
    against the clean scenes, and the read-back of their objects (the shares Table 4 reports)."""
    rules, strict, psnrs, images, scenes = [], [], [], [], []
    for k, (c, _, spec) in enumerate(suite):
        scene = W.caption_scene(W.scene_seed("test", k % per_cat), c)[0]
        clean = W.render(scene, size)
        soft = np.clip(np.round(blur(clean, sigma)), 0, 255).astype(np.uint8)
        desc = W.detect(soft)
        rules.append(W.check_caption_geneval_rules(desc, spec)), strict.append(W.check_caption(desc, spec))
        psnrs.append(C.psnr(W.to_tensor(soft)[None], W.to_tensor(clean)[None]).item())
        images.append(W.to_tensor(soft)), scenes.append(scene)
    rules, strict = np.asarray(rules, float), np.asarray(strict, float)
    cats = W.CAPTION_CATEGORIES
    return {"sigma": sigma, "psnr": float(np.mean(psnrs)), "rules": rules.mean(),
            "rules_se": rules.std(ddof=1) / len(rules) ** 0.5, "strict": strict.mean(),
            "strict_se": strict.std(ddof=1) / len(strict) ** 0.5,
            "per_category": dict(zip(cats, rules.reshape(len(cats), per_cat).mean(1).tolist())),
            **E.read_back(torch.stack(images), scenes)}


def write_table(path, res):
    """judge_blur.md from the JSON alone: the blur curve, then each tokenizer's ceiling beside the blur of its PSNR."""
    lines = ["# The judge against blur: GenEval of real scenes blurred, beside each tokenizer's ceiling", "",
             f"`{res['command']}`. The suite: mini-GenEval ({res['preset']}), {res['n_prompts']} prompts, each one "
             f"held-out real scene that satisfies it, at {res['size']} px, blurred by a Gaussian of sigma px; +- s.e. "
             f"over prompts. read: the detector's read-back of the objects (shares of matched objects). Machine: "
             f"{res['machine']['cpu']}.", "",
             "| sigma px | PSNR dB | rules | strict | read: count | shape | colour | texture | size |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["blur"]:
        lines.append(f"| {r['sigma']:g} | {r['psnr']:.2f} |" if r["sigma"] else "| 0 | clean |")
        lines[-1] += (f" {r['rules']:.3f} +- {r['rules_se']:.3f} | {r['strict']:.3f} "
                      f"+- {r['strict_se']:.3f} | {r['read_count']:.2f} | {r['read_shape']:.2f} | "
                      f"{r['read_colour']:.2f} | {r['read_texture']:.2f} | {r['read_size']:.2f} |")
    if res["tokenizers"]:
        lines += ["", f"Each tokenizer's ceiling ({res['ceilings']}) against the blur of the same PSNR (the curve "
                  "interpolated in PSNR):", "", "| tokenizer | PSNR dB | ceiling: rules | blur of that PSNR: rules |",
                  "|---|---|---|---|"]
        for t in res["tokenizers"]:
            blurred = f"{t['blur_rules']:.3f}" if t["blur_rules"] is not None else "beyond the blurs' PSNR"
            lines.append(f"| {t['row']} ({t['run']}) | {t['psnr']:.2f} | {t['rules']:.3f} +- {t['rules_se']:.3f} | "
                         f"{blurred} |")
    return C.write_text(path, "\n".join(lines) + "\n")


def plot(path, res):
    """judge_blur.png: GenEval (rules) against PSNR, the blur curve and each tokenizer's ceiling as a point."""
    with E.figure(path, 1, 1, figsize=(6, 4)) as (fig, ax):
        b = res["blur"][1:]  # sigma 0 has infinite PSNR
        ax.errorbar([r["psnr"] for r in b], [r["rules"] for r in b], [r["rules_se"] for r in b], marker="s",
                    capsize=3, c="C1", label="real scenes, blurred (sigma px labelled)")
        for r in b:
            ax.annotate(f"{r['sigma']:g}", (r["psnr"], r["rules"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for t in res["tokenizers"]:
            ax.errorbar(t["psnr"], t["rules"], t["rules_se"], marker="o", capsize=3, c="C0")
            ax.annotate(t["row"], (t["psnr"], t["rules"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax.axhline(res["blur"][0]["rules"], c="grey", ls=":", label=f"clean scenes ({res['blur'][0]['rules']:.2f})")
        ax.plot([], [], "o", c="C0", label="through a tokenizer (its ceiling)")
        ax.set(xlabel="PSNR against the clean scene (dB)", ylabel="GenEval (rules)", ylim=(0, 1.05),
               title="The judge against blur, and the tokenizers' ceilings")
        ax.legend(fontsize=7)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=tuple(W.GENEVAL_SIZES), help="the mini-GenEval suite's size")
    p.add_argument("--size", type=int, default=64, help="image size in px (the cpu tokenizers')")
    p.add_argument("--sigmas", default="0,0.5,1,1.4,2,2.8,4,5.6", help="Gaussian blurs in px")
    p.add_argument("--ceilings", default=None, help="ceilings.json (experiments/ceilings.py) to set beside the curve")
    p.add_argument("--results", default=os.path.join("results", "generation"), help="judge_blur.md/.json/.png here")
    a = p.parse_args(argv)
    per_cat = W.GENEVAL_SIZES[a.preset][0]
    suite = W.geneval_suite(per_cat)
    curve = [judged(float(s), suite, per_cat, a.size) for s in a.sigmas.split(",")]
    toks = []
    if a.ceilings:
        xs = [r["psnr"] for r in curve[1:]][::-1]  # increasing PSNR for np.interp
        ys = [r["rules"] for r in curve[1:]][::-1]
        toks = [{**{k: t[k] for k in ("row", "run", "psnr", "rules", "rules_se")},
                 "blur_rules": float(np.interp(t["psnr"], xs, ys)) if xs[0] <= t["psnr"] <= xs[-1] else None}
                for t in json.load(open(a.ceilings))["rows"]]
    res = {"command": "python experiments/judge_blur.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "preset": a.preset, "size": a.size, "n_prompts": len(suite), "machine": C.machine(), "blur": curve,
           "ceilings": a.ceilings, "tokenizers": toks}
    os.makedirs(a.results, exist_ok=True)
    C.write_text(os.path.join(a.results, "judge_blur.json"), json.dumps(res, indent=1))
    out = {"table": write_table(os.path.join(a.results, "judge_blur.md"), res),
           "figure": plot(os.path.join(a.results, "judge_blur.png"), res)}
    print(json.dumps(out), flush=True)
    return res


if __name__ == "__main__":
    main()
