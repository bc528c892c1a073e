"""experiments/draws.py -- Table 4's headline over the draws a rerun makes anew: the stage-0 encoder
(its seed) and the tokenizer's seed, on one machine, one precision (results/table4/draws.md).

For each stage-0 seed a world encoder is pre-trained as `evaluate.py table4` trains its own, and
measured by `evaluate.py encoder` (its linear pixel readout and twin gap: how much pixel detail
it keeps); on it, for each tokenizer seed, the table's rows (default PS-VAE and RAE) are trained
and measured by `evaluate.py table4 --stage0`. The table then shows the PSNR gap per draw, per
encoder and over all, as mean +- standard error, so that a reader sees which draw moves it.
A row that reads no encoder (the pixel VAE) draws its noise from its own seed alone, so each draw
trains it with another seed (own_seed). Finished trainings are reused. With more rows than two
(--recipes psvae,rae,svae,pvae,vae), a second table gives every row's PSNR, balanced probe and rFID over the draws, and the gap between rows adjacent
in each ranking, paired by draw (files draws_<recipes>.md/.json).

    python experiments/draws.py --stage0-seeds 0,1,2 --seeds 0,1 --recipes psvae,rae
    python experiments/draws.py --stage0-seeds 0,1 --seeds 0 --recipes psvae,rae,svae,pvae,vae
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common as C  # noqa: E402
import evaluate as E  # noqa: E402
import tokenizer as T  # noqa: E402


def stage0(folder, seed, speed, preset):
    """The table's stage 0 (its batch and the preset's steps) with another seed -> checkpoint path."""
    path = os.path.join(folder, "stage0.pt")
    if not os.path.isfile(path):
        batch = E.TABLE4_SIZES[preset].get("batch", T.PRESETS[preset]["batch_size"])
        T.main(["--preset", preset, "--stage", "0", "--seed", str(seed), "--batch-size", str(batch), "--out", folder,
                *speed])
    return path


def own_seed(s0, s):
    """The tokenizer seed of a row that reads no stage-0 encoder (the pixel VAE) in the draw (stage-0
    seed s0, tokenizer seed s). Its only source of noise is its own seed, so each draw trains it with
    another one: with seed s on every encoder, its draws would be one training repeated."""
    return 100 * s0 + s


def reads_encoder(recipe):
    return T.RECIPES[recipe] is not T.PixelVAE


def mean_se(xs):
    xs = np.asarray(xs, float)
    return xs.mean(), (xs.std(ddof=1) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def write_draws(path, rows, encoders, recipes, header):
    """draws.md: a row per (stage-0 seed, tokenizer seed), then per-encoder and overall means."""
    a, b = recipes[0], recipes[1]
    lines = ["# Table 4's headline over encoder and tokenizer draws", "", *header, "",
             "| stage-0 seed | readout dB | twin gap dB | tokenizer seed | " + " | ".join(f"{r} PSNR" for r in recipes) +
             f" | {a} - {b} dB |", "|---|---|---|---|" + "---|" * (len(recipes) + 1)]
    for (s0, s), r in sorted(rows.items()):
        e = encoders[s0]
        lines.append(f"| {s0} | {e['readout_psnr']:.2f} | {e['twin_gap_db']:.2f} | {s} | " +
                     " | ".join(f"{r[x]:.2f}" for x in recipes) + f" | {r[a] - r[b]:+.2f} |")
    gaps = {k: r[a] - r[b] for k, r in rows.items()}
    lines += ["", f"| stage-0 seed | draws | {a} - {b}: mean +- s.e. | " + " | ".join(f"{r} PSNR mean" for r in recipes) +
              " |", "|---|---|---|" + "---|" * len(recipes)]
    for s0 in sorted(encoders):
        g = [v for (e, _), v in gaps.items() if e == s0]
        m, se = mean_se(g)
        lines.append(f"| {s0} | {len(g)} | {m:+.2f} +- {se:.2f} | " + " | ".join(
            f"{np.mean([r[x] for (e, _), r in rows.items() if e == s0]):.2f}" for x in recipes) + " |")
    m, se = mean_se(list(gaps.values()))
    lines.append(f"| all | {len(gaps)} | **{m:+.2f} +- {se:.2f}** | " + " | ".join(
        f"{np.mean([r[x] for r in rows.values()]):.2f}" for x in recipes) + " |")
    enc_gaps = [mean_se([v for (e, _), v in gaps.items() if e == s0])[0] for s0 in sorted(encoders)]
    within = [np.std([v for (e, _), v in gaps.items() if e == s0], ddof=1) for s0 in sorted(encoders)
              if sum(e == s0 for e, _ in gaps) > 1]
    between = np.std(enc_gaps, ddof=1) if len(enc_gaps) > 1 else float("nan")
    lines += ["", f"Spread of the gap: between encoders (s.d. of their means) {between:.2f} dB; "
              f"within an encoder (s.d. over tokenizer seeds, mean over encoders) "
              f"{np.mean(within) if within else float('nan'):.2f} dB."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


METRICS = (("psnr", "PSNR dB", 2, 1), ("probe_balanced", "balanced probe", 3, 1), ("rfid", "rFID", 1, -1))


def write_rows(path, metrics, recipes):
    """Append every row's metrics over the draws (mean +- s.e.) and, per metric, the rows ranked best first with
    the gap of each adjacent pair paired by draw (mean +- s.e.), so that each ordering carries its noise."""
    lines = ["", "Every row over the draws (mean +- s.e. over draws; rFID: lower is better):", "",
             "| row | draws | " + " | ".join(m[1] for m in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for r in recipes:
        cells = [mean_se([d[r][k] for d in metrics.values()]) for k, *_ in METRICS]
        lines.append(f"| {r} | {len(metrics)} | " + " | ".join(f"{m:.{p}f} +- {e:.{p}f}" for (m, e), (_, _, p, _)
                                                                in zip(cells, METRICS)) + " |")
    lines.append("")
    for k, name, p, sign in METRICS:
        rank = sorted(recipes, key=lambda r: -sign * np.mean([d[r][k] for d in metrics.values()]))
        gaps = [(a, b, mean_se([sign * (d[a][k] - d[b][k]) for d in metrics.values()])) for a, b in zip(rank, rank[1:])]
        lines.append(f"{name}, best first: " + "".join(f"{a} ({m:+.{p}f} +- {e:.{p}f}) " for a, _, (m, e) in gaps) +
                     rank[-1] + "; each gap to the next row, paired by draw.")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=list(E.TABLE4_SIZES))
    p.add_argument("--stage0-seeds", default="0,1,2", help="seeds of the world encoders (stage 0)")
    p.add_argument("--seeds", default="0,1", help="tokenizer seeds on each encoder")
    p.add_argument("--recipes", default="psvae,rae", help="rows to train (the first two make the gap)")
    p.add_argument("--runs", default=os.path.join("runs", "draws"), help="one folder per stage-0 seed below it")
    p.add_argument("--results", default=os.path.join("results", "table4"), help="draws.md and draws.json go here")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"))
    a = p.parse_args(argv)
    t0, recipes = time.time(), a.recipes.split(",")
    speed, precision = E.table_speed(argparse.Namespace(amp=a.amp, compile=a.compile, device="cpu"),
                                     E.TABLE4_SIZES[a.preset]["budget"])
    command = "python experiments/draws.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sz = E.TABLE4_SIZES[a.preset]
    rows, metrics, encoders, names = {}, {}, {}, {n: rec for n, rec, _ in E.TABLE4_ROWS}
    name = "draws" + ("" if recipes == ["psvae", "rae"] else "_" + "_".join(recipes))
    m = C.machine()
    # every encoder once before any encoder twice: a study stopped early has seen the most encoders
    for s in map(int, a.seeds.split(",")):
        for s0 in map(int, a.stage0_seeds.split(",")):
            folder = os.path.join(a.runs, f"stage0-seed{s0}")
            ckpt = stage0(os.path.join(folder, "stage0"), s0, speed, a.preset)
            encoders[s0] = encoders.get(s0) or E.main(["encoder", "--stage0", ckpt])
            r = {"rows": {}}
            for group, seed in (([x for x in recipes if reads_encoder(x)], s),
                                ([x for x in recipes if not reads_encoder(x)], own_seed(s0, s))):
                if group:
                    r["rows"].update(E.main([
                        "table4", "--preset", a.preset, "--recipes", ",".join(group), "--stage0", ckpt, "--runs",
                        folder, "--results", os.path.join(folder, "tables"), "--seed", str(seed), "--jobs",
                        str(a.jobs), "--threads", "1", "--amp", speed[1], "--compile", speed[3]])["rows"])
            rows[(s0, s)] = {names[n]: v["psnr"] for n, v in r["rows"].items()}
            metrics[(s0, s)] = {names[n]: {k: v[k] for k, *_ in METRICS} for n, v in r["rows"].items()}
            header = [f"`{command}`; {time.time() - t0:.0f} s in its last invocation (finished trainings reused) on "
                      f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}. Precision: {precision}. Each draw: the table's "
                      f"budget ({sz['budget']} steps of batch {sz.get('batch', T.PRESETS[a.preset]['batch_size'])}), "
                      f"PSNR on {sz['n']} held-out scenes; readout: the linear pixel readout of the encoder's tokens, "
                      f"twin gap: its own scene's readout minus its detail-redrawn twin's (`evaluate.py encoder`)." +
                      "".join(f" {x} reads no encoder: in the draw (stage-0 seed e, tokenizer seed s) it trains with "
                              f"seed 100 e + s." for x in recipes if not reads_encoder(x))]
            os.makedirs(a.results, exist_ok=True)  # written after every draw: a stopped study keeps its table
            with open(os.path.join(a.results, name + ".json"), "w") as f:
                json.dump({"command": command, "precision": precision, "machine": m,
                           "encoders": {str(k): v for k, v in encoders.items()},
                           "rows": [{"stage0_seed": e, "seed": t, **v, "metrics": metrics[(e, t)]}
                                    for (e, t), v in sorted(rows.items())]}, f, indent=1)
            out = write_draws(os.path.join(a.results, name + ".md"), rows, encoders, recipes, header)
            if len(recipes) > 2:
                write_rows(out, metrics, recipes)
    print(out, flush=True)
    return rows


if __name__ == "__main__":
    main()
