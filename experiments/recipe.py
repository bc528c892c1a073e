"""experiments/recipe.py -- the generator's training recipe at a fixed budget of training FLOPs
(results/generation/recipe.md). Not part of the method: a measurement that chooses its defaults.

Each lever is one change of generator.py's flags against the cpu recipe. Every lever trains the
same generator on the PS-VAE and on the RAE latent of a Table 4 run for the same training FLOPs
(bench.py's counter: model FLOPs per sample x samples, so that a bigger model pays for its size),
then scores it by mini-GenEval (GenEval rules and strict, standard error over prompts) and the
generation FID in the world's features. A lever is judged by the MEAN over the two latents,
never by one of them, so that the recipe favours no latent. Finished runs are reused: a killed
study continues where it stopped.

    python experiments/recipe.py --runs runs/table4-cpu --flops 1e14 --levers baseline,lm,shift3
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate as E  # noqa: E402
import generator as G  # noqa: E402
import tokenizer as T  # noqa: E402
from experiments.bench import generator_cost  # noqa: E402

# lever -> generator.py flags changed from the cpu recipe the study began with ({cool}: a fifth of the
# run's steps): the cpu preset with patch 1, as it was before this study made patch 2 its default.
# "baseline" is that recipe before the caption LM (random initial weights).
STUDIED = ["--preset", "cpu", "--patch", "1"]
LEVERS = {
    "baseline": ["--lm", "none"],
    "lm": ["--lm", "caption"],  # the caption LM of generator.py section 7
    "shift3": ["--lm", "none", "--shift", "3"],  # training t shifted as sampling's (s = 1.22 by the rule)
    "shift6": ["--lm", "none", "--shift", "6"],
    "lr3e-3_cool": ["--lm", "none", "--lr", "3e-3", "--cooldown", "{cool}"],
    "cool": ["--lm", "none", "--cooldown", "{cool}"],
    "bs16": ["--lm", "none", "--batch-size", "16"],
    "bs16_lr2e-3": ["--lm", "none", "--batch-size", "16", "--lr", "2e-3"],
    "patch2": ["--lm", "none", "--patch", "2"],  # 2x2 latent cells per image token: a quarter of the tokens
    "nohead": ["--lm", "none", "--head", "none"],
    "lm_shift3": ["--lm", "caption", "--shift", "3"],
    "lm_shift3_cool": ["--lm", "caption", "--shift", "3", "--cooldown", "{cool}"],
    "wide": ["--lm", "none", "--model", "cpu-l"],  # 2.5x the parameters: fewer samples for the same FLOPs
    "ema0.999": ["--lm", "none", "--ema", "0.999"],  # the cpu recipe's EMA decay is 0.995
    "ema0.98": ["--lm", "none", "--ema", "0.98"],
    "wd0.1": ["--lm", "none", "--weight-decay", "0.1"],
    "beta2_0.99": ["--lm", "none", "--beta2", "0.99"],
    "capdrop0.2": ["--lm", "none", "--caption-dropout", "0.2"],  # the cpu recipe drops 10% of the captions
    "capdrop0.05": ["--lm", "none", "--caption-dropout", "0.05"],
    "tloc0.5": ["--lm", "none", "--t-loc", "0.5"],  # training t nearer the noise, where the objects' loss is
    "tloc-0.5": ["--lm", "none", "--t-loc", "-0.5"],
    "tscale1.6": ["--lm", "none", "--t-scale", "1.6"],  # more weight on both ends
    "patch2_lm": ["--lm", "caption", "--patch", "2"],
}
# Levers of the sampler, not of training: they score the generators a training lever made (named
# first; run it before) with other sampling settings, so they cost no training FLOPs.
EVAL_LEVERS = {
    "guidance1": ("baseline", dict(guidance=1.0)),  # no guidance: the conditional velocity alone
    "guidance3": ("baseline", dict(guidance=3.0)),
    "guidance10": ("baseline", dict(guidance=10.0)),
    "steps25": ("baseline", dict(steps=25)),
    "steps100": ("baseline", dict(steps=100)),
    "patch2_guidance1": ("patch2", dict(guidance=1.0)),
    "patch2_guidance3": ("patch2", dict(guidance=3.0)),
}
LATENTS = ("psvae", "rae")


def trained_lever(lever):
    """The training lever whose generators a lever scores: itself, or a sampler lever's base."""
    return EVAL_LEVERS.get(lever, (lever, {}))[0]


