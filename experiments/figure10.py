"""experiments/figure10.py -- Figure 10 of the paper (Sec. 4.3) in miniature: does a wider latent gain more from a
larger generator? (results/generation/figure10.md, figure10.png, and the .json every number of them is read from.)
Not part of the method: a measurement.

The paper trains the same text-to-image generator and editor, started from Qwen2.5-0.5B and from Qwen2.5-1.5B, on
PS-VAE latents of 32 and of 96 channels, and finds that the wider latent gains more from the larger generator:
96c GenEval 76.56 -> 78.14 and editing (EditReward) 0.222 -> 0.285, while 32c goes 77.07 -> 77.67 in GenEval and
drops 0.274 -> 0.228 in editing. A narrow latent holds little beyond semantics, and a bigger model has little more
to find in it; a wide one holds the detail a bigger model can learn to draw.

The miniature: two generator sizes (generator.MODELS: the preset's, and its "-l" entry with about 2.5x the
parameters; each starts from its own caption LM, generator.py section 7, as the paper's from its own Qwen) on the
PS-VAE latents of two widths of a Table 4 run (evaluate.py table4: psvae/ holds the tokenizer preset's width, the
channel sweep psvae-c<C>/ the others; 8 and 24 channels at the cpu preset, 3x apart as 32c and 96c). Every run has
the same recipe, seed and training samples (the paper compares at equal steps; one batch size makes that equal
samples), so the larger generator costs more time, not more data. Each run is evaluate.generation_job, as in
`evaluate.py table4-gen`: the generator in chunks of --every steps with the small mini-GenEval suite after each (the
curve), the full suite at the end (GenEval's rules and strict, +- s.e. over prompts), the off-manifold ratio, then
the editor and mini-GEdit (its instruction hit, +- the binomial s.e. over edits). Finished parts are reused: the same
command run again trains nothing, and a killed one continues where it stopped.

    python experiments/figure10.py --preset cpu --runs runs/table4-cpu --channels 8,24 --models cpu,cpu-l --jobs 2
    python experiments/figure10.py --preset tiny --runs RUN --channels 2,8 --results /tmp/f10   # seconds (the tests)
"""
import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import evaluate as E  # noqa: E402
import generator as G  # noqa: E402
import tokenizer as T  # noqa: E402
from experiments.bench import generator_cost  # noqa: E402

# Figure 10: (the paper's latent width, its generator's LM) -> (GenEval, editing EditReward)
PAPER = {("32c", "Qwen2.5-0.5B"): (77.07, 0.274), ("32c", "Qwen2.5-1.5B"): (77.67, 0.228),
         ("96c", "Qwen2.5-0.5B"): (76.56, 0.222), ("96c", "Qwen2.5-1.5B"): (78.14, 0.285)}
PAPER_WIDTHS, PAPER_MODELS = ("32c", "96c"), ("Qwen2.5-0.5B", "Qwen2.5-1.5B")  # narrow, wide; small, large
PAPER_PARAMS = {"Qwen2.5-0.5B": 0.49e9, "Qwen2.5-1.5B": 1.54e9}  # the LMs' parameters (the DDT head not counted)


# ----------------------------------------------------------------------------------------------
# The runs: each width's tokenizer, each model's size, one generation_job per (width, model)

def table4_widths(preset):
    """The PS-VAE widths a Table 4 run of `preset` holds: the tokenizer preset's and the channel sweep's."""
    return sorted(set(E.TABLE4_SIZES[preset]["channels"]) | {T.PRESETS[preset]["latent_channels"]})


