"""experiments/ceilings.py -- how much of GenEval each tokenizer lets through, against how well it
reconstructs (results/generation/ceilings.md, .json and .png). Not part of the method: a measurement
of what bounds the generators' scores at a given tokenizer budget.

The ceiling of a latent: each mini-GenEval prompt's held-out real scene (which satisfies the prompt)
encoded and decoded by the latent's tokenizer, then judged by the detector as a generated image would
be (`evaluate.py geneval --baseline real --tokenizer`). A generator on this latent is judged through
the same decoder, so its score is about bounded by this (not strictly: a generated latent may decode
cleaner than a real scene's). Beside it, the tokenizer's PSNR and rFID from its Table 4 measurement
(measured.json), so that a reader sees whether a better reconstruction lets more of GenEval through.

    python experiments/ceilings.py --runs runs/draws/stage0-seed0 runs/draws/stage0-seed1
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as C  # noqa: E402
import evaluate as E  # noqa: E402

ROWS = {recipe: name for name, recipe, _ in E.TABLE4_ROWS}


def tokenizers(folder):
    """[(row, its run folder)] of a Table 4 run folder: every row measured by `evaluate.py table4`."""
    return [(d.split("-")[0], os.path.join(folder, d)) for d in sorted(os.listdir(folder))
            if d.split("-")[0] in ROWS and os.path.isfile(os.path.join(folder, d, "measured.json"))]


def ceiling(run, preset):
    """mini-GenEval's real scenes through this tokenizer, beside its reconstruction (PSNR, rFID)."""
    ge = E.main(["geneval", "--baseline", "real", "--tokenizer", run, "--preset", preset])
    recon = json.load(open(os.path.join(run, "measured.json")))["recon"]
    stages = json.load(open(os.path.join(run, "config.json"))).values()  # {"stage1": {..., "steps": n}, ...}
    return {"steps": sum(c["steps"] for c in stages), "psnr": recon["psnr"], "rfid": recon["rfid"],
            "rules": ge["overall_geneval_rules"],
            "rules_se": ge["overall_geneval_rules_stderr"], "strict": ge["overall"], "strict_se": ge["overall_stderr"],
            "gfid": ge["gfid"], "per_category": ge["per_category_geneval_rules"], "n_images": ge["n_images"]}


def write_table(path, res):
    """ceilings.md from the JSON alone: a row per tokenizer, then the correlation of ceiling and PSNR."""
    rs = res["rows"]
    lines = ["# The GenEval ceiling each tokenizer sets, against its reconstruction", "",
             f"`{res['command']}`. The suite: mini-GenEval ({res['preset']}), {rs[0]['n_images']} real held-out scenes, "
             "each satisfying its prompt, encoded and decoded by the tokenizer and judged by the detector; +- s.e. over "
             f"prompts. PSNR and rFID: the tokenizer's Table 4 measurement. Machine: {res['machine']['cpu']}.", "",
             "| tokenizer | run | steps | PSNR dB | rFID | ceiling: rules | strict | gFID | rules per category |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rs, key=lambda r: -r["psnr"]):
        cats = ", ".join(f"{k} {v:.2f}" for k, v in r["per_category"].items())
        lines.append(f"| {ROWS[r['row']]} | {r['run']} | {r['steps']} | {r['psnr']:.2f} | {r['rfid']:.0f} | "
                     f"{r['rules']:.3f} +- "
                     f"{r['rules_se']:.3f} | {r['strict']:.3f} +- {r['strict_se']:.3f} | {r['gfid']:.0f} | {cats} |")
    if len(rs) > 2:
        lines += ["", f"Pearson correlation over the {len(rs)} tokenizers: ceiling (rules) with PSNR "
                  f"{res['corr_psnr']:+.2f}; with rFID {res['corr_rfid']:+.2f}."]
    return C.write_text(path, "\n".join(lines) + "\n")


def plot(path, res):
    """ceilings.png: the ceiling (rules, +- s.e.) against PSNR, one point per tokenizer, labelled."""
    with E.figure(path, 1, 1, figsize=(6, 4)) as (fig, ax):
        for r in res["rows"]:
            ax.errorbar(r["psnr"], r["rules"], r["rules_se"], marker="o", capsize=3, c="C0")
            ax.annotate(f"{r['row']}, {r['steps']} steps ({r['run']})", (r["psnr"], r["rules"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="tokenizer PSNR (dB)", ylabel="GenEval (rules) of real scenes through it",
               title="The ceiling a tokenizer sets")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="Table 4 run folders (evaluate.py table4 / draws.py)")
    p.add_argument("--preset", default="cpu", choices=("tiny", "cpu", "world"), help="the mini-GenEval suite's size")
    p.add_argument("--results", default=os.path.join("results", "generation"), help="ceilings.md/.json/.png here")
    a = p.parse_args(argv)
    rows = []
    for folder in a.runs:
        found = tokenizers(folder)
        if not found:
            raise SystemExit(f"ceilings.py: error: {folder} holds no measured tokenizer; make it with "
                             f"`python evaluate.py table4` or experiments/draws.py")
        for row, run in found:
            rows.append({"row": row, "run": os.path.relpath(run, os.path.dirname(os.path.abspath(folder))),
                         **ceiling(run, a.preset)})
    corr = lambda k: float(np.corrcoef([r["rules"] for r in rows], [r[k] for r in rows])[0, 1])  # noqa: E731
    res = {"command": "python experiments/ceilings.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "preset": a.preset, "machine": C.machine(), "rows": rows,
           **({"corr_psnr": corr("psnr"), "corr_rfid": corr("rfid")} if len(rows) > 2 else {})}
    C.write_text(os.path.join(a.results, "ceilings.json"), json.dumps(res, indent=1))
    plot(os.path.join(a.results, "ceilings.png"), res)
    print(write_table(os.path.join(a.results, "ceilings.md"), res), flush=True)
    return res


if __name__ == "__main__":
    main()
