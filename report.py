"""report.py -- every claim of the paper beside the miniature's measurement, in one page.

    python evaluate.py report      # rebuilds results/REPORT.md and its figure sheet results/report.png
    python evaluate.py report --run --budget-hours 8   # first runs what the page still lacks (section 6)

Read top to bottom: the paper's numbers (the only numbers typed in this file), the verdict rule
(one function), small readers of the JSON the runs wrote under a results root (results/ unless told
otherwise), one function per section of the paper returning its rows, the renderer, the figure sheet,
and the list of runs that make the data, in dependency order (`--run`). Every number of the miniature in
REPORT.md is computed here from those files; tests/test_report.py rebuilds the page and checks
that it equals the committed one, so the page cannot drift from the data.
"""
import collections
import contextlib
import glob
import importlib
import json
import math
import os
import re
import shutil
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ----------------------------------------------------------------------------------------------
# 1. The paper's numbers (Zhang et al., 2025). Facts from the paper, not measurements.
# ----------------------------------------------------------------------------------------------

PAPER_PSNR = {"PS-VAE": 28.79, "RAE": 19.20}                       # Table 4, reconstruction
PAPER_RFID = {"PS-VAE": 0.203, "RAE": 0.619}                       # Table 4
PAPER_PROBE_GAP_PVAE = 15                                          # Table 4: P-VAE ~15 points below PS-VAE
PAPER_GENEVAL = {"PS-VAE": 76.6, "S-VAE": 73.7, "RAE": 71.3}       # Table 4, generation
PAPER_EDIT = {"PS-VAE": 0.22, "S-VAE": 0.12, "RAE": 0.06}          # Table 4, editing (GEdit)
PAPER_TABLE1 = {"LlamaFusion": (0.524, 857), "Bagel-style": (0.763, 857),  # GenEval, parameters (M)
                "Transfusion": (0.752, 500), "Transfusion + DDT head": (0.762, 653)}
PAPER_FIGURE10 = {"96c": ((76.56, 78.14), (0.222, 0.285)),         # (GenEval, editing): base -> larger model
                  "32c": ((77.07, 77.67), (0.274, 0.228))}
PAPER_TABLE3_MME = (1685, 1652)                                    # MME-P: SigLIP2 before -> after PS-VAE training

# ----------------------------------------------------------------------------------------------
# 2. The verdict rule: stated once here and at the top of the page
# ----------------------------------------------------------------------------------------------

RESOLVED = 2.0  # a gap counts when it is at least this many standard errors from zero
RULE = ("A claim is a set of gaps, each written so that the paper's sign is positive (A - B for "
        "\"A above B\"). A gap *confirms* the paper when it is positive by at least 2 standard errors, and "
        "*contradicts* it when it is negative by at least 2 standard errors; a gap without a standard error "
        "(one seed) does neither. **reproduced**: every gap confirms. **partly**: some gap confirms, none "
        "contradicts. **missed (contradicted)**: some gap contradicts. **missed (unresolved)**: no gap "
        "confirms and none contradicts: the miniature cannot tell. Only signs are judged, not sizes; the "
        "paper's sizes stand beside. **not measured yet**: no run has made the data. **not available as "
        "data**: a run printed a table but wrote no JSON that this page reads (the row names the table). "
        "An identity (Eq. 1) is reproduced when it holds to a relative 1e-10 in float64.")


def verdict(gaps):
    """gaps: [(mean, standard error or None)], the paper's sign positive -> one of the verdicts."""
    if not gaps:
        return "not measured yet"
    confirms = [se is not None and g > 0 and g >= RESOLVED * se for g, se in gaps]
    contradicts = [se is not None and g < 0 and -g >= RESOLVED * se for g, se in gaps]
    if any(contradicts):
        return "missed (contradicted)"
    if all(confirms):
        return "reproduced"
    return "partly" if any(confirms) else "missed (unresolved)"


# ----------------------------------------------------------------------------------------------
# 3. Reading the data: a measurement is {seed: value}
# ----------------------------------------------------------------------------------------------

def load(root, rel):
    with open(os.path.join(root, rel)) as f:
        return json.load(f)


def have(root, *rels):
    """Whether every one of the files (relative to the results root) exists."""
    return all(os.path.isfile(os.path.join(root, r)) for r in rels)


def mean_se(values):
    """Mean and standard error of the mean (None for a single value)."""
    v = list(values)
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def share_se(p, n):
    """The binomial standard error of a share p of n items."""
    return math.sqrt(p * (1 - p) / n)


def gap(a, b):
    """a - b for two {seed: value} measurements: paired over seeds when both have the same seeds
    (shared data order and stage 0 cancel), else the difference of means with both errors added."""
    if sorted(a) == sorted(b):
        return mean_se(a[s] - b[s] for s in a)
    (ma, sa), (mb, sb) = mean_se(a.values()), mean_se(b.values())
    return ma - mb, (math.sqrt(sa ** 2 + sb ** 2) if sa is not None and sb is not None else None)


def fmt(m, se, n=None, d=2, unit="", sign=False, of="seed"):
    """'18.81 ± 0.30 (3 seeds)'; sign=True writes gaps as '+3.48'; `of` names what n counts."""
    return (f"{m:+.{d}f}" if sign else f"{m:.{d}f}") + unit + (f" ± {se:.{d}f}" if se is not None else "") + \
        ("" if n is None else f" ({n} {of}{'s' if n > 1 else ''})")


def fmt_value(values, d=2, of="seed"):
    m, se = mean_se(values.values())
    return fmt(m, se, len(values), d, of=of)


def fmt_gaps(names, gaps, d=2, unit=""):
    return "; ".join(f"{n} {fmt(g, se, d=d, unit=unit, sign=True)}" + ("" if se is not None else " (no s.e.)")
                     for n, (g, se) in zip(names, gaps))