def flops_per_sample(flags, latent_shape):
    """Model FLOPs of one training sample (forward + backward) of the generator these flags build."""
    a = G.parse_args([*STUDIED, *[f.replace("{cool}", "0") for f in flags]])
    cfg = dict(model=a["model"], patch=a["patch"], text_len=a["text_len"], head=a["head"], lm=None)
    return generator_cost(cfg, latent_shape)[1]


def recipe_job(job):
    """Train one (lever, latent) generator to its step budget, then score it. -> the record."""
    path = job["record"]
    if os.path.isfile(path):
        return json.load(open(path))
    t0 = time.time()
    os.makedirs(job["out"], exist_ok=True)
    with open(os.path.join(job["out"], "recipe.log"), "a") as log, E.contextlib.redirect_stdout(log), \
            E.contextlib.redirect_stderr(log), E.num_threads(job["threads"]):
        if job["sampling"]:  # a sampler lever scores its training lever's generator: train nothing
            if E.trained_steps(os.path.join(job["out"], "generator.pt")) < job["steps"]:
                raise SystemExit(f"{job['lever']} scores {job['out']}: train its lever first")
        elif E.trained_steps(os.path.join(job["out"], "generator.pt")) < job["steps"]:
            G.main(job["argv"] + (["--resume"] if os.path.isfile(os.path.join(job["out"], "generator.pt")) else []))
        trained = time.time() - t0
        ge = E.cmd_geneval(argparse.Namespace(**{**E.GEN_EVAL_DEFAULTS, "ckpt": job["out"], "preset": "cpu",
                                                 "images": job.get("images"), **job["sampling"]}))
    rec = {k: job[k] for k in ("lever", "latent", "flags", "steps", "batch", "flops_per_sample", "flops", "sampling")}
    rec.update(samples=job["steps"] * job["batch"], train_seconds=round(trained, 1),
               geneval_rules=ge["overall_geneval_rules"], geneval_rules_se=ge["overall_geneval_rules_stderr"],
               geneval_strict=ge["overall"], geneval_strict_se=ge["overall_stderr"], gfid=ge["gfid"],
               gfid_se=ge["gfid_stderr"],
               per_category=ge["per_category_geneval_rules"], n_images=ge["n_images"])
    with open(path, "w") as f:
        json.dump(rec, f, indent=1)
    return rec


def run_name(lever, latent, flops, seed):
    """The name of one run: its generator's folder in --out, its record <name>.json in --results."""
    return f"{lever}_{latent}_f{flops:.0e}_seed{seed}"


def ceiling_path(results, latent):
    return os.path.join(results, f"ceiling_{latent}_real.json")


def ceiling(results, latent, ckpt):
    """What a perfect generator on this latent could score: the suite's own real scenes through the latent's
    tokenizer (evaluate.py geneval --baseline real on a generator of the latent), measured once per latent."""
    path = ceiling_path(results, latent)
    if not os.path.isfile(path):
        with E.num_threads(1):
            ge = E.cmd_geneval(argparse.Namespace(**{**E.GEN_EVAL_DEFAULTS, "ckpt": ckpt, "preset": "cpu",
                                                     "baseline": "real"}))
        with open(path, "w") as f:
            json.dump(ge, f, indent=1)
    return json.load(open(path))


def gfid(r):
    """A record's gFID, with its s.e. where it has one (records made before the s.e. was measured do not)."""
    return f"{r['gfid']:.0f}" + (f" +- {r['gfid_se']:.0f}" if "gfid_se" in r else "")


