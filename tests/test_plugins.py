"""A third-party package extends onelayer without editing it: its envs and suites go through the real CLI.

The plugin is the worked example of docs/adding_an_environment.md, built from that page as
a separate package in a temporary directory (pyproject with an ``onelayer.plugins`` entry
point, a single-turn text env, a multi-turn env with admissible actions and a suite),
installed with pip into a folder of its own that the CLI's
subprocesses see on ``PYTHONPATH``, so the entry point is found by the same
``importlib.metadata`` lookup a pip-installed package gets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

DOC = TESTS.parent / "docs" / "adding_an_environment.md"


def _doc_files() -> dict[str, str]:
    """The plugin's three files, as docs/adding_an_environment.md shows them (the page is the test's source)."""
    text = DOC.read_text()
    blocks = re.findall(r"```\w+\n# file: ([\w/.]+)\n(.*?)```", text, re.S)
    files = {name: body for name, body in blocks if name in ("pyproject.toml", "oneplug/__init__.py", "oneplug/envs.py")}
    assert set(files) == {"pyproject.toml", "oneplug/__init__.py", "oneplug/envs.py"}, sorted(files)
    return files


def _write_package(root: Path, init_py: str | None = None) -> Path:
    pkg = root / "src"
    (pkg / "oneplug").mkdir(parents=True)
    for name, body in _doc_files().items():
        (pkg / name).write_text(body)
    if init_py is not None:
        (pkg / "oneplug" / "__init__.py").write_text(init_py)
    return pkg


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The plugin pip-installed into a folder of its own (its dist-info declares the entry point)."""
    root = tmp_path_factory.mktemp("plugin")
    target = root / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(_write_package(root))], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(target.glob("oneplug_test-*.dist-info/entry_points.txt"))
    return target


def cli(*args, path: list[Path] = (), cwd=None, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [*path, TESTS])), **(env_extra or {}))
    env.pop("ONELAYER_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "onelayer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


TRAIN = json.dumps({"num_tasks": 2, "num_generations": 2, "max_new_tokens": 4, "micro_batch_size": 4})


def test_an_installed_plugin_is_checked_listed_evaluated_and_swept(installed, tiny_model_dirs, tmp_path):
    r = cli("suites", path=[installed])
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("parity-eval"))
    assert "oneplug/Parity-v0" in line and "accuracy" in line and "oneplug" in line.split("accuracy", 1)[1]
    assert any(ln.startswith("math-l1") and "onelayer" in ln for ln in r.stdout.splitlines())

    r = cli("envs", "check", "oneplug/Parity-v0", path=[installed])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "text answers, single-turn, metric accuracy" in r.stdout
    assert "10 eval tasks >= the 8 its default suite parity-eval asks for" in r.stdout

    out = tmp_path / "eval.json"
    r = cli("eval", "--model", tiny_model_dirs["qwen3"], "--suite", "parity-eval", "--out", out, path=[installed])
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    res = res["suites"]["parity-eval"] if "suites" in res else res
    assert res["env"] == "oneplug/Parity-v0" and res["num_items"] == 8 and "accuracy" in res

    sweep = tmp_path / "sweep"
    r = cli("sweep", "--out", sweep, "--model", tiny_model_dirs["qwen3"], "--domains", "oneplug/Parity-v0",
            "--layers", "1", "--seeds", "1", "--steps", "1", "--algo", "grpo", "--eval-items", "4",
            "--train", TRAIN, "--quiet", path=[installed])
    assert r.returncode == 0, r.stderr
    configs = list(sweep.glob("jobs/**/config.json"))
    assert configs and all(json.loads(c.read_text())["config"]["env"] == "oneplug/Parity-v0" for c in configs)
    results = [json.loads(ln) for ln in (sweep / "results.jsonl").read_text().splitlines()]
    assert {r["domain"] for r in results} == {"oneplug/Parity-v0"}
    assert {(r["method"], r["target"]) for r in results} == {("base", "none"), ("full", "all"), ("layer", "1")}
    assert all(set(r["scores"]) == {"parity-eval"} for r in results)
    numbers = json.loads((sweep / "report" / "numbers.json").read_text())
    rows = [row for row in numbers["rows"] if row["domain"] == "oneplug/Parity-v0" and row["suite"] == "in-domain"]
    assert {row["target"] for row in rows} >= {"base", "full", "1"}
    assert "oneplug/Parity-v0" in (sweep / "report" / "report.md").read_text()


def test_a_multi_turn_plugin_env_trains_with_gigpo_through_plugin_flag(tiny_model_dirs, tmp_path):
    src = _write_package(tmp_path)  # not installed: loaded with --plugin from the path
    run = tmp_path / "run"
    r = cli("train", "--plugin", "oneplug", "--model", tiny_model_dirs["qwen3"], "--env", "oneplug/Pick-v0",
            "--algo", "gigpo", "--layers", "1", "--steps", "1", "--num-tasks", "2", "--num-generations", "2",
            "--max-new-tokens", "6", "--eval-size", "3", "--out", run, "--quiet", path=[src])
    assert r.returncode == 0, r.stderr
    stored = json.loads((run / "config.json").read_text())
    assert stored["config"]["env"] == "oneplug/Pick-v0" and stored["metric"] == "success_rate"
    step = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "invalid_action_rate" in step  # an acting env: actions parsed against the admissible set


@pytest.mark.parametrize("case", ["unregistered domain", "plugin raises", "installed plugin raises",
                                  "suite of a missing env", "eval size too large"])
def test_plugin_and_domain_errors_are_one_line_with_exit_2(case, tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["qwen3"]
    path, args, want = [], [], ""
    if case == "unregistered domain":
        args, want = ["sweep", "--out", tmp_path / "s", "--domains", "oneplug/Nope-v0", "--dry-run"], \
            "unknown domain or env id 'oneplug/Nope-v0'"
    elif case == "plugin raises":
        (tmp_path / "badplug.py").write_text("raise RuntimeError('boom at import')\n")
        path, args, want = [tmp_path], ["--plugin", "badplug", "suites"], \
            "plugin 'badplug' (--plugin) failed to import: RuntimeError: boom at import"
    elif case == "installed plugin raises":
        src = _write_package(tmp_path, "raise ImportError('missing dependency xyz')\n")
        target = tmp_path / "site"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                        str(target), str(src)], check=True, capture_output=True, timeout=300)
        path, args, want = [target], ["suites"], "plugin 'oneplug' (entry point 'oneplug' of oneplug-test) failed"
    elif case == "suite of a missing env":
        (tmp_path / "suiteplug.py").write_text(
            "import onelayer\nonelayer.register_suite('x', env_id='nope/Missing-v0', num_items=4, metric='accuracy')\n")
        path, args, want = [tmp_path], ["--plugin", "suiteplug", "suites"], "unknown domain or env id 'nope/Missing-v0'"
    else:
        args, want = ["train", "--model", model, "--env", "onelayer/GuessNumber-v0", "--eval-size", "20", "--steps",
                      "1", "--out", tmp_path / "r"], "eval split has 8 tasks but --eval-size is 20"
    r = cli(*args, path=path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()