# The current default's Table 4 margin: PS-VAE and RAE with the tokenizer's cool-down (the last 20% of each stage),
# over draws of the stage-0 encoder's seed x the tokenizer's seed (experiments/draws.py writes both files; a row of
# draws.json is one draw: {"stage0_seed", "seed", "psvae": PSNR, "rae": PSNR}).
DRAWS_JSON, DRAWS_TABLE = "table4/draws.json", "table4/draws.md"


def draws(root, a="psvae", b="rae"):
    """{(stage-0 seed, tokenizer seed): (a's PSNR, b's PSNR)} over the draws of draws.json; {} without the file."""
    if not have(root, DRAWS_JSON):
        return {}
    return {(r["stage0_seed"], r["seed"]): (r[a], r[b]) for r in load(root, DRAWS_JSON)["rows"] if a in r and b in r}


# The earlier table, every latent at budget 1200 with a constant lr on one stage-0 encoder, before the cool-down
# became the default: the only data yet of the rows beyond PS-VAE and RAE, the probes and Figure 11. One JSON per
# latent and seed. (`report --run` publishes into the same folder the latents it trains with the current default.)
TWINS = "earlier constant-lr table"
TABLE4_METRICS = os.path.join("table4", "twins", "metrics")
TABLE4_TABLE = "table4/twins/table4_cpu_b1200_xeon.md"
TABLE4_LATENTS = {"PS-VAE": "psvae", "S-VAE": "svae", "RAE": "rae", "P-VAE": "pvae",
                  "pixel VAE (MAR-VAE role)": "vae", "RPiAE": "rpiae"}


def table4_files(root, recipe):
    """{seed: path} of one latent's measured.json files in the default table's folder, which holds only the current
    table: <recipe>_b<budget>[_seed<N>]_<tag>_measured.json, tag the machine (runs copied by hand: xeon) or the
    preset (runs made by `report --run`)."""
    name = re.compile(re.escape(recipe) + r"_b\d+(?:_seed(\d+))?_[a-z0-9]+_measured\.json")
    return {int(m.group(1) or 0): p for p in sorted(glob.glob(os.path.join(root, TABLE4_METRICS, "*_measured.json")))
            if (m := name.fullmatch(os.path.basename(p)))}


def table4(root, recipe, key):
    """{seed: value} of one metric of one latent over every seed of the default table."""
    return {s: load(root, p)[key[0]][key[1]] for s, p in table4_files(root, recipe).items()}


PSNR, RFID, PROBE = ("recon", "psnr"), ("recon", "rfid"), ("probe", "probe_balanced")

# The default generation table: written as JSON by `table4-gen --json` (the run before this page only printed
# its markdown table, named below, so those rows say "not available as data" until it is run again).
GEN_JSON = "generation/table4_generation.json"
GEN_TABLE = "generation/table4_generation.md"
GEN_FIG7 = "generation/figure7.png"  # the same generators, before
GEN_FIG4 = "generation/figure4.png"  # their editors were trained


def generation(root, name, what):
    """(value, s.e. over prompts) of one latent's row of the generation table's JSON, or None.
    what: 'geneval' (GenEval rules), 'edit' (instruction hit), 'offman' (off-manifold ratio)."""
    if not have(root, GEN_JSON):
        return None
    r = load(root, GEN_JSON)["rows"].get(name)
    if r is None or (what == "edit" and "gedit" not in r):
        return None
    if what == "geneval":
        return r["geneval"]["overall_geneval_rules"], r["geneval"]["overall_geneval_rules_stderr"]
    if what == "edit":
        p, n = r["gedit"]["instruction_hit"], r["gedit"]["n_edits"]
        return p, share_se(p, n)  # a share of n edits
    return r["off_manifold_ratio"], r["off_manifold_stderr"]


def gen_gaps(root, pairs, what):
    """Gaps (a - b, both errors added) of generation-table values; None when the data is missing."""
    vals = {n: generation(root, n, what) for p in pairs for n in p}
    if any(v is None for v in vals.values()):
        return None
    return [(vals[a][0] - vals[b][0], math.hypot(vals[a][1], vals[b][1])) for a, b in pairs], vals


# ----------------------------------------------------------------------------------------------
# 4. One function per section of the paper: each returns rows
#    (claim, paper, miniature, gaps or None, command, links)
# ----------------------------------------------------------------------------------------------

CMD_TOY = "`python toy_manifold.py`"
CMD_DIMS = "`OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 toy_manifold.py --dims 2 8 32 128`"
CMD_TABLE4 = ("`python evaluate.py table4 --preset cpu`, then `--seed 1` and `--recipes psvae,rae --seed 2` "
              "(each latent's measured.json copied to table4/twins/metrics/), run before the tokenizer's cool-down")
CMD_DRAWS = "`python experiments/draws.py --stage0-seeds 0,1,2 --seeds 0,1 --recipes psvae,rae --jobs 2`"
CMD_GEN = ("`python evaluate.py table4-gen --preset cpu --patch 1 --budget 2500 --edit-budget 1000 --every 250 "
           "--json results/generation/table4_generation.json`")


def row(claim, paper, mini, gaps, command, links, status=None):
    return dict(claim=claim, paper=paper, mini=mini, verdict=status or verdict(gaps), command=command, links=links)


def unmeasured(claim, paper, command, links):
    """The row of a claim whose data no run has made yet (`report --run` makes it)."""
    return row(claim, paper, "not measured yet", None, command, links, "not measured yet")


def section_eq1(root):
    rows = []
    for rel in ("figure3/figure3.json", "figure3/dims.json"):
        claim, cmd = "v_x = Q v_z(Q^T x) + (1/t)(I - QQ^T) x for the optimal field", \
            CMD_TOY if rel.endswith("figure3.json") else CMD_DIMS
        if not have(root, rel):
            rows.append(unmeasured(claim, "exact (a proof)", cmd, [rel]))
            continue
        e = load(root, rel)["eq1"]
        ok = e["dtype"] == "float64" and e["max_rel_dev"] < 1e-10
        rows.append(row(f"{claim}, h = {e['h']}", "exact (a proof)",
                        f"max relative deviation {e['max_rel_dev']:.1e} ({e['dtype']})", None, cmd,
                        [rel, "figure3/eq1_check.txt"], "reproduced" if ok else "missed (contradicted)"))
    return rows


