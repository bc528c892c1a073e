"""results/REPORT.md stays true to the data: rebuilt from the committed results it is the same page,
byte for byte; the verdict rule gives the verdicts it states; every relative link of the guide, the
results index and the report points at a file that exists; the README's headline quotes no number
the report does not show.

    OMP_NUM_THREADS=1 python -m pytest -q -n 0 tests/test_report.py
"""
import json
import os
import re

import pytest

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ("README.md", "results/README.md", "results/REPORT.md", "results/LOG.md")


def test_the_report_is_the_one_the_data_makes(tmp_path):
    report.write_report(str(tmp_path), sheet=False)
    fresh = (tmp_path / "REPORT.md").read_text()
    committed = open(os.path.join(ROOT, "results", "REPORT.md")).read()
    assert fresh == committed, "results/REPORT.md is stale: run `python evaluate.py report` and commit it"


@pytest.mark.parametrize("gaps,expected", [
    ([(3.0, 1.0)], "reproduced"),                       # the paper's sign, 3 s.e.
    ([(-3.0, 1.0)], "missed (contradicted)"),           # the opposite sign, 3 s.e.
    ([(1.0, 1.0)], "missed (unresolved)"),              # the paper's sign at 1 s.e.: cannot tell
    ([(-0.5, 1.0)], "missed (unresolved)"),             # the opposite sign within 2 s.e.
    ([(1.0, None)], "missed (unresolved)"),             # one seed: no s.e., cannot confirm
    ([(3.0, 1.0), (2.5, 1.0)], "reproduced"),           # a chain, every gap confirmed
    ([(3.0, 1.0), (0.5, 1.0)], "partly"),               # one gap confirmed, one unresolved
    ([(3.0, 1.0), (-1.0, 1.0)], "partly"),              # the opposite sign, but within 2 s.e.
    ([(3.0, 1.0), (-2.5, 1.0)], "missed (contradicted)"),  # one gap contradicted
    ([], "not measured yet"),
])
def test_the_verdict_rule(gaps, expected):
    assert report.verdict(gaps) == expected


def test_gaps_pair_seeds_when_both_sides_have_them():
    m, se = report.gap({0: 19.0, 1: 20.0, 2: 21.0}, {0: 15.0, 1: 16.5, 2: 16.5})  # differences 4, 3.5, 4.5
    assert m == pytest.approx(4.0) and se == pytest.approx(0.5 / 3 ** 0.5)
    m, se = report.gap({0: 1.0, 1: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})  # other seeds: unpaired, errors added
    assert m == pytest.approx(2.0) and se == pytest.approx(1.0)
    assert report.gap({0: 1.0}, {0: 0.0}) == (1.0, None)  # one seed: no standard error


def test_generation_rows_read_the_table_json_once_a_run_writes_it(tmp_path):
    """Without any data the rows are not measured; with only the printed table they say the JSON is missing;
    with the JSON (what `table4-gen --json` writes) they are judged."""
    root = str(tmp_path)
    assert {r["verdict"] for r in report.section_table4_generation(root)} == {"not measured yet"}
    os.makedirs(tmp_path / "generation")
    (tmp_path / report.GEN_TABLE).write_text("| a table printed, no JSON |\n")
    assert [r["verdict"] for r in report.section_table4_generation(root)] == \
        ["not available as data", "not measured yet", "not available as data"]  # (the middle: gen_vs_ceiling's)
    geneval = lambda v: {"overall_geneval_rules": v, "overall_geneval_rules_stderr": 0.01}  # noqa: E731
    rows = {"PS-VAE": {"geneval": geneval(0.30), "gedit": {"instruction_hit": 0.5, "n_edits": 240}},
            "S-VAE": {"geneval": geneval(0.20), "gedit": {"instruction_hit": 0.5, "n_edits": 240}},
            "RAE": {"geneval": geneval(0.10), "gedit": {"instruction_hit": 0.6, "n_edits": 240}}}
    (tmp_path / report.GEN_JSON).write_text(json.dumps({"rows": rows}))
    gen, _, edit = report.section_table4_generation(root)
    assert gen["verdict"] == "reproduced" and "PS-VAE 0.300 ± 0.010" in gen["mini"]
    assert edit["verdict"] == "missed (contradicted)"  # RAE above S-VAE by 2.2 binomial standard errors


