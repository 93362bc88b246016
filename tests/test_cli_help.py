"""Every `--help` reads well in an 80-column terminal: no line wider than 80, no sentence broken by a
hard line break in the source (the terminal wraps prose itself), no example command so long that it
wraps onto a second line, and the top-level help shows examples."""
from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli.app import app

RUNNER = CliRunner()
EXAMPLE = re.compile(r"^\s*(Example[^:]*:\s*)?(labelprop |\*/5 |AWS_|eval |export |python |\$ )")
CONTINUATION = re.compile(r"^\s{3,}\S")       # an indented line continuing an example (after a backslash)


def _commands():
    root = typer.main.get_command(app)
    out = [((), root)]

    def walk(cmd, path):
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            out.append((path + (name,), sub))
            walk(sub, path + (name,))

    walk(root, ())
    return out


def _problems(text: str) -> list[str]:
    """Hard line breaks inside prose paragraphs, and example lines too long for 80 columns."""
    bad = []
    for para in re.split(r"\n\s*\n", text or ""):
        lines = [ln.rstrip() for ln in para.strip("\n").splitlines() if ln.strip()]
        for prev, ln in zip(lines, lines[1:]):
            if not (EXAMPLE.match(ln) or (CONTINUATION.match(ln) and prev.endswith("\\")) or EXAMPLE.match(prev)
                    and CONTINUATION.match(ln)):
                bad.append(f"line break inside a sentence: {prev.strip()!r} / {ln.strip()!r}")
        for ln in lines:
            if (EXAMPLE.match(ln) or CONTINUATION.match(ln)) and len(ln) + 1 > 80:
                bad.append(f"example wider than 80 columns ({len(ln) + 1}): {ln.strip()!r}")
    return bad


COMMANDS = _commands()


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) or "labelprop" for p, _ in COMMANDS])
def test_help_fits_80_columns_and_reads_as_sentences(path, cmd):
    r = RUNNER.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    too_long = [ln for ln in r.output.splitlines() if len(ln) > 80]
    assert not too_long, too_long
    assert _problems(cmd.help) == []
    # the summary in the command list is one sentence on one line
    assert "\n" not in (cmd.help or "").strip().split("\n\n")[0]


def test_the_checker_catches_what_it_should():
    assert _problems("One sentence broken\nin the middle.")
    assert _problems("  labelprop " + "x" * 80)
    assert not _problems("A sentence.\n\n  labelprop init camp\n  labelprop run camp\n\n"
                         "  labelprop ingest camp --results r.json \\\n      --features f.npy")


def test_top_level_help_has_examples():
    r = RUNNER.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert "Examples" in r.output and "labelprop demo" in r.output and "labelprop init" in r.output