def section_figure3(root):
    per_seed = lambda d, h: dict(enumerate(d["final_per_seed"][h]))  # noqa: E731
    claim = "the 8D model's samples stray further off the \"PS\" than the 2D model's (top-5% NN distance)"
    links = ["figure3/figure3.json", "figure3/figure3.png"]
    if have(root, links[0]):
        f3 = load(root, links[0])
        g = gap(per_seed(f3, "8"), per_seed(f3, "2"))
        rows = [row(claim, "8D above 2D (Figure 3)",
                    f"2D {fmt_value(per_seed(f3, '2'), 3)}, 8D {fmt_value(per_seed(f3, '8'), 3)}; 8D - 2D "
                    f"{fmt(*g, d=3, sign=True)}, ratio {f3['ratio_to_2d']['8']:.2f}", [g], CMD_TOY, links)]
    else:
        rows = [unmeasured(claim, "8D above 2D (Figure 3)", CMD_TOY, links)]
    claim = "the tail grows with the ambient dimension (the miniature's extension of Figure 3)"
    links = ["figure3/dims.json", "figure3/dims.png"]
    if not have(root, links[0]):
        return rows + [unmeasured(claim, "2D against 8D only", CMD_DIMS, links)]
    dims = load(root, links[0])
    hs = sorted(dims["final_per_seed"], key=int)
    chain = [gap(per_seed(dims, b), per_seed(dims, a)) for a, b in zip(hs, hs[1:])]
    return rows + [
        row(claim, "2D against 8D only",
            "; ".join(f"{h}D {fmt_value(per_seed(dims, h), 3)}" for h in hs) + "; steps: " +
            fmt_gaps([f"{b}-{a}" for a, b in zip(hs, hs[1:])], chain, 3), chain, CMD_DIMS, links),
    ]


# The current default's every row over draws of the stage-0 encoder (experiments/draws.py with all five rows): a
# row of its JSON is one draw, with {"metrics": {recipe: {"psnr", "probe_balanced", "rfid"}}}. Where it holds
# every latent of an order, the order is read from it (paired by draw), else from the earlier table.
ROWS_JSON, ROWS_TABLE = "table4/draws_psvae_rae_svae_pvae_vae.json", "table4/draws_psvae_rae_svae_pvae_vae.md"


def rows_draws(root, recipe, key):
    """{draw: value} of one metric of one latent over the all-rows draws; {} without the file or the latent."""
    if not have(root, ROWS_JSON):
        return {}
    return {f"{r['stage0_seed']}/{r['seed']}": r["metrics"][recipe][key[1]] for r in load(root, ROWS_JSON)["rows"]
            if recipe in r.get("metrics", {})}


def order_row(root, claim, paper, names, key, d=2, scale=1.0, unit="", lower_is_better=False):
    """An order A > B > C ... of one Table-4 metric: over the current default's draws where they hold every latent
    of the order at least twice, else over the earlier table's seeds."""
    vals = {n: {s: v * scale for s, v in rows_draws(root, TABLE4_LATENTS[n], key).items()} for n in names}
    source, links, command = "current default", [ROWS_TABLE, ROWS_JSON], \
        f"`{load(root, ROWS_JSON)['command']}`" if have(root, ROWS_JSON) else None
    if not all(len(v) > 1 for v in vals.values()):  # one draw has no noise: it does not replace seeds that have
        vals = {n: {s: v * scale for s, v in table4(root, TABLE4_LATENTS[n], key).items()} for n in names}
        source, links, command = TWINS, [TABLE4_TABLE, TABLE4_METRICS.replace(os.sep, "/") + "/"], CMD_TABLE4
    if not all(vals.values()):
        return unmeasured(claim, paper, CMD_TABLE4, links)
    pairs = list(zip(names, names[1:]))
    gaps = [gap(vals[b], vals[a]) if lower_is_better else gap(vals[a], vals[b]) for a, b in pairs]
    of = "seed" if source == TWINS else "draw"  # a draw: a stage-0 encoder's seed and a tokenizer seed
    mini = f"{source}: " + ", ".join(f"{n} {fmt_value(vals[n], d, of)}" for n in names) + "; gaps: " + \
        fmt_gaps([f"{a} - {b}" if not lower_is_better else f"{b} - {a}" for a, b in pairs], gaps, d, unit)
    return row(claim, paper, mini, gaps, command, links)


def draws_row(root):
    """PS-VAE's PSNR margin over RAE with the current default, per draw and its mean ± s.e. over the draws."""
    claim = "PS-VAE above RAE in PSNR, the current default (a cool-down ends each tokenizer stage), over stage-0 " \
            "encoder draws (the size is not judged)"
    paper, links = f"+{PAPER_PSNR['PS-VAE'] - PAPER_PSNR['RAE']:.2f} dB", [DRAWS_TABLE, DRAWS_JSON]
    got = draws(root)
    if not got:
        return unmeasured(claim, paper, CMD_DRAWS, links)
    margins = {k: a - b for k, (a, b) in got.items()}
    m, se = mean_se(margins.values())
    plural = lambda n, word: f"{n} {word}" + ("s" if n > 1 else "")  # noqa: E731
    encoders, seeds = {e for e, _ in got}, sorted({s for _, s in got})
    mini = ("PS-VAE - RAE per draw (encoder seed / tokenizer seed): " +
            ", ".join(f"{e}/{s} {v:+.2f}" for (e, s), v in sorted(margins.items())) +
            f" dB; mean over the {plural(len(margins), 'draw')} {fmt(m, se, sign=True, unit=' dB')} "
            f"({plural(len(encoders), 'encoder')}, tokenizer seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(map(str, seeds))}; s.e. over draws); PSNR means PS-VAE "
            f"{mean_se(a for a, _ in got.values())[0]:.2f}, RAE {mean_se(b for _, b in got.values())[0]:.2f} dB")
    command = load(root, DRAWS_JSON).get("command")
    return row(claim, paper, mini, [(m, se)], f"`{command}`" if command else CMD_DRAWS, links)