def draws_row(root):
    """The Table 4 row that reads the encoder x tokenizer draws (the one that links their table)."""
    return next(r for r in report.section_table4_recon(root) if report.DRAWS_TABLE in r["links"])


@pytest.mark.parametrize("rae_scores, expected", [((0.10, 0.10), "reproduced"), ((0.10, 0.30), "missed (contradicted)"),
                                                   ((0.10, 0.19), "partly")])
def test_gen_vs_ceiling_row_judges_one_gap_per_set_of_tokenizers(tmp_path, rae_scores, expected):
    """PS-VAE 0.2 +- 0.02 on two sets, RAE as given (+- 0.02): gaps of 0.1 +- 0.028 confirm, -0.1 contradicts,
    +0.01 neither; a set without both latents adds no gap."""
    root = str(tmp_path)
    assert report.gen_vs_ceiling_row(root)["verdict"] == "not measured yet"
    os.makedirs(tmp_path / "generation")
    rows = [dict(tokenizers=t, latent=la, generator=g, generator_se=0.02, ceiling=0.3)
            for t, rae in zip(("short", "long"), rae_scores) for la, g in (("psvae", 0.2), ("rae", rae))]
    rows.append(dict(tokenizers="alone", latent="psvae", generator=0.0, generator_se=0.01, ceiling=0.3))
    (tmp_path / report.GEN_VS_CEILING).write_text(json.dumps({"rows": rows}))
    r = report.gen_vs_ceiling_row(root)
    assert r["verdict"] == expected and "alone" not in r["mini"]
    assert f"long: PS-VAE 0.200 ± 0.020 (ceiling 0.300), RAE {rae_scores[1]:.3f} ± 0.020" in r["mini"]


def test_the_margin_over_rae_reads_the_draws(tmp_path):
    """PS-VAE's PSNR margin over RAE comes from draws.json: each draw's margin and their mean ± s.e. are printed, a
    made-up file moves them, and a margin of the wrong sign contradicts the paper."""
    root = str(tmp_path)
    assert draws_row(root)["verdict"] == "not measured yet"
    os.makedirs(tmp_path / "table4")
    made_up = [(0, 0, 20.0, 18.5), (0, 1, 19.0, 17.0), (1, 0, 21.0, 18.0)]  # stage-0 seed, seed, PS-VAE, RAE
    margins = [p - r for _, _, p, r in made_up]
    m = sum(margins) / len(margins)
    se = (sum((x - m) ** 2 for x in margins) / (len(margins) - 1) / len(margins)) ** 0.5

    def write(rows):
        (tmp_path / report.DRAWS_JSON).write_text(json.dumps({"command": "python experiments/draws.py --seeds 0,1",
                                                              "rows": [{"stage0_seed": e, "seed": s, "psvae": p,
                                                                        "rae": r} for e, s, p, r in rows]}))
        return draws_row(root)

    got = write(made_up)
    assert all(f"{x:+.2f}" in got["mini"] for x in margins)
    assert f"{m:+.2f} dB ± {se:.2f}" in got["mini"] and f"{len(made_up)} draws" in got["mini"]
    assert got["verdict"] == "reproduced" and "--seeds 0,1" in got["command"]
    flipped = write([(e, s, r, p) for e, s, p, r in made_up])
    assert f"{-m:+.2f} dB ± {se:.2f}" in flipped["mini"] and flipped["verdict"] == "missed (contradicted)"
    assert report.DRAWS_TABLE in report.build(root)


@pytest.mark.parametrize("before,after,expected", [(0.40, 0.30, "missed (contradicted)"),  # a quarter lost
                                                     (0.40, 0.39, "missed (unresolved)"),  # within noise of 2%
                                                     (0.40, 0.50, "reproduced")])  # more than the paper kept
