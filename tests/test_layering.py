"""Data flows one way: envs <- agents <- training <- benchmarks <- CLI.

Every module of the package is parsed (function-local imports included) and no module may
import from a part above its own. ``onelayer.errors``, ``onelayer.io`` and
``onelayer.plugins`` are shared utilities any part may use; the top package itself
(``import onelayer``, ``from onelayer import ...``) sits with the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANK = {"envs": 0, "agents": 1, "training": 2, "benchmarks": 3, "cli": 4, "top": 4}
FOLDERS = {"envs": "envs", "agents": "agents", "training": "training", "benchmarks": "benchmarks"}
UTILITIES = {"onelayer.errors", "onelayer.io", "onelayer.plugins"}


def _part_of_module(module: str) -> str | None:
    """The part an absolute onelayer module belongs to (None: a utility or not onelayer)."""
    if module in UTILITIES or not (module == "onelayer" or module.startswith("onelayer.")):
        return None
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if parts[1] in FOLDERS:
        return parts[1]
    if parts[1] == "cli":
        return "cli"
    return None if f"onelayer.{parts[1]}" in UTILITIES else "top"


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "onelayer":  # from onelayer import envs / __version__ / ...
                out += [(node.lineno, f"onelayer.{a.name}" if a.name in FOLDERS or f"onelayer.{a.name}" in UTILITIES
                         else "onelayer") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def upward_imports() -> list[str]:
    bad = []
    sources = [(part, path) for part, folder in FOLDERS.items() for path in (REPO / folder).rglob("*.py")]
    sources.append(("cli", REPO / "onelayer" / "cli.py"))
    for part, path in sources:
        for line, module in _imports(ast.parse(path.read_text(), str(path))):
            target = _part_of_module(module)
            if target is not None and RANK[target] > RANK[part]:
                bad.append(f"{path.relative_to(REPO)}:{line} ({part}) imports {module} ({target})")
    return bad


def test_no_module_imports_from_a_part_above_its_own():
    assert upward_imports() == []


def test_the_rule_catches_an_upward_import(tmp_path):
    tree = ast.parse("def f():\n    from onelayer.benchmarks.sweep_results import layer_ranking\n")
    (line, module), = _imports(tree)
    assert _part_of_module(module) == "benchmarks" and RANK["benchmarks"] > RANK["training"]
    assert _part_of_module("onelayer.errors") is None and _part_of_module("onelayer") == "top"
    assert [m for _, m in _imports(ast.parse("from onelayer import __version__, envs, plugins"))] == [
        "onelayer", "onelayer.envs", "onelayer.plugins"]