def section_table4_recon(root):
    return [
        draws_row(root),
        order_row(root, "PSNR: P-VAE > PS-VAE > RAE > S-VAE", f"P-VAE > PS-VAE {PAPER_PSNR['PS-VAE']:.2f} > RAE "
                  f"{PAPER_PSNR['RAE']:.2f} > S-VAE", ["P-VAE", "PS-VAE", "RAE", "S-VAE"], PSNR, unit=" dB"),
        order_row(root, "PSNR: the MAR-VAE (here a pixel VAE) between PS-VAE and RAE", "PS-VAE > MAR-VAE > RAE",
                  ["PS-VAE", "pixel VAE (MAR-VAE role)", "RAE"], PSNR, unit=" dB"),
        order_row(root, "rFID: PS-VAE below RAE (lower is better; here a small world-feature network)",
                  f"PS-VAE {PAPER_RFID['PS-VAE']} < RAE {PAPER_RFID['RAE']}", ["PS-VAE", "RAE"], RFID, d=0,
                  lower_is_better=True),
    ]


def section_probes(root):
    return [
        order_row(root, "linear probe: RAE > S-VAE > PS-VAE (balanced accuracy, points)", "RAE > S-VAE > PS-VAE",
                  ["RAE", "S-VAE", "PS-VAE"], PROBE, d=1, scale=100),
        order_row(root, "P-VAE's probe below PS-VAE's (points; the size is not judged)",
                  f"far below: about {PAPER_PROBE_GAP_PVAE} points",
                  ["PS-VAE", "P-VAE"], PROBE, d=1, scale=100),
    ]


def section_figure11(root):
    sweep = {c: table4(root, f"psvae-c{c}", PSNR) for c in (8, 48)}
    sweep[24] = {s: v for s, v in table4(root, "psvae", PSNR).items() if s in sweep[8]}  # the seeds the sweep has
    claim, paper = "PSNR rises with the latent channels C (PS-VAE, C = 8 < 24 < 48)", "rises with C (Figure 11, left)"
    links = ["table4/twins/channels_cpu_b1200_xeon.png", "table4/twins/channels_cpu_b1200_seed1_xeon.png"]
    if not all(sweep.values()):
        return [unmeasured(claim, paper, CMD_TABLE4, links)]
    gaps = [gap(sweep[b], sweep[a]) for a, b in ((8, 24), (24, 48))]
    return [row(claim, paper,
                f"{TWINS}: " + ", ".join(f"C = {c}: {fmt_value(sweep[c])}" for c in (8, 24, 48)) +
                "; gaps (paired by seed): " +
                fmt_gaps(["24 - 8", "48 - 24"], gaps, unit=" dB"), gaps, CMD_TABLE4, links)]


def gen_row(root, claim, paper, pairs, what, links, d=3):
    got = gen_gaps(root, pairs, what)
    if got is None and not have(root, GEN_TABLE):
        return unmeasured(claim, paper, CMD_GEN, links)
    if got is None:
        return row(claim, paper, f"not available as data: the run printed [its table]({GEN_TABLE}) but wrote no JSON",
                   None, CMD_GEN, links, "not available as data")
    gaps, vals = got
    mini = ", ".join(f"{n} {v:.{d}f} ± {se:.{d}f}" for n, (v, se) in vals.items()) + " (s.e. over prompts); gaps: " + \
        fmt_gaps([f"{a} - {b}" for a, b in pairs], gaps, d)
    return row(claim, paper, mini, gaps, CMD_GEN, links)


# The recipe study's best generator on three sets of tokenizers (experiments/gen_vs_ceiling.py): a row per
# (set, latent) with the generator's GenEval (rules, s.e. over prompts) and its tokenizer's ceiling.
GEN_VS_CEILING = "generation/gen_vs_ceiling.json"
CMD_GEN_VS_CEILING = ("`python experiments/recipe.py --flops 1e14 --levers patch2` on each set of tokenizers, then "
                      "`python experiments/gen_vs_ceiling.py` (the commands: results/README.md, generation/)")


def gen_vs_ceiling_row(root):
    """GenEval PS-VAE > RAE per set of tokenizers, one gap each (one generator seed a latent: s.e. over prompts)."""
    claim = "GenEval: PS-VAE > RAE, the recipe study's patch-2 generators at 1e14 FLOPs, per set of tokenizers"
    paper = f"PS-VAE {PAPER_GENEVAL['PS-VAE']} > RAE {PAPER_GENEVAL['RAE']}"
    if not have(root, GEN_VS_CEILING):
        return unmeasured(claim, paper, CMD_GEN_VS_CEILING, [GEN_VS_CEILING])
    sets = {}
    for r in load(root, GEN_VS_CEILING)["rows"]:
        sets.setdefault(r["tokenizers"], {})[r["latent"]] = r
    pairs = [(name, d["psvae"], d["rae"]) for name, d in sets.items() if {"psvae", "rae"} <= set(d)]
    gaps = [(p["generator"] - r["generator"], math.hypot(p["generator_se"], r["generator_se"])) for _, p, r in pairs]
    mini = "; ".join(f"{name}: PS-VAE {p['generator']:.3f} ± {p['generator_se']:.3f} (ceiling {p['ceiling']:.3f}), "
                     f"RAE {r['generator']:.3f} ± {r['generator_se']:.3f} (ceiling {r['ceiling']:.3f}), gap "
                     f"{fmt(g, se, d=3, sign=True)}" for (name, p, r), (g, se) in zip(pairs, gaps))
    return row(claim, paper, mini + " (one generator seed a latent, s.e. over prompts)", gaps, CMD_GEN_VS_CEILING,
               [GEN_VS_CEILING, "generation/gen_vs_ceiling.png"])


