"""experiments/table1_fusion.py -- Table 1 of the paper (Sec. 3.4, Figure 6): which deep-fusion design
the text-to-image generator should have, in miniature (results/generation/table1_fusion.md). Not part
of the method: a measurement.

The paper's four rows, each a set of generator.py flags: LlamaFusion (the language model's layers
frozen, a parallel image branch of the same layers, one joint attention per layer), Bagel's mixture
of transformers (the same two branches, both trained), Transfusion (one set of layers for text and
image tokens), each with a linear read-out (--head none), and Transfusion with the wide DDT head
(--head ddt, the project's default). Every row starts from the same pre-trained LM (the caption LM
of generator.py section 7; the paper: Qwen2.5-0.5B), trains on the same latent for the same number
of samples (the paper compares at equal steps; one batch size makes that equal samples) and is scored
by mini-GenEval (GenEval's rules and strict, +- s.e. over prompts) and the generation FID. Finished
rows are reused: a killed table continues where it stopped.

    python experiments/table1_fusion.py --runs runs/table4-cpu --jobs 2
    python experiments/table1_fusion.py --preset tiny --tokenizer RUN/stage1.pt --samples 32    # seconds
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate as E  # noqa: E402
import generator as G  # noqa: E402
import tokenizer as T  # noqa: E402
from experiments.bench import train_step_flops  # noqa: E402

# row -> (the paper's name, generator.py flags, the paper's GenEval, the paper's parameter count)
ROWS = {
    "llamafusion": ("LlamaFusion", ["--fusion", "llamafusion", "--head", "none"], 0.524, "857M"),
    "bagel": ("Bagel (mixture of transformers)", ["--fusion", "bagel", "--head", "none"], 0.763, "857M"),
    "transfusion": ("Transfusion", ["--fusion", "transfusion", "--head", "none"], 0.752, "500M"),
    "transfusion_ddt": ("Transfusion + wide DDT head", ["--fusion", "transfusion", "--head", "ddt"], 0.762, "653M"),
}


def row_sizes(flags, latent_shape, preset, lm):
    """(trained parameters, all parameters, model FLOPs of one training sample) of the generator these
    flags build. (recipe.flops_per_sample builds Transfusion only: the fusion flag is counted here.)
    Each token passes one branch, so Bagel's forward costs what Transfusion's does, with twice the
    layers; LlamaFusion's backward skips the frozen LM's weight gradients."""
    cfg = G.parse_args(["--preset", preset, "--lm", lm or "none", *flags])
    model = G.build_model({**cfg, "lm": lm}, latent_shape)  # (lm: a folder, or None)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    x0, eps = torch.randn(2, *latent_shape), torch.randn(2, *latent_shape)
    ids = torch.randint(1, model.embed_tokens.num_embeddings, (2, cfg["text_len"]))
    return trained, total, train_step_flops(model, x0, ids, torch.rand(2), eps) / 2


def table1_job(job):
    """Train one row to its step budget (a killed run resumes), then score it. -> the record."""
    if os.path.isfile(job["record"]):
        rec = json.load(open(job["record"]))
        if any(rec[k] != job[k] for k in ("tokenizer_sha1", "lm", "flags")):
            raise ValueError(f"{job['record']} was made with another tokenizer, LM or flags; give this run its own "
                             f"--results (and --out)")
        return rec
    t0, ckpt = time.time(), os.path.join(job["out"], "generator.pt")
    os.makedirs(job["out"], exist_ok=True)
    with open(os.path.join(job["out"], "table1.log"), "a") as log, E.contextlib.redirect_stdout(log), \
            E.contextlib.redirect_stderr(log), E.num_threads(job["threads"]):
        if E.trained_steps(ckpt) < job["steps"]:
            G.main(job["argv"] + (["--resume"] if os.path.isfile(ckpt) else []))
        trained = time.time() - t0
        ge = E.cmd_geneval(argparse.Namespace(**{**E.GEN_EVAL_DEFAULTS, "ckpt": job["out"], "preset": job["preset"]}))
    keys = ("row", "design", "flags", "preset", "latent", "tokenizer", "tokenizer_sha1", "lm", "seed", "steps",
            "batch", "params_trained", "params_total", "flops_per_sample", "paper_geneval", "paper_params")
    rec = {k: job[k] for k in keys}
    rec.update(samples=job["steps"] * job["batch"], train_seconds=round(trained, 1),
               geneval_rules=ge["overall_geneval_rules"], geneval_rules_se=ge["overall_geneval_rules_stderr"],
               geneval_strict=ge["overall"], geneval_strict_se=ge["overall_stderr"], gfid=ge["gfid"],
               per_category=ge["per_category_geneval_rules"], n_images=ge["n_images"])
    with open(job["record"] + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(job["record"] + ".tmp", job["record"])  # atomic: a killed job leaves no half record
    return rec


def millions(n):
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def write_table(path, records, command):
    """table1_fusion.md: per (preset, latent, samples, seed), one line per design, from every record so far."""
    lines = ["# Table 1: the deep-fusion design of the generator, in miniature", "",
             f"Made by `experiments/table1_fusion.py` from the records in [{os.path.basename(path)[:-3]}/]"
             f"({os.path.basename(path)[:-3]}/) (the last call: `{command}`). Each design starts from the same "
             "pre-trained caption LM (the paper: Qwen2.5-0.5B) and trains on the same latent for the same number of "
             "samples (the paper: equal steps). The paper trains these on VA-VAE, a VAE aligned to a representation "
             "encoder's semantics; this project has no VA-VAE, and the PS-VAE latent, semantic and compact by "
             "construction, stands in for it (it is also the latent the paper's final generator uses). GenEval: the "
             "preset's mini-GenEval suite, GenEval's rules and strict, +- s.e. over prompts (the paper's number is "
             "GenEval's rules); gFID: the suite's images against the real held-out scenes its captions describe "
             "(world features, lower is better). Parameters: trained / all (LlamaFusion's frozen LM counts only in "
             "the second; the paper's count is all of them). The loss reads the image tokens only, so Bagel's "
             "language branch learns only through the keys and values that image tokens read.", ""]
    for key in sorted({(r["preset"], r["latent"], r["samples"], r["seed"]) for r in records}):
        rs = {r["row"]: r for r in records if (r["preset"], r["latent"], r["samples"], r["seed"]) == key}
        first = next(iter(rs.values()))
        lines += [f"## {key[0]} preset, {key[1]} latent, {key[2]} samples per design ({first['steps']} steps x "
                  f"{first['batch']}), seed {key[3]}", "",
                  "| design | flags | parameters (trained / all) | training GFLOP / sample | GenEval rules | "
                  "GenEval strict | gFID | paper: GenEval / parameters |", "|---|---|---|---|---|---|---|---|"]
        for row in ROWS:
            if row in rs:
                r = rs[row]
                lines.append(f"| {r['design']} | `{' '.join(r['flags'])}` | {millions(r['params_trained'])} / "
                             f"{millions(r['params_total'])} | {r['flops_per_sample'] / 1e9:.3g} | "
                             f"{r['geneval_rules']:.3f} +- {r['geneval_rules_se']:.3f} | {r['geneval_strict']:.3f} +- "
                             f"{r['geneval_strict_se']:.3f} | {r['gfid']:.1f} | {r['paper_geneval']:.3f} / "
                             f"{r['paper_params']} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=os.path.join("runs", "table4-cpu"), help="a Table 4 run holding <latent>/")
    p.add_argument("--latent", default="psvae", help="the latent of --runs the designs train on")
    p.add_argument("--tokenizer", default=None, help="a tokenizer checkpoint instead of <runs>/<latent>")
    p.add_argument("--preset", choices=("tiny", "cpu", "world"), default="cpu", help="generator.py's and "
                   "mini-GenEval's preset")
    p.add_argument("--lm", default="caption", help="the LM every design starts from (generator.py --lm)")
    p.add_argument("--samples", type=int, default=None, help="training samples of every design (default: the "
                   "preset's steps x batch)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--out", default=os.path.join("runs", "table1-fusion"), help="folder of the generators")
    p.add_argument("--cache", default=os.path.join("runs", "cache"), help="folder of cached latents (generator.py's)")
    p.add_argument("--results", default=os.path.join("results", "generation", "table1_fusion"),
                   help="folder of the records; the table is written beside it as <folder>.md")
    p.add_argument("--jobs", type=int, default=2, help="designs trained at a time (processes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generators' weights, data order and noise")
    a = p.parse_args(argv)
    rows = a.rows.split(",")
    if not set(rows) <= set(ROWS):
        p.error(f"--rows {a.rows!r}: give a comma-separated subset of {','.join(ROWS)}")
    tok = T.last_stage(a.tokenizer or os.path.join(a.runs, a.latent))
    latent = a.latent if a.tokenizer is None else os.path.basename(os.path.dirname(os.path.abspath(tok)))
    try:
        shape = tuple(G.open_tokenizer(tok)[1])
    except G.GeneratorError as e:
        p.error(f"{e} (or --runs with a {a.latent}/ folder)")
    pre = G.PRESETS[a.preset]
    batch = pre["batch_size"]
    steps = math.ceil((a.samples or pre["steps"] * batch) / batch)
    lm = G.resolve_lm({"lm": a.lm, "model": pre["model"]}, torch.device("cpu"))  # made once, before the jobs
    speed, _ = E.table_speed(argparse.Namespace(amp="auto", compile="auto", device="cpu"), steps)
    os.makedirs(a.results, exist_ok=True)
    jobs, name = [], f"{latent}_{a.preset}_s{steps * batch}_seed{a.seed}"
    for row in rows:
        design, flags, paper_geneval, paper_params = ROWS[row]
        trained, total, fps = row_sizes(flags, shape, a.preset, lm)
        out = os.path.join(a.out, f"{row}_{name}")
        jobs.append(dict(row=row, design=design, flags=flags, preset=a.preset, latent=latent, tokenizer=tok,
                         tokenizer_sha1=G.file_hash(tok), lm=lm, seed=a.seed, steps=steps, batch=batch,
                         params_trained=trained, params_total=total, flops_per_sample=fps, paper_geneval=paper_geneval,
                         paper_params=paper_params, out=out, record=os.path.join(a.results, f"{row}_{name}.json"),
                         threads=max(1, (os.cpu_count() or 1) // a.jobs),
                         argv=["--preset", a.preset, "--tokenizer", tok, "--out", out, "--steps", str(steps),
                               "--seed", str(a.seed), "--lm", lm or "none", "--cache", a.cache, "--n-samples", "0",
                               *speed, *flags]))
    todo = [j for j in jobs if not os.path.isfile(j["record"])]
    if a.jobs > 1 and len(todo) > 1:  # the latents cached once here (0 steps): two runs making it at once would race
        G.main(["--preset", a.preset, "--tokenizer", tok, "--out", os.path.join(a.out, "cache-latents"), "--cache",
                a.cache, "--steps", "0", "--lm", "none", "--n-samples", "0"])
    print(f"{len(jobs)} designs x {steps} steps x batch {batch} on {tok}, {a.jobs} at a time", flush=True)
    t0 = time.time()
    records = E.run_jobs(jobs, a.jobs, table1_job)
    for r in records:
        print(f"{r['design']}: GenEval rules {r['geneval_rules']:.3f} +- {r['geneval_rules_se']:.3f}, strict "
              f"{r['geneval_strict']:.3f} +- {r['geneval_strict_se']:.3f}, gFID {r['gfid']:.1f}", flush=True)
    every = [json.load(open(os.path.join(a.results, f))) for f in sorted(os.listdir(a.results)) if f.endswith(".json")]
    command = "python experiments/table1_fusion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = write_table(a.results.rstrip("/\\") + ".md", every, command)
    print(f"{table} ({time.time() - t0:.0f} s)", flush=True)
    return records


if __name__ == "__main__":
    main()