def test_table3_understanding_row_reads_the_json(tmp_path, before, after, expected):
    """SigLIP's understanding after stage 2 (the paper: kept, a drop of 2%) from table3_encoders.json: one gap,
    after - before x the paper's after/before, with binomial standard errors over the n held-out pairs."""
    root, n, chance = str(tmp_path), 256, 0.05
    assert report.section_table3(root)[0]["verdict"] == "not measured yet"
    os.makedirs(tmp_path / "table4")
    probe = {"before": {"probe_balanced": 0.7}, "after": {"probe_balanced": 0.6}}
    enc, recon = {"readout_psnr": 28.0, "twin_gap_db": 12.0}, lambda p: {"psnr": p}  # noqa: E731
    (tmp_path / report.TABLE3_JSON).write_text(json.dumps({"encoders": {"twins": {"recon": recon(18.5)}, "siglip": {
        "zero_shot": {"before": before, "after": after, "chance": chance, "n": n}, "encoder_probe": probe,
        "encoder": enc, "recon": recon(23.0)}}}))
    got = report.section_table3(root)[0]
    r = 1652 / 1685  # MME-P after / before in the paper's Table 3
    se = (after * (1 - after) / n + r * r * before * (1 - before) / n) ** 0.5
    assert f"before x 1652/1685 {after - r * before:+.3f} ± {se:.3f}" in got["mini"] and "0.700 -> 0.600" in got["mini"]
    assert f"kept {after / before:.2f} of it (the paper 0.98)" in got["mini"]
    assert got["verdict"] == expected and "PS-VAE on it 23.00 dB PSNR (on the DINOv2-role encoder 18.50)" in got["mini"]


def test_orders_read_the_current_defaults_draws_once_they_hold_every_row(tmp_path):
    """An order comes from the all-rows draws (paired by draw) once they exist, else from the earlier table."""
    root = str(tmp_path)
    claim = ("P-VAE", "PS-VAE", "RAE", "S-VAE")
    args = ("PSNR order", "paper", claim, report.PSNR)
    assert report.order_row(root, *args)["verdict"] == "not measured yet"
    os.makedirs(tmp_path / "table4")
    psnr = {"pvae": (20.0, 20.5), "psvae": (19.0, 19.2), "rae": (16.0, 16.6), "svae": (16.5, 15.9), "vae": (20, 20)}
    rows = [{"stage0_seed": d, "seed": 0, "metrics": {r: {"psnr": v[d], "probe_balanced": 0.5, "rfid": 50.0}
                                                      for r, v in psnr.items()}} for d in (0, 1)]
    (tmp_path / report.ROWS_JSON).write_text(json.dumps({"command": "python experiments/draws.py --all",
                                                         "rows": rows[:1]}))
    assert report.order_row(root, *args)["verdict"] == "not measured yet"  # one draw: no noise, not used
    (tmp_path / report.ROWS_JSON).write_text(json.dumps({"command": "python experiments/draws.py --all", "rows": rows}))
    got = report.order_row(root, *args)
    assert got["mini"].startswith("current default: P-VAE 20.25 ± 0.25 (2 draws)") and "--all" in got["command"]
    # P-VAE - PS-VAE (1.0, 1.3) and PS-VAE - RAE (3.0, 2.6) confirm; RAE - S-VAE (-0.5, +0.7) cannot tell
    assert "RAE - S-VAE +0.10 ± 0.60" in got["mini"] and got["verdict"] == "partly"


def relative_links(page):
    text = open(os.path.join(ROOT, page)).read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            yield target.split("#")[0]


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    base = os.path.dirname(os.path.join(ROOT, page))
    missing = [t for t in relative_links(page) if not os.path.exists(os.path.join(base, t))]
    assert not missing, f"{page} links to files that do not exist: {missing}"