def section_table4_generation(root):
    chain = [("PS-VAE", "S-VAE"), ("S-VAE", "RAE")]
    return [
        gen_row(root, "GenEval: PS-VAE > S-VAE > RAE (mini-GenEval, GenEval's rules)",
                " > ".join(f"{n} {v}" for n, v in PAPER_GENEVAL.items()), chain, "geneval", [GEN_TABLE, GEN_FIG4]),
        gen_vs_ceiling_row(root),
        gen_row(root, "editing: PS-VAE > S-VAE > RAE (mini-GEdit instruction hit)",
                " > ".join(f"{n} {v}" for n, v in PAPER_EDIT.items()), chain, "edit", [GEN_TABLE]),
    ]


def section_figure7(root):
    return [row("the generator on PS-VAE converges faster than on the other latents (GenEval against steps)",
                "PS-VAE's curve above the others (Figure 7)",
                "not available as data: the curves live in the run folders (curve.json); only the figure was kept",
                None, CMD_GEN, [GEN_FIG7], "not available as data")]


def section_off_manifold(root):
    return [gen_row(root, "RAE's samples stray furthest off the latent data (off-manifold ratio)",
                    "RAE most off-manifold (Sec. 3.1)", [("RAE", "S-VAE"), ("RAE", "PS-VAE")], "offman",
                    [GEN_TABLE], d=2)]


def section_table1(root):
    rows = [unmeasured(f"fusion design: {name}", f"GenEval {g}, {p} M parameters",
                       "`python experiments/table1_fusion.py --runs runs/table4-cpu --jobs 2` (not run yet)", [])
            for name, (g, p) in PAPER_TABLE1.items() if name != "Transfusion + DDT head"]
    (g0, _), (g1, _) = PAPER_TABLE1["Transfusion"], PAPER_TABLE1["Transfusion + DDT head"]
    rows += [gen_row(root, f"the wide DDT head helps ({name})", f"GenEval {g0} -> {g1} with the head",
                     [(name, f"{name}, no DDT head")], "geneval", [GEN_TABLE]) for name in ("PS-VAE", "RAE")]
    return rows


def section_figure10(root):
    return [row(f"a larger generator on the {c} latent", f"GenEval {a} -> {b}, editing {e} -> {f}",
                "not measured yet", None, "`python experiments/figure10.py --preset cpu --runs runs/table4-cpu "
                "--channels 8,24 --models cpu,cpu-l --jobs 2` (not run yet: about 10 hours of 2 CPU cores, estimated)",
                [],
                "not measured yet") for c, ((a, b), (e, f)) in PAPER_FIGURE10.items()]


TABLE3_JSON, TABLE3_TABLE = "table4/table3_encoders.json", "table4/table3_encoders.md"
CMD_TABLE3 = "`python experiments/table3_encoders.py --preset cpu --stage0-batch 64 --stage0-steps 600 --jobs 2`"


def section_table3(root):
    """The SigLIP-role encoder's zero-shot caption matching before and after PS-VAE's stage 2 (the miniature of
    MME-P). The paper's claim is that understanding is kept: a drop no larger than its own, 1685 -> 1652 (2%). One
    gap: after - before x 1652/1685, positive when the miniature keeps at least the share the paper kept."""
    a, b = PAPER_TABLE3_MME
    claim, paper = "PS-VAE training on SigLIP2 keeps its understanding (a small drop)", f"MME-P {a} -> {b}"
    if not have(root, TABLE3_JSON):
        return [unmeasured(claim, paper, CMD_TABLE3 + " (not run yet; the miniature of MME-P: the SigLIP-role "
                           "encoder's zero-shot caption matching before and after stage 2)", [])]
    encoders = load(root, TABLE3_JSON)["encoders"]
    e = encoders["siglip"]
    z, pb, pa = e["zero_shot"], e["encoder_probe"]["before"], e["encoder_probe"]["after"]
    se = lambda p: share_se(p, z["n"])  # noqa: E731
    kept = (z["after"] - z["before"] * b / a, math.hypot(se(z["after"]), b / a * se(z["before"])))
    mini = (f"zero-shot caption matching {z['before']:.3f} -> {z['after']:.3f} (chance {z['chance']:.3f}; {z['n']} "
            f"held-out pairs, binomial s.e.; one seed): kept {z['after'] / z['before']:.2f} of it (the paper "
            f"{b / a:.2f}); gap after - before x {b}/{a} {fmt(*kept, d=3, sign=True)}; the encoder's balanced probe "
            f"{pb['probe_balanced']:.3f} -> {pa['probe_balanced']:.3f}; its pixel readout "
            f"{e['encoder']['readout_psnr']:.2f} dB, twin gap {e['encoder']['twin_gap_db']:.2f} dB; PS-VAE on it "
            f"{e['recon']['psnr']:.2f} dB PSNR (on the DINOv2-role encoder {encoders['twins']['recon']['psnr']:.2f})")
    return [row(claim, paper, mini, [kept], CMD_TABLE3, [TABLE3_TABLE])]


SECTIONS = [
    ("Eq. 1: the optimal field in h dimensions (Sec. 3.2)", section_eq1),
    ("Figure 3: off-manifold samples of a flow in a high-dimensional space (Sec. 3.2)", section_figure3),
    ("Table 4, reconstruction: PS-VAE's margin over RAE, the PSNR and rFID orders (each row names its data: the "
     "current default's draws, or the earlier constant-lr table)", section_table4_recon),
    ("Table 4, semantics: the probe orders (each row names its data)", section_probes),
    ("Figure 11: latent channels (the earlier constant-lr table)", section_figure11),
    ("Table 4, generation and editing: the orders", section_table4_generation),
    ("Figure 7: convergence", section_figure7),
    ("Sec. 3.1: RAE's samples off the manifold", section_off_manifold),
    ("Table 1: fusion designs and the wide DDT head", section_table1),
    ("Figure 10: scaling the generator", section_figure10),
    ("Table 3: SigLIP2's understanding after PS-VAE training", section_table3),
]

