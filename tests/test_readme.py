"""The commands of README.md and results/ (README.md, LOG.md, REPORT.md) stay true: every `python X.py ...` /
`torchrun ... X.py ...` they show, in a bash block or inline, is parsed by that script's real
argument parser (nothing is run: the parse is stopped as soon as it succeeds). A renamed or
removed flag fails here. Commands that need an older commit are shown in ```text blocks, which
are not parsed."""
import argparse
import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("toy_manifold", "tokenizer", "generator", "edit", "evaluate", "experiments/bench", "experiments/draws",
           "experiments/recipe", "experiments/flow_where", "experiments/table1_fusion", "experiments/table3_encoders",
           "experiments/ceilings", "experiments/figure10")
DOCS = ("README.md", *(os.path.join("results", f) for f in ("README.md", "LOG.md", "REPORT.md")))
# placeholders the README uses where a parser wants a number; strings (RUN, PATH) parse as they are
PLACEHOLDERS = {"$s": "1", "S": "64"}


def readme_commands(doc):
    text = open(os.path.join(ROOT, doc)).read()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [ln.split(" #")[0] for ln in block.replace("\\\n", " ").splitlines() if not ln.startswith("#")]
    inline = re.sub(r"```.*?```", "", text, flags=re.S)  # inline code, not usage lines with [..]
    lines += re.findall(r"`([^`\[\n]*\b(?:python|torchrun)\b[^`\[\n]*)`", inline)
    cmds = []
    for line in lines:
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part)
            py = [i for i, w in enumerate(words) if re.fullmatch(r"[\w/]+\.py", w) and w[:-3] in SCRIPTS]
            if py:
                i = py[0]
                cmds.append((words[i][:-3], [PLACEHOLDERS.get(w, w) for w in words[i + 1:]]))
    return cmds


class Parsed(Exception):
    pass


def test_the_readme_shows_commands_of_every_stage_script():
    assert {s for s, _ in readme_commands("README.md")} >= set(SCRIPTS[:5])


@pytest.mark.parametrize("script,argv", [c for doc in DOCS for c in readme_commands(doc)],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_readme_command_parses(script, argv, monkeypatch):
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    module = importlib.import_module(script.replace("/", "."))
    with pytest.raises(Parsed):
        module.main(argv)


def test_a_wrong_flag_is_caught(monkeypatch, capsys):
    """The check above can fail: a flag the parser does not know ends in argparse's error."""
    with pytest.raises(SystemExit):
        test_readme_command_parses("generator", ["--preset", "cpu", "--no-such-flag", "1"], monkeypatch)
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