def tokenizer_of(runs, preset, C):
    """The PS-VAE checkpoint of C channels in a Table 4 run folder, named as evaluate.cmd_table4 names it (psvae/ for
    the tokenizer preset's width, psvae-c<C>/ for the sweep's); a missing one stops with the command that makes it."""
    folder = os.path.join(runs, "psvae" if C == T.PRESETS[preset]["latent_channels"] else f"psvae-c{C}")
    if not os.path.isfile(os.path.join(folder, "measured.json")):  # (written once the latent is trained and measured)
        raise SystemExit(f"figure10.py: error: {folder} holds no finished PS-VAE tokenizer of {C} channels; make it "
                         f"with `python evaluate.py table4 --preset {preset} --runs {runs}`")
    tok = T.last_stage(folder)
    shape = tuple(G.open_tokenizer(tok)[1])
    if shape[0] != C:
        raise SystemExit(f"figure10.py: error: {tok} makes {shape[0]}-channel latents, not {C}; give --runs a "
                         f"Table 4 run of preset {preset}")
    return tok, shape


def model_size(model, preset, lm, shape):
    """(parameters, model FLOPs of one training sample) of the generator of MODELS[model] on latents of `shape`."""
    pre = G.PRESETS[preset]
    cfg = dict(model=model, patch=pre.get("patch", 1), text_len=pre["text_len"], head="ddt", lm=lm, fusion="transfusion")
    return generator_cost(cfg, shape)


def figure10_job(job):
    """One (width, model) run: evaluate.generation_job with this model's size and LM; -> its result, with the
    generator and editor steps trained by this call (0 when everything was reused)."""
    ckpts = (os.path.join(job["out"], "gen", "generator.pt"),
             os.path.join(job["out"], f"edit-from{job['sizes']['gen_steps']}", "edit.pt"))
    before, t0 = [E.trained_steps(c) for c in ckpts], time.time()
    res = E.generation_job(job)  # job["generator_flags"]: the model's size and LM, for generator.py alone
    trained = [E.trained_steps(c) - b for c, b in zip(ckpts, before)]
    return {**res, "trained_steps": dict(zip(("generator", "editor"), trained)), "call_seconds": time.time() - t0}


def finished(job):
    """Whether a run has nothing left to train: its generator and editor are at their steps."""
    sz = job["sizes"]
    return E.trained_steps(os.path.join(job["out"], "gen", "generator.pt")) >= sz["gen_steps"] and \
        E.trained_steps(os.path.join(job["out"], f"edit-from{sz['gen_steps']}", "edit.pt")) >= sz["edit_steps"]


def train_speed(out):
    """The generator's mean training throughput (samples/s) over its metrics.jsonl records."""
    path = os.path.join(out, "gen", "metrics.jsonl")
    recs = [json.loads(line) for line in open(path)] if os.path.isfile(path) else []
    speeds = [r["samples_per_s"] for r in recs if "samples_per_s" in r]
    return sum(speeds) / len(speeds) if speeds else None


# ----------------------------------------------------------------------------------------------
# The record: every number of the table and the figure, from the jobs' results

def run_record(job, res, batch):
    """The JSON record of one (width, model) run."""
    g, e, paper = res["geneval"], res.get("gedit"), PAPER[job["paper_width"], job["paper_model"]]
    n_edits = e["n_edits"] if e else 0
    hit = e["instruction_hit"] if e else None
    curve = [[int(s) * batch, c["overall_geneval_rules"], c["overall_geneval_rules_stderr"], c["overall"]]
             for s, c in sorted(res["curve"].items(), key=lambda kv: int(kv[0]))]
    return {"width": job["width"], "model": job["model"], "paper_width": job["paper_width"],
            "paper_model": job["paper_model"], "tokenizer": job["tokenizer"], "out": job["out"],
            "params": job["params"], "flops_per_sample": job["flops_per_sample"],
            "samples": job["sizes"]["gen_steps"] * batch, "geneval_rules": g["overall_geneval_rules"],
            "geneval_rules_se": g["overall_geneval_rules_stderr"], "geneval_strict": g["overall"],
            "geneval_strict_se": g["overall_stderr"], "gfid": g["gfid"], "n_images": g["n_images"],
            "edit_hit": hit, "edit_hit_se": (hit * (1 - hit) / n_edits) ** 0.5 if e else None,
            "edit_adherence": e["adherence"] if e else None, "n_edits": n_edits,
            "off_manifold_ratio": res["off_manifold_ratio"], "off_manifold_se": res["off_manifold_stderr"],
            "curve": curve, "trained_steps": res["trained_steps"], "train_samples_per_s": train_speed(job["out"]),
            "generation_seconds": res["seconds"], "seconds": round(res["call_seconds"], 1),
            "paper_geneval": paper[0], "paper_editing": paper[1]}