# ----------------------------------------------------------------------------------------------
# 5. The page and its figure sheet
# ----------------------------------------------------------------------------------------------

VERDICTS = ("reproduced", "partly", "missed (contradicted)", "missed (unresolved)", "not available as data",
            "not measured yet")


def render(sections):
    """The markdown page: the rule, the count of verdicts, the sheet, one table per section."""
    count = {v: sum(r["verdict"] == v for _, rows in sections for r in rows) for v in VERDICTS}
    lines = ["# The paper's claims beside the miniature's measurements", "",
             "Made by `python evaluate.py report` from the JSON the runs wrote under results/; do not edit by hand "
             "(tests/test_report.py rebuilds it and checks that it equals this file). Every miniature number is "
             "read from the files linked in its row; the paper's numbers are the constants at the top of "
             "`report.py`. All runs on 2 CPU cores (cpu presets); values are mean ± standard error of the mean "
             "over seeds (how many in brackets) unless a row says otherwise.", "",
             f"**Table 4's two measurements.** PS-VAE's PSNR margin over RAE is the current default's: each tokenizer "
             f"stage ends with a cool-down, and the margin is measured over draws of the stage-0 encoder's seed and "
             f"the tokenizer's seed ([draws.md]({DRAWS_TABLE})). The other Table 4 rows and Figure 11 read the "
             f"earlier table, trained at a constant lr on one stage-0 encoder (table4/twins/), which the cool-down "
             f"has not yet replaced; their rows say so.", "",
             "**Verdict rule.** " + RULE, "",
             "**Count.** " + ", ".join(f"{v}: {n}" for v, n in count.items()), "",
             "![the figure sheet: Figure 3, Table 4 and Figure 11 from the data](report.png)", ""]
    for title, rows in sections:
        lines += [f"## {title}", "", "| claim | paper | miniature | verdict | made by | data |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            links = ", ".join(f"[{os.path.basename(p.rstrip('/')) or p}]({p})" for p in r["links"]) or "-"
            lines.append(f"| {r['claim']} | {r['paper']} | {r['mini']} | **{r['verdict']}** | {r['command']} "
                         f"| {links} |")
        lines.append("")
    return "\n".join(lines)


SHEET_RECIPES = list(TABLE4_LATENTS.values()) + ["psvae-c8", "psvae-c48"]


def sheet_ready(root):
    """Whether the figure sheet's data is all there: Figure 3, both seeds of Figure 11's sweep, every latent."""
    return have(root, "figure3/figure3.json", "figure3/dims.json") and \
        all({0, 1} <= set(table4_files(root, r)) for r in ("psvae-c8", "psvae-c48")) and \
        all(table4_files(root, r) for r in SHEET_RECIPES)


def figure_sheet(root, path):
    """One PNG from the same data: Figure 3's curves and tails, Table 4's PSNR / probe / rFID per latent (the current
    default's draws where a latent has two, else the earlier constant-lr table's seeds), Figure 11's sweep (constant
    lr), and the current default's PS-VAE and RAE over the encoder draws."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 4, figsize=(17, 7.2))
    f3, dims = load(root, "figure3/figure3.json"), load(root, "figure3/dims.json")
    for h in ("2", "8"):
        c = f3["curves"][h]
        ax[0, 0].errorbar([p["step"] for p in c], [p["top5_mean"] for p in c], [p["top5_std"] for p in c],
                          marker="o", capsize=2, label=f"{h}D")
    ax[0, 0].set(title="Figure 3: top-5% NN distance (mean ± s.d., 3 seeds)", xlabel="training step",
                 ylabel="distance")
    ax[0, 0].legend()
    hs = sorted(dims["final_per_seed"], key=int)
    for h in hs:
        ax[0, 1].plot([int(h)] * len(dims["final_per_seed"][h]), dims["final_per_seed"][h], "o", color="C0")
    ax[0, 1].plot([int(h) for h in hs], [dims["final"][h] for h in hs], "-", color="C0")
    ax[0, 1].set(title="Figure 3: the tail against the dimension (3 seeds)", xlabel="ambient dimension h",
                 ylabel="distance", xscale="log",
                 yscale="log")
    names = list(TABLE4_LATENTS)
    short = [n.split(" (")[0] for n in names]
    for a, (key, title, log) in zip((ax[0, 2], ax[1, 0], ax[1, 1]), ((PSNR, "Table 4: PSNR (dB)", False),
                                                                    (PROBE, "Table 4: balanced probe", False),
                                                                    (RFID, "Table 4: rFID, world features", True))):
        labels = []
        for i, n in enumerate(names):  # the current default's draws where a latent has two, as the orders read them
            v = rows_draws(root, TABLE4_LATENTS[n], key)
            labels.append(short[i] + ("" if len(v) > 1 else "*"))
            if len(v) < 2:
                v = table4(root, TABLE4_LATENTS[n], key)
            a.plot([i] * len(v), list(v.values()), "o", color=f"C{i}", alpha=0.6)
            a.plot([i - 0.3, i + 0.3], [mean_se(v.values())[0]] * 2, "-", color=f"C{i}", lw=2)
        a.set_xticks(range(len(names)), labels, rotation=30, fontsize=8)
        a.set(title=title + "\n(dots: draws; *: constant-lr seeds)",
              yscale="log" if log else "linear")
    for seed in (0, 1):
        ys = [table4(root, r, PSNR).get(seed) for r in ("psvae-c8", "psvae", "psvae-c48")]
        ax[1, 2].plot([8, 24, 48], ys, "o-", label=f"seed {seed}")
    ax[1, 2].set(title="Figure 11: PS-VAE's PSNR against C\n(constant lr)", xlabel="latent channels C",
                 ylabel="PSNR (dB)")
    ax[1, 2].legend()
    got = sorted(draws(root).items())  # [((stage-0 seed, tokenizer seed), (PS-VAE, RAE))]
    ticks = [f"enc {e}\nseed {s}" for (e, s), _ in got]
    margins = [a - b for _, (a, b) in got]
    ax[0, 3].plot(range(len(got)), margins, "o", color="C0")
    if got:
        ax[0, 3].axhline(mean_se(margins)[0], color="C0", lw=1, ls="--", label="mean over draws")
        ax[0, 3].legend()
        ax[0, 3].set_ylim(min(0, min(margins)), max(0, max(margins)) * 1.15)  # the margin against zero
    ax[0, 3].set_xticks(range(len(got)), ticks, fontsize=8)
    ax[0, 3].set(title="Table 4 with the cool-down: PS-VAE - RAE\nper encoder x tokenizer draw",
                 ylabel="PSNR margin (dB)")
    for i, n in enumerate(("PS-VAE", "RAE")):
        ax[1, 3].plot(range(len(got)), [v[i] for _, v in got], "o-", color=f"C{list(TABLE4_LATENTS).index(n)}",
                      label=n)
    ax[1, 3].set_xticks(range(len(got)), ticks, fontsize=8)
    ax[1, 3].set(title="Table 4 with the cool-down: PSNR\nper encoder x tokenizer draw", ylabel="PSNR (dB)")
    ax[1, 3].legend()
    for a in ax.flat:
        a.title.set_fontsize(10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def build(root=RESULTS):
    """The page's text, every number read from the files under the results root."""
    return render([(title, fn(root)) for title, fn in SECTIONS])


def write_report(out=None, sheet=True, root=RESULTS):
    """Write REPORT.md (and, when its data is all there, its figure sheet report.png) into `out` (default: the
    results root it reads)."""
    out = out or root
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "REPORT.md"), "w") as f:
        f.write(build(root))
    result = {"report": os.path.join(out, "REPORT.md")}
    if sheet and sheet_ready(root):
        result["sheet"] = figure_sheet(root, os.path.join(out, "report.png"))
    return result


