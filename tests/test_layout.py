"""The package layout's import rules, read from the source with ``ast``:

* the crowd server (``orchestrator/crowd_server/``) imports nothing from ``orchestrator``
  outside its own package, so it can be deployed alone and the orchestrator depends on it,
  never the other way round;
* the command line (``orchestrator/cli/``) is a shell: no module outside it imports it.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORCH = REPO / "orchestrator"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (top level or inside functions),
    relative imports resolved against the file's package."""
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)   # `from pkg import module`
    return out


def _outside(mods: set[str], top: str, inside: str) -> list[str]:
    return sorted(m for m in mods if (m == top or m.startswith(top + "."))
                  and not (m == inside or m.startswith(inside + ".")))


def test_import_parser_sees_every_form(tmp_path):
    pkg = tmp_path / "orchestrator" / "crowd_server"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("import orchestrator.search.search\nfrom orchestrator import errors\n"
                 "from .. import poll\nfrom . import api\n"
                 "def f():\n    from orchestrator.crowd.poll import poll_once\n")
    global REPO
    old, REPO = REPO, tmp_path
    try:
        mods = imported_modules(f)
    finally:
        REPO = old
    bad = _outside(mods, "orchestrator", "orchestrator.crowd_server")
    assert "orchestrator.search.search" in bad and "orchestrator.errors" in bad
    assert "orchestrator.poll" in bad and "orchestrator.crowd.poll" in bad
    assert "orchestrator.crowd_server.api" not in bad


def test_crowd_server_imports_nothing_else_of_the_orchestrator():
    files = sorted((ORCH / "crowd_server").rglob("*.py"))
    assert len(files) > 10
    bad = {str(f.relative_to(REPO)): _outside(imported_modules(f), "orchestrator", "orchestrator.crowd_server")
           for f in files}
    assert {f: m for f, m in bad.items() if m} == {}


def test_only_the_command_line_imports_the_command_line():
    bad = {}
    for f in sorted(ORCH.rglob("*.py")):
        if (ORCH / "cli") in f.parents:
            continue
        mods = [m for m in imported_modules(f) if m == "orchestrator.cli" or m.startswith("orchestrator.cli.")]
        if mods:
            bad[str(f.relative_to(REPO))] = mods
    assert bad == {}