def gains(runs, models):
    """Per width: the larger model's score minus the smaller's (s.e.: the two runs' combined), beside the paper's."""
    out = []
    for width in dict.fromkeys(r["width"] for r in runs):
        small, large = (next(r for r in runs if r["width"] == width and r["model"] == m) for m in models)
        d = lambda k: large[k] - small[k] if large[k] is not None and small[k] is not None else None  # noqa: E731
        se = lambda k: (large[k] ** 2 + small[k] ** 2) ** 0.5 if large[k] is not None else None  # noqa: E731
        out.append({"width": width, "paper_width": small["paper_width"],
                    "param_ratio": large["params"] / small["params"],
                    "paper_param_ratio": PAPER_PARAMS[large["paper_model"]] / PAPER_PARAMS[small["paper_model"]],
                    **{k: d(k) for k in ("geneval_rules", "geneval_strict", "edit_hit", "paper_geneval",
                                         "paper_editing")},
                    **{k + "_se": se(k + "_se") for k in ("geneval_rules", "geneval_strict", "edit_hit")}})
    return out


# ----------------------------------------------------------------------------------------------
# The table and the figure: every number from the JSON

def fmt(v, d, se=None):
    """v to d decimals (with its s.e. when given); '-' where there is no value (no editor)."""
    if v is None:
        return "-"
    return f"{v:.{d}f}" + ("" if se is None else f" +- {se:.{d}f}")


def signed(v, d, se=None):
    return "-" if v is None else f"{v:+.{d}f}" + ("" if se is None else f" +- {se:.{d}f}")