# ----------------------------------------------------------------------------------------------
# 6. Making the data: the runs the page reads, in dependency order
#    python evaluate.py report --run --budget-hours H [--preset cpu|world|tiny]
# ----------------------------------------------------------------------------------------------

# Per preset: the toy's flags, the latent seeds (with the recipes of each: None is the whole table, Figure 11's
# sweep included), table4's budget and other flags, the latents of the generation table (None: all), table4-gen's
# other flags and its editors' flags. cpu: the commands that made the committed results (CMD_* above); world:
# the presets' own sizes, for one GPU; tiny: the tests (one seed of the three latents the generation rows
# compare, 3 steps each, before the GAN starts; their generation table without Table 1's no-head rows, in one
# chunk of 2 steps).
RUN_SIZES = {
    "tiny": dict(toy=["--preset", "tiny", "--procs", "1"], seeds=[(0, "psvae,svae,rae")], budget=3,
                 table4=["--jobs", "1"], gen_recipes="psvae,svae,rae",
                 gen=["--budget", "2", "--every", "2", "--no-head-ablation", "--jobs", "1"], edit=[]),
    "cpu": dict(toy=["--preset", "cpu"], seeds=[(0, None), (1, None), (2, "psvae,rae")], budget=1200, table4=[],
                gen_recipes=None, gen=["--patch", "1", "--budget", "2500", "--every", "250"], edit=["--edit-budget", "1000"]),
    "world": dict(toy=["--preset", "world"], seeds=[(0, None), (1, None), (2, "psvae,rae")], budget=60000, table4=[],
                  gen_recipes=None, gen=[], edit=[]),
}
Step = collections.namedtuple("Step", "name argv done publish")  # argv: [script, its main()'s arguments...]


def steps(preset, root, runs, device=None):
    """The runs behind the page, in the order they depend on each other: Figure 3 and Eq. 1 (standing alone), stage 0,
    the latents on it (Table 4 and Figure 11), the generators on the latents (with mini-GenEval and the off-manifold
    ratio), the editors from the generators (with mini-GEdit). done(): its data exists (a step whose run folder a
    later, missing step reads counts as done only once that folder holds it); publish(): copy what it made to where
    this page reads it."""
    import evaluate
    import tokenizer
    z, dev = RUN_SIZES[preset], (["--device", device] if device else [])
    t4, s0 = os.path.join(runs, "table4"), os.path.join(runs, "table4", "stage0")
    gen_recipes = z["gen_recipes"] or ",".join(TABLE4_LATENTS.values())
    batch0 = evaluate.TABLE4_SIZES[preset].get("batch", tokenizer.PRESETS[preset]["batch_size"])  # as table4 does
    latents = [Step(f"the latents, seed {seed}" + (f" ({recipes})" if recipes else ""),
                    ["evaluate.py", "table4", "--preset", preset, "--runs", t4, "--results",
                     os.path.join(root, "table4", "twins"), "--budget", str(z["budget"]), *z["table4"], *dev,
                     *(["--seed", str(seed)] if seed else []), *(["--recipes", recipes] if recipes else [])],
                    lambda seed=seed, recipes=recipes: latents_done(root, t4, seed, recipes, gen_recipes),
                    lambda: publish_latents(root, t4, z["budget"], preset))
               for seed, recipes in z["seeds"]]
    gen = ["evaluate.py", "table4-gen", "--preset", preset, "--runs", t4, *z["gen"], *dev,
           *(["--recipes", z["gen_recipes"]] if z["gen_recipes"] else [])]
    return [
        Step("Figure 3: 2D against 8D", ["toy_manifold.py", *z["toy"], "--out", os.path.join(runs, "figure3")],
             *copies(root, {os.path.join(runs, "figure3", f): "figure3/" + f for f in ("figure3.json",
                                                                                        "figure3.png")})),
        Step("Figure 3: the tail against the dimension",
             ["toy_manifold.py", *z["toy"], "--dims", "2", "8", "32", "128", "--out", os.path.join(runs, "dims")],
             *copies(root, {os.path.join(runs, "dims", "figure3" + e): "figure3/dims" + e for e in (".json", ".png")})),
        Step("Eq. 1 at every dimension, float32 and float64",
             ["toy_manifold.py", "--check-eq1", "--dims", "2", "8", "32", "128"],
             *copies(root, {log_path(runs, "Eq. 1 at every dimension, float32 and float64"): "figure3/eq1_check.txt"})),
        Step("stage 0: the world encoder",
             ["tokenizer.py", "--preset", preset, "--stage", "0", "--out", s0, "--batch-size", str(batch0), *dev],
             lambda: os.path.isfile(os.path.join(s0, "stage0.pt")) or all(s.done() for s in latents), None),
        *latents,
        Step("the generators, mini-GenEval, the off-manifold ratio",
             [*gen, "--edit-budget", "0", "--results", os.path.join(runs, "generators")],
             lambda: have(root, GEN_JSON) or all(os.path.isfile(os.path.join(t4, r, "gen-ddt", "off-manifold.json"))
                                                 for r in gen_recipes.split(",")), None),
        Step("the editors, mini-GEdit, the generation table's JSON",
             [*gen, *z["edit"], "--json", os.path.join(root, GEN_JSON), "--results", os.path.join(root, "generation")],
             lambda: have(root, GEN_JSON), None),
    ]


