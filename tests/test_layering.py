"""Layering (issue 15): the library never imports the command line, and the board modules import one way.

Read from the source (every ``import``, also the ones inside functions), so a lazy import counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as (pyproject's package-dir).
PACKAGES = {"qfx": "qfx", "hw": "qfx.hw", "sim": "qfx.sim", "boards": "qfx.boards", "hls_templates": "qfx.hls_templates"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join((pkg, *rel))] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Modules ``name`` imports (absolute names; ``from X import y`` also counts ``X.y``)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _is_cli(name: str) -> bool:
    return name == "qfx.cli" or name.endswith(".cli")


def test_no_library_module_imports_the_command_line():
    offenders = {name: sorted(i for i in _imports(name, path) if i == "qfx.cli" or i.startswith("qfx.cli."))
                 for name, path in _modules().items() if not _is_cli(name)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_library_modules_import_no_cli_module_at_all():
    """Not ``qfx.cost.cli`` / ``qfx.sim.cli`` / ``qfx.explore.cli`` either (the package ``__init__`` that
    re-exports its command and ``qfx.gen``, itself a command, are the exceptions)."""
    mods = _modules()
    allowed = {"qfx.explore", "qfx.gen"}
    offenders = {name: sorted(i for i in _imports(name, path) if i in mods and _is_cli(i))
                 for name, path in mods.items() if not _is_cli(name) and name not in allowed}
    assert {k: v for k, v in offenders.items() if v} == {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def test_board_modules_import_one_way():
    mods = {n: p for n, p in _modules().items() if n.startswith("qfx.boards.")}
    graph = {n: {i for i in _imports(n, p) if i in mods} for n, p in mods.items()}
    assert _cycles(graph) == []
    assert "qfx.boards.platform" not in graph["qfx.boards.board"]


def test_cli_and_library_form_no_cycle():
    """No cycle through ``qfx.cli``: it imports the demo pipeline / explore, they must not import it back."""
    mods = _modules()
    graph = {n: {i for i in _imports(n, p) if i in mods and i != n} for n, p in mods.items()}
    assert [c for c in _cycles(graph) if "qfx.cli" in c] == []