def write_table(path, res):
    """figure10.md, from the results JSON `res` alone."""
    m, sz = res["machine"], res["sizes"]
    lines = ["# Figure 10 in miniature: the generator's size on a narrow and a wide latent", "",
             f"Made by `experiments/figure10.py` (`{res['command']}`) in {res['seconds']:.0f} s on {m['cpu']}, "
             f"{m['cores']} cores, GPU: {m['gpu'] or 'none'}, torch {m['torch']}; {res['jobs']} run(s) at a time, "
             f"{res['threads']} thread(s) each; {res['trained']} of {len(res['runs'])} runs trained here, the others "
             f"reused from `{res['out']}`. Precision: {res['precision']}. Tokenizers: the PS-VAE latents of "
             f"`{res['tokenizers']}` (a Table 4 run, preset {res['preset']}). Every run: {sz['gen_steps']} generator "
             f"steps of batch {sz['batch']} ({sz['samples']} samples; the small suite, {sz['prompts']} prompts per "
             f"category, every {sz['every']} steps), then {sz['edit_steps']} editor steps; seed {res['seed']}; each "
             f"model starts from {res['lm_note']}. GenEval: the {sz['n_images']}-image mini-GenEval suite at the end, "
             f"GenEval's rules and strict, +- s.e. over prompts (the paper's number is GenEval's rules, in percent). "
             f"Editing: mini-GEdit's instruction hit over {sz['n_edits']} edits, +- its binomial s.e. (the paper's "
             "is EditReward on GEdit-Bench, another scale: compare directions, not values). Off-manifold: the "
             "top-5% nearest-neighbour distance of generated latents to the training latents over that of held-out "
             "real ones (evaluate.py table4-gen).", "",
             "| latent (paper's) | generator (paper's) | parameters | training GFLOP / sample | GenEval rules | "
             "GenEval strict | editing hit | off-manifold ratio | train samples/s | paper: GenEval / editing |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| C={r['width']} ({r['paper_width']}) | {r['model']} ({r['paper_model']}) | "
                     f"{r['params'] / 1e6:.3f}M | {r['flops_per_sample'] / 1e9:.3f} | "
                     f"{fmt(r['geneval_rules'], 3, r['geneval_rules_se'])} | "
                     f"{fmt(r['geneval_strict'], 3, r['geneval_strict_se'])} | "
                     f"{fmt(r['edit_hit'], 3, r['edit_hit_se'])} | "
                     f"{fmt(r['off_manifold_ratio'], 2, r['off_manifold_se'])} | {fmt(r['train_samples_per_s'], 1)} | "
                     f"{r['paper_geneval']:.2f} / {r['paper_editing']:.3f} |")
    small, large = res["models"]
    lines += ["", f"The larger generator's gain ({large} minus {small}) per latent; the paper's claim is that the "
              "wider latent gains more:", "",
              "| latent (paper's) | parameters, large / small (paper's LMs) | GenEval rules | GenEval strict | "
              "editing hit | paper: GenEval | paper: editing |", "|---|---|---|---|---|---|---|"]
    for g in res["gains"]:
        lines.append(f"| C={g['width']} ({g['paper_width']}) | {g['param_ratio']:.2f}x "
                     f"({g['paper_param_ratio']:.2f}x) | "
                     f"{signed(g['geneval_rules'], 3, g['geneval_rules_se'])} | "
                     f"{signed(g['geneval_strict'], 3, g['geneval_strict_se'])} | "
                     f"{signed(g['edit_hit'], 3, g['edit_hit_se'])} | {signed(g['paper_geneval'], 2)} | "
                     f"{signed(g['paper_editing'], 3)} |")
    lines += ["", "Along the way (the curve of figure10.png): the small suite's GenEval rules against training "
              "samples.",
              "", "| samples | " + " | ".join(f"C={r['width']}, {r['model']}" for r in res["runs"]) + " |",
              "|---|" + "---|" * len(res["runs"])]
    for i, (samples, *_) in enumerate(res["runs"][0]["curve"]):
        lines.append(f"| {samples} | " + " | ".join(fmt(r["curve"][i][1], 3, r["curve"][i][2]) for r in res["runs"])
                     + " |")
    return common.write_text(path, "\n".join(lines) + "\n")


def plot(path, res):
    """figure10.png: GenEval against training samples (the small suite along the way, the full suite's end point
    with its s.e.), and the editing hit at the end; colour: the latent's width, line: the generator's size."""
    colours = dict(zip(dict.fromkeys(r["width"] for r in res["runs"]), ("tab:blue", "tab:orange")))
    styles = dict(zip(res["models"], ("-", "--")))
    with E.figure(path, 1, 2, figsize=(10, 3.8)) as (fig, ax):
        for r in res["runs"]:
            kw = dict(color=colours[r["width"]], ls=styles[r["model"]])
            ax[0].plot([c[0] for c in r["curve"]], [c[1] for c in r["curve"]], marker="o", ms=3, **kw,
                       label=f"C={r['width']} ({r['paper_width']}), {r['model']} ({r['params'] / 1e6:.2f}M)")
            ax[0].errorbar(r["samples"], r["geneval_rules"], r["geneval_rules_se"], marker="s", capsize=3, **kw)
        ax[0].set(xlabel="training samples", ylabel="mini-GenEval (GenEval rules)")
        ax[0].set_title("GenEval: the small suite along the way, the full suite at the end (squares)", fontsize=9)
        widths, width = list(colours), 0.8 / len(res["models"])
        for j, model in enumerate(res["models"]):
            rs = [next(r for r in res["runs"] if r["width"] == w and r["model"] == model) for w in widths]
            if all(r["edit_hit"] is not None for r in rs):
                ax[1].bar([i + (j - 0.5) * width for i in range(len(widths))], [r["edit_hit"] for r in rs], width,
                          yerr=[r["edit_hit_se"] for r in rs], capsize=3, color=[colours[w] for w in widths],
                          hatch="" if j == 0 else "//", edgecolor="k", label=model)
        if not ax[1].patches:  # --edit-steps 0
            ax[1].text(0.5, 0.5, "no editor trained", ha="center", transform=ax[1].transAxes)
        ax[1].set_xticks(range(len(widths)), [f"C={w} ({r})" for w, r in zip(widths, PAPER_WIDTHS)])
        ax[1].set_ylabel("mini-GEdit instruction hit")
        ax[1].set_title("editing at the end (hatched: the larger generator)", fontsize=9)
        for a in ax if ax[1].patches else ax[:1]:
            a.legend(fontsize=7, handlelength=3)
        fig.suptitle(f"Figure 10 in miniature ({res['preset']} preset, {res['sizes']['samples']} samples per run)",
                     fontsize=9)
    return path