def copies(root, pairs):
    """done() and publish() of a step whose data is files copied into the results root: {run file: path in root}."""
    def publish():
        for src, rel in pairs.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            shutil.copyfile(src, os.path.join(root, rel))
    return (lambda: have(root, *pairs.values())), publish


def latents_done(root, t4, seed, recipes, gen_recipes):
    """The table has this seed of these latents (None: every row of the page's Table 4); seed 0 also in the run
    folder while the generation table, which trains on them, is still to be made."""
    wanted = recipes.split(",") if recipes else TABLE4_LATENTS.values()
    return all(seed in table4_files(root, r) for r in wanted) and (seed != 0 or have(root, GEN_JSON) or all(
        os.path.isfile(os.path.join(t4, r, "measured.json")) for r in gen_recipes.split(",")))


def publish_latents(root, t4, budget, preset):
    """Copy each measured latent of the table4 run folder (<recipe>[-seed<N>]/measured.json) into the page's table
    folder as <recipe>_b<budget>[_seed<N>]_<preset>_measured.json, unless the table has that latent and seed."""
    for path in sorted(glob.glob(os.path.join(t4, "*", "measured.json"))):
        recipe, seed = re.fullmatch(r"(.+?)(?:-seed(\d+))?", os.path.basename(os.path.dirname(path))).groups()
        seed = int(seed or 0)
        if seed not in table4_files(root, recipe):
            dst = os.path.join(root, TABLE4_METRICS, f"{recipe}_b{budget}{f'_seed{seed}' if seed else ''}_{preset}"
                                                     "_measured.json")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(path, dst)


def log_path(runs, name):
    return os.path.join(runs, "logs", re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".log")


def run(preset, root=None, runs=None, budget_hours=None, device=None, sheet=True):
    """Run the steps whose data is missing, in order, each to its end (every one resumes a killed run of itself);
    no step starts after the budget's deadline. Then rebuild the page from whatever exists. -> what ran and is left."""
    root, runs = root or default_root(preset), runs or os.path.join("runs", f"report-{preset}")
    deadline = time.time() + 3600 * (math.inf if budget_hours is None else budget_hours)
    plan, ran = steps(preset, root, runs, device), []
    for i, step in enumerate(plan):
        head = f"report --run {i + 1}/{len(plan)} {step.name}:"
        if step.done():
            print(f"{head} its data exists, reused", flush=True)
            continue
        if time.time() >= deadline:
            left = [s.name for s in plan[i:] if not s.done()]
            print(f"report --run: the budget of {budget_hours} h is spent with {len(left)} step(s) left; the same "
                  f"command continues them (each resumes), then rebuilds the page", flush=True)
            break
        log, t0 = log_path(runs, step.name), time.time()
        print(f"{head} python {' '.join(step.argv)}  (log: {log})", flush=True)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            importlib.import_module(step.argv[0][:-len(".py")]).main(step.argv[1:])
        if step.publish:
            step.publish()
        if not step.done():
            raise RuntimeError(f"step {step.name!r} ran but its data is still missing; see {log}")
        ran.append(step.name)
        print(f"{head} done in {time.time() - t0:.0f} s", flush=True)
    return {**write_report(root, sheet=sheet, root=root), "ran": ran,
            "left": [s.name for s in plan if not s.done()]}


def default_root(preset):
    """cpu: results/, the committed pages' data; another preset: a results root of its own beside its runs (copy a
    run's data under results/ by hand when it becomes a result)."""
    return RESULTS if preset == "cpu" else os.path.join("runs", f"report-{preset}", "results")


def add_flags(p):
    """The flags of `python evaluate.py report`."""
    p.add_argument("--run", action="store_true", help="first run what the page lacks, in dependency order "
                   "(report.steps), reusing what exists; then rebuild the page")
    p.add_argument("--preset", choices=list(RUN_SIZES), default="cpu", help="sizes of those runs: cpu (the committed "
                   "results, a laptop), world (one GPU), tiny (the tests)")
    p.add_argument("--budget-hours", type=float, default=None, help="--run: no step starts after this many hours "
                   "(the same command continues); the page is rebuilt from what exists")
    p.add_argument("--results", default=None, help="the results root the page reads and --run writes (default "
                   "results/ for cpu, runs/report-<preset>/results for another preset)")
    p.add_argument("--runs", default=None, help="--run: run folder (default runs/report-<preset>)")


def command(args):
    """`python evaluate.py report [--run ...]` (evaluate.cmd_report)."""
    if args.run:
        return run(args.preset, args.results, args.runs, args.budget_hours, args.device)
    root = args.results or RESULTS
    return write_report(root=root)
