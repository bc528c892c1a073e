"""experiments/gen_vs_ceiling.py -- how much of its tokenizer's GenEval ceiling a generator reaches
(results/generation/gen_vs_ceiling.md, .json and .png). Not part of the method: a measurement of
whether the generators' scores follow what their latents let through.

Each input is a folder of experiments/recipe.py records (its --results) made on one set of
tokenizers. For every latent it holds the ceiling (ceiling_<latent>_real.json: the suite's real
scenes through the tokenizer) and the generator of one lever at one budget
(<lever>_<latent>_f<flops>_seed<seed>.json). A row per (folder, latent): both scores and their
ratio. If the generators follow their ceilings, longer-trained tokenizers lift the generators too.

    python experiments/gen_vs_ceiling.py --lever patch2 --flops 1e14 \\
        --folders results/generation/recipe:"tokenizers 1200" results/generation/recipe_long/recipe:"2400 / 4800"
"""
import argparse
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate as E  # noqa: E402
from experiments import recipe  # noqa: E402  (its run and ceiling file names)


def pair(folder, latent, lever, flops, seed):
    """(ceiling record, generator record) of one latent in one recipe folder, or None where one is missing."""
    paths = (recipe.ceiling_path(folder, latent),
             os.path.join(folder, recipe.run_name(lever, latent, flops, seed) + ".json"))
    return tuple(json.load(open(p)) for p in paths) if all(map(os.path.isfile, paths)) else None


def row(label, latent, ceil, gen):
    """One table row: the ceiling and the generator, GenEval rules (+- s.e.), strict and gFID."""
    return dict(tokenizers=label, latent=latent, ceiling=ceil["overall_geneval_rules"],
                ceiling_se=ceil["overall_geneval_rules_stderr"], ceiling_strict=ceil["overall"],
                generator=gen["geneval_rules"], generator_se=gen["geneval_rules_se"],
                generator_strict=gen["geneval_strict"], gfid=gen["gfid"], ratio=gen["geneval_rules"] /
                max(ceil["overall_geneval_rules"], 1e-9), steps=gen["steps"], batch=gen["batch"], flops=gen["flops"])


def write(out, rows, command):
    """<out>.md and .json from the rows; <out>.png: generator against ceiling, one point per row."""
    with open(out + ".json", "w") as f:
        json.dump(dict(command=command, rows=rows), f, indent=1)
    lines = ["# How much of its tokenizer's ceiling a generator reaches", "",
             f"`{command}`. Ceiling: the cpu suite's real scenes through the latent's tokenizer; generator: the lever's "
             "generator on that latent, both judged by mini-GenEval (rules, strict; +- s.e. over prompts). Ratio: "
             "generator / ceiling (rules).", "",
             "| tokenizers | latent | ceiling: rules | strict | generator: rules | strict | gFID | ratio | "
             "steps x batch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tokenizers']} | {r['latent']} | {r['ceiling']:.3f} +- {r['ceiling_se']:.3f} | "
                     f"{r['ceiling_strict']:.3f} | {r['generator']:.3f} +- {r['generator_se']:.3f} | "
                     f"{r['generator_strict']:.3f} | {r['gfid']:.0f} | {r['ratio']:.2f} | {r['steps']} x {r['batch']} |")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with E.figure(out + ".png", figsize=(5, 4.5)) as (fig, ax):
        for r in rows:
            ax.errorbar(r["ceiling"], r["generator"], r["generator_se"], r["ceiling_se"], marker="o", capsize=3,
                        label=f"{r['latent']}, {r['tokenizers']}")
        top = max(max(r["ceiling"], r["generator"]) for r in rows) * 1.1
        ax.plot([0, top], [0, top], "k--", lw=0.8, label="generator = ceiling")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="ceiling: real scenes through the tokenizer (GenEval rules)",
               ylabel="generator (GenEval rules)")
        ax.legend(fontsize=7)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders", nargs="+", required=True, help="recipe.py --results folders, each as FOLDER:LABEL")
    p.add_argument("--lever", default="patch2", help="the training lever whose generators are compared")
    p.add_argument("--flops", type=float, default=1e14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latents", default="psvae,rae")
    p.add_argument("--out", default=os.path.join("results", "generation", "gen_vs_ceiling"), help="path without suffix")
    a = p.parse_args(argv)
    rows = []
    for spec in a.folders:
        folder, _, label = spec.partition(":")
        for latent in a.latents.split(","):
            both = pair(folder, latent, a.lever, a.flops, a.seed)
            if both is None:
                print(f"{folder}: no ceiling or no {a.lever} record for {latent} at {a.flops:.0e}; left out")
            else:
                rows.append(row(label or folder, latent, *both))
    if not rows:
        raise SystemExit("no (ceiling, generator) pair found")
    command = "python experiments/gen_vs_ceiling.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return write(a.out, rows, command)


if __name__ == "__main__":
    main()