# ----------------------------------------------------------------------------------------------
# Command line

def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("tiny", "cpu"), default="cpu", help="generator, editor, suites and Table 4 "
                   "preset (each has a larger MODELS entry <preset>-l)")
    p.add_argument("--runs", default=None, help="the Table 4 run holding the PS-VAE latents (default runs/table4-"
                   "<preset>)")
    p.add_argument("--channels", default=None, help="the narrow and the wide latent's channels (default 8,24; tiny: "
                   "2,8), the paper's 32c and 96c")
    p.add_argument("--models", default=None, help="the smaller and the larger generator, generator.MODELS entries "
                   "(default <preset>,<preset>-l), the paper's Qwen2.5-0.5B and 1.5B")
    p.add_argument("--lm", choices=("caption", "none"), default=None, help="caption: each model starts from its "
                   "own caption LM (runs/caption-lm-<model>, made if missing); none: random weights (default: the "
                   "generator preset's)")
    for flag, key, what in (("steps", "gen_steps", "generator steps"), ("every", "every", "generator steps between "
                            "the small suite's evaluations"), ("edit-steps", "edit_steps", "editor steps (0: none)"),
                            ("prompts", "prompts", "prompts per category of the small suite"),
                            ("n-off", "n_off", "generated latents of the off-manifold ratio")):
        p.add_argument("--" + flag, dest=key, type=int, default=None, metavar="N",
                       help=f"{what} (default: evaluate.GEN_SIZES')")
    p.add_argument("--out", default=None, help="folder of the runs, c<C>-<model>/ each (default runs/figure10-"
                   "<preset>)")
    p.add_argument("--results", default=os.path.join("results", "generation"), help="folder of figure10.md/.png/.json")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at a time (processes)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default cpu_count / jobs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generators' and editors' weights, data and noise")
    p.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"), help="default: cuda if available")
    common.add_speed_args(p)
    a = p.parse_args(argv)
    a.channels = [int(c) for c in (a.channels or ("2,8" if a.preset == "tiny" else "8,24")).split(",")]
    a.models = (a.models or f"{a.preset},{a.preset}-l").split(",")
    if len(a.channels) != 2 or a.channels[0] >= a.channels[1]:
        p.error(f"--channels {a.channels}: give two widths, the narrow one first (the paper's 32c and 96c)")
    if len(a.models) != 2 or not set(a.models) <= set(G.MODELS):
        p.error(f"--models {','.join(a.models)}: give two of {', '.join(G.MODELS)}, the smaller first")
    return a