def test_the_headline_links_the_report_and_quotes_only_its_numbers():
    readme = open(os.path.join(ROOT, "README.md")).read()
    headline = readme.split("## Headline results")[1].split("\n## ")[0]
    assert "results/REPORT.md" in headline
    shown = open(os.path.join(ROOT, "results", "REPORT.md")).read()
    prose = re.sub(r"\([^)]*\.(?:md|png|json)\)|Sec\. \d+\.\d+", "", headline)  # links and section numbers
    numbers = re.findall(r"(?<![\w.])\d+\.\d+", prose)
    assert numbers, "the headline quotes no measured number at all"
    missing = [n for n in numbers if n not in shown]
    assert not missing, f"the README's headline quotes numbers the report does not show: {missing}"


def not_yet(page):
    """How many rows of a page say that no run has made their data."""
    return sum(f"**{v}**" in line for line in page.splitlines() for v in ("not measured yet", "not available as data"))


def mtimes(folder):
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_report_run_makes_what_the_page_lacks_in_order_and_reuses_it(tmp_path, monkeypatch):
    """`report --run` on an empty results root: the steps Figure 3 and Eq. 1 (the tiny toy, seconds) run, their files
    land where the page reads them, and the page has fewer unmeasured rows; a second call reruns nothing; a spent
    budget starts no step and says so. The whole list, latents and generation table included: the slow test below."""
    import evaluate
    res, runs = tmp_path / "results", tmp_path / "runs"
    empty = not_yet(report.build(str(res)))
    every_step = report.steps
    monkeypatch.setattr(report, "steps", lambda *a, **k: every_step(*a, **k)[:3])  # the toy's steps only
    argv = ["report", "--run", "--preset", "tiny", "--results", str(res), "--runs", str(runs)]
    out = evaluate.main(argv)
    assert len(out["ran"]) == 3 and not out["left"]
    assert {p.name for p in (res / "figure3").iterdir()} == {"figure3.json", "figure3.png", "dims.json", "dims.png",
                                                             "eq1_check.txt"}
    assert not_yet(open(out["report"]).read()) == empty - 4  # Eq. 1 twice, Figure 3 twice
    before = mtimes(tmp_path)
    assert evaluate.main(argv)["ran"] == []
    assert {k: v for k, v in mtimes(tmp_path).items() if not k.endswith("REPORT.md")} == \
        {k: v for k, v in before.items() if not k.endswith("REPORT.md")}
    (res / "figure3" / "dims.json").unlink()
    spent = evaluate.main([*argv, "--budget-hours", "0"])
    assert spent["ran"] == [] and spent["left"] == ["Figure 3: the tail against the dimension"]



@pytest.mark.slow
def test_report_run_tiny_end_to_end(tmp_path):
    """Every step of the tiny preset on an empty results root, in order: Figure 3 and Eq. 1, stage 0, the latents
    (copied into the table folder the page reads), the generators, the editors and the generation table's JSON;
    the page then judges the Table 4 and generation rows, and a second call reruns nothing."""
    import evaluate
    res, runs = tmp_path / "results", tmp_path / "runs"
    empty = not_yet(report.build(str(res)))
    argv = ["report", "--run", "--preset", "tiny", "--results", str(res), "--runs", str(runs)]
    out = evaluate.main(argv)
    assert out["ran"] == [s.name for s in report.steps("tiny", str(res), str(runs))] and not out["left"]
    assert sorted(os.listdir(res / report.TABLE4_METRICS)) == [f"{r}_b3_tiny_measured.json" for r in ("psvae", "rae",
                                                                                                    "svae")]
    assert set(json.load(open(res / report.GEN_JSON))["rows"]) == {"PS-VAE", "S-VAE", "RAE"}
    page = open(out["report"]).read()
    assert not_yet(page) < empty
    for claim in ("linear probe: RAE > S-VAE > PS-VAE", "GenEval: PS-VAE > S-VAE > RAE",
                  "editing: PS-VAE > S-VAE > RAE"):
        assert "**not" not in next(line for line in page.splitlines() if line.startswith(f"| {claim}"))
    before = mtimes(tmp_path)
    again = evaluate.main(argv)
    assert again["ran"] == [] and not again["left"]
    assert {k: v for k, v in mtimes(tmp_path).items() if not k.endswith("REPORT.md")} == \
        {k: v for k, v in before.items() if not k.endswith("REPORT.md")}