def write_table(path, records, command, ceilings=None):
    """recipe.md: per budget, one row per lever with each latent's scores and their mean (the
    criterion), from every record written so far; then each latent's ceiling ({latent: geneval record})."""
    lines = ["# The generator's recipe at equal training FLOPs", "",
             "Made by `experiments/recipe.py` from the records in [recipe/](recipe/) (the last call: "
             f"`{command}`). Each lever changes the cpu recipe's flags as shown and trains the same generator on the "
             "PS-VAE and on the RAE latent of one Table 4 run for the same model FLOPs (bench.py's counter). GenEval: "
             "the cpu suite, 300 prompts x 2 images (unless the flags say more), GenEval's rules and strict, +- s.e. "
             "over prompts; gFID: the suite's images against the real held-out scenes its captions describe (world "
             "features, lower is better; +- its bootstrap s.e. over images where measured). Mean: over the two "
             "latents (its s.e. from both), the criterion.", ""]
    for budget in sorted({r["budget"] for r in records.values()}):
        lines += [f"## {budget:.2g} training FLOPs per run", "",
                  "| lever | flags | steps x batch | " + " | ".join(f"{la}: rules / strict / gFID" for la in LATENTS) +
                  " | mean rules | mean strict | mean gFID |", "|---|---|---|" + "---|" * (len(LATENTS) + 3)]
        for lever in [*LEVERS, *EVAL_LEVERS]:
            rs = [records.get((lever, la, budget)) for la in LATENTS]
            if not any(rs):
                continue
            cells = [f"{r['geneval_rules']:.3f} +- {r['geneval_rules_se']:.3f} / {r['geneval_strict']:.3f} +- "
                     f"{r['geneval_strict_se']:.3f} / {gfid(r)}" if r else "no record" for r in rs]
            mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
            se = lambda k: sum(r[k] ** 2 for r in rs) ** 0.5 / len(rs)  # noqa: E731
            first = next(r for r in rs if r)
            means = (f"{mean('geneval_rules'):.3f} +- {se('geneval_rules_se'):.3f} | {mean('geneval_strict'):.3f} +- "
                     f"{se('geneval_strict_se'):.3f} | {mean('gfid'):.0f}") if all(rs) else "- | - | -"  # no mean of one
            sampled = "".join(f"; sampled with {k} {v}" for k, v in first.get("sampling", {}).items())
            images = f"; {first['n_images']} images" if first["n_images"] != 600 else ""
            flags = " ".join(first["flags"]) + sampled + images
            lines.append(f"| {lever} | `{flags}` | {first['steps']} x {first['batch']} | " +
                         " | ".join(cells) + f" | {means} |")
        lines.append("")
    if ceilings:
        lines += ["## The ceiling: the suite's real scenes through each latent's tokenizer", "",
                  "No generator: each prompt's held-out real scene (which satisfies it) encoded and decoded by the "
                  "latent's tokenizer, then judged as a generated image (`evaluate.py geneval --baseline real`). A "
                  "generator of this latent is judged through the same decoder, so this is about what it can reach "
                  "(not a strict bound: a generated image may decode cleaner than a real scene's reconstruction).", "",
                  "| latent | rules | strict | gFID | rules per category |", "|---|---|---|---|---|"]
        for la, c in ceilings.items():
            cats = ", ".join(f"{k} {v:.2f}" for k, v in c["per_category_geneval_rules"].items())
            lines.append(f"| {la} | {c['overall_geneval_rules']:.3f} +- {c['overall_geneval_rules_stderr']:.3f} | "
                         f"{c['overall']:.3f} +- {c['overall_stderr']:.3f} | {c['gfid']:.0f} | {cats} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def plot_curves(path, records, ceilings):
    """recipe.png: GenEval (rules) and gFID against training FLOPs, a panel per latent, a line per training
    lever (sampled as trained), each latent's ceiling as a dashed line; error bars: s.e."""
    with E.figure(path, 2, len(LATENTS), figsize=(5 * len(LATENTS), 7), squeeze=False) as (fig, axes):
        for j, la in enumerate(LATENTS):
            for lever in LEVERS:
                pts = sorted((b, r) for (lv, latent, b), r in records.items() if lv == lever and latent == la)
                if not pts:
                    continue
                xs = [b for b, _ in pts]
                axes[0][j].errorbar(xs, [r["geneval_rules"] for _, r in pts], [r["geneval_rules_se"] for _, r in pts],
                                    marker="o", capsize=3, label=lever)
                axes[1][j].plot(xs, [r["gfid"] for _, r in pts], marker="o", label=lever)
            for i, key in enumerate(("overall_geneval_rules", "gfid")):
                if la in ceilings:
                    axes[i][j].axhline(ceilings[la][key], ls="--", c="k", label="ceiling (real scenes)")
                axes[i][j].set(xscale="log", xlabel="training FLOPs", title=la,
                               ylabel=("GenEval (rules)", "gFID (world features)")[i])
            axes[0][j].legend(fontsize=7)
    return path


def read_records(folder, seed):
    """{(lever, latent, budget): record} of every finished run of this seed in `folder`."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(f"_seed{seed}.json"):  # (flow_where_*.json are the diagnostics, not runs)
            r = json.load(open(os.path.join(folder, name)))
            if "lever" in r:
                out[(r["lever"], r["latent"], float(f"{r['flops']:.1g}"))] = {**r, "budget": float(f"{r['flops']:.1g}")}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=os.path.join("runs", "table4-cpu"), help="a Table 4 run holding psvae/ and rae/")
    p.add_argument("--flops", type=float, default=1e14, help="training FLOPs of every run")
    p.add_argument("--levers", default="baseline,lm,shift3",
                   help=f"comma-separated subset of {','.join([*LEVERS, *EVAL_LEVERS])}")
    p.add_argument("--out", default=os.path.join("runs", "recipe"), help="folder of the generators")
    p.add_argument("--results", default=os.path.join("results", "generation", "recipe"), help="records and table")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--images", type=int, default=None, help="images per GenEval prompt (default: the cpu suite's 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latents", default=",".join(LATENTS),
                   help="the latents trained by this call (two calls may split a lever's latents between them)")
    a = p.parse_args(argv)
    levers = a.levers.split(",")
    if not set(a.latents.split(",")) <= set(LATENTS):
        p.error(f"--latents takes a subset of {','.join(LATENTS)}, not {a.latents}")
    os.makedirs(a.results, exist_ok=True)
    if any("caption" in LEVERS[trained_lever(lv)] for lv in levers):  # the caption LM, made once before the jobs
        G.resolve_lm({"lm": "caption", "model": "cpu"}, torch.device("cpu"))
    jobs = []
    for lever in levers:
        trained, sampling = trained_lever(lever), EVAL_LEVERS.get(lever, (lever, {}))[1]
        for latent in a.latents.split(","):  # alternating latents: the first two jobs cache the two latents side by side
            tok = T.last_stage(os.path.join(a.runs, latent))
            shape = tuple(G.open_tokenizer(tok)[1])
            flags = LEVERS[trained]
            fps = flops_per_sample(flags, shape)
            batch = G.parse_args([*STUDIED, *[f.replace("{cool}", "0") for f in flags]])["batch_size"]
            steps = round(a.flops / (fps * batch))
            flags_run = [f.replace("{cool}", str(steps // 5)) for f in flags]
            speed, _ = E.table_speed(argparse.Namespace(amp="auto", compile="auto", device="cpu"), steps)
            out = os.path.join(a.out, run_name(trained, latent, a.flops, a.seed))
            jobs.append(dict(lever=lever, latent=latent, flags=flags_run, sampling=sampling, steps=steps, batch=batch,
                             flops_per_sample=fps,
                             flops=fps * batch * steps, out=out, threads=1, images=a.images, record=os.path.join(
                                 a.results, run_name(lever, latent, a.flops, a.seed) + ".json"),
                             argv=[*STUDIED, "--tokenizer", tok, "--out", out, "--steps", str(steps),
                                   "--seed", str(a.seed), "--n-samples", "0", *speed, *flags_run]))
    print(f"{len(jobs)} runs of {a.flops:.2g} FLOPs, {a.jobs} at a time", flush=True)
    t0 = time.time()
    records = E.run_jobs(jobs, a.jobs, recipe_job)
    for job in jobs:  # each trained latent's ceiling, measured once
        ceiling(a.results, job["latent"], job["out"])
    ceilings = {la: json.load(open(ceiling_path(a.results, la))) for la in LATENTS  # the other call's latent too
                if os.path.isfile(ceiling_path(a.results, la))}
    command = "python experiments/recipe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    folder, records = os.path.dirname(os.path.abspath(a.results)), read_records(a.results, a.seed)
    table = write_table(os.path.join(folder, "recipe.md"), records, command, ceilings)
    plot_curves(os.path.join(folder, "recipe.png"), records, ceilings)
    print(f"{table} ({time.time() - t0:.0f} s)", flush=True)
    return records


if __name__ == "__main__":
    main()