def main(argv=None):
    a = parse(argv)
    t0, dev = time.time(), E.eval_device(a)
    runs = a.runs or os.path.join("runs", f"table4-{a.preset}")
    out = a.out or os.path.join("runs", f"figure10-{a.preset}")
    sz = {k: getattr(a, k) if getattr(a, k) is not None else v for k, v in E.GEN_SIZES[a.preset].items()}
    pre, threads = G.PRESETS[a.preset], a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    lm_flag = a.lm or pre.get("lm") or "none"
    made = table4_widths(a.preset)
    missing = [str(C) for C in a.channels if C not in made]
    if missing:
        raise SystemExit(f"figure10.py: error: `python evaluate.py table4 --preset {a.preset}` makes PS-VAE latents of "
                         f"{', '.join(map(str, made))} channels, not {', '.join(missing)}; pick --channels among them")
    toks = {C: tokenizer_of(runs, a.preset, C) for C in a.channels}  # a missing width stops here, before training
    with E.num_threads(threads):  # made once here, not by two runs at once: each model's LM, the gFID network
        lms = {m: G.resolve_lm({"lm": lm_flag, "model": m}, dev) for m in a.models}
        E.gfid_evaluator(a.preset)
    # the generator trains in chunks of `every` steps, one process call each: the choice judges the chunk
    speed, precision = E.table_speed(argparse.Namespace(amp=a.amp, compile=a.compile, device=a.device),
                                     min(sz["every"], sz["gen_steps"]))
    flags = (["--device", a.device] if a.device else []) + speed
    waves = []
    for model, paper_model in zip(a.models, PAPER_MODELS):
        wave = []
        for C, paper_width in zip(a.channels, PAPER_WIDTHS):
            tok, shape = toks[C]
            params, fps = model_size(model, a.preset, lms[model], shape)
            name = f"c{C}-{model}" + ("" if lm_flag == pre.get("lm", "none") else f"-lm-{lm_flag}") + \
                (f"-seed{a.seed}" if a.seed else "")
            wave.append(dict(width=C, model=model, paper_width=paper_width, paper_model=paper_model, lm=lms[model],
                             out=os.path.join(out, name), tokenizer=tok, tokenizer_sha1=G.file_hash(tok), seed=a.seed,
                             head="ddt", preset=a.preset, cache=os.path.join(runs, "cache"), sizes=sz, edit=True,
                             threads=threads, flags=flags, params=params, flops_per_sample=fps,
                             generator_flags=["--model", model, "--lm", lms[model] or "none"]))
        waves.append(wave)
    print(f"figure10 preset {a.preset}: {' and '.join(a.models)} on C = {' and '.join(map(str, a.channels))}, "
          f"{sz['gen_steps']} generator + {sz['edit_steps']} editor steps each, {a.jobs} at a time, runs in {out}",
          flush=True)
    # one wave per model: a wave's runs train on different latents, so that no two processes write one latent cache;
    # a wave with at most one run left to train runs here (a new process would only pay its start-up)
    results = [res for wave in waves for res in
               E.run_jobs(wave, a.jobs if sum(not finished(j) for j in wave) > 1 else 1, figure10_job)]
    records = [run_record(job, res, pre["batch_size"]) for job, res in zip(sum(waves, []), results)]
    first = results[0]
    res = {"command": "python experiments/figure10.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "preset": a.preset, "seed": a.seed, "tokenizers": runs, "out": out, "machine": common.machine(),
           "precision": precision, "jobs": a.jobs, "threads": threads, "models": a.models, "channels": a.channels,
           "lm": lms, "lm_note": "its own caption LM (generator.py section 7)" if lm_flag == "caption" else
           f"--lm {lm_flag}", "model_configs": {m: dataclasses.asdict(G.MODELS[m]) for m in a.models},
           "sizes": {**sz, "batch": pre["batch_size"], "samples": sz["gen_steps"] * pre["batch_size"],
                     "n_images": first["geneval"]["n_images"], "n_edits": first["gedit"]["n_edits"] if "gedit" in first
                     else 0},
           "runs": records, "gains": gains(records, a.models),
           "trained": sum(any(r["trained_steps"].values()) for r in records),
           "paper": {"figure10": {f"{w}, {m}": {"geneval": v[0], "editing": v[1]} for (w, m), v in PAPER.items()},
                     "lm_params": PAPER_PARAMS},
           "seconds": round(time.time() - t0, 1)}
    common.write_text(os.path.join(a.results, "figure10.json"), json.dumps(res, indent=1))
    plot(os.path.join(a.results, "figure10.png"), res)
    print(write_table(os.path.join(a.results, "figure10.md"), res), flush=True)
    return res


if __name__ == "__main__":
    main()
