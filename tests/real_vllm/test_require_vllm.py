"""``ONELAYER_REQUIRE_VLLM`` (tests/real_vllm/conftest.py): the real-vLLM tests run by pytest in a subprocess with
vLLM hidden, as on a machine without it. Not marked ``vllm``: the main test run checks the switch CI relies on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REAL_TESTS = "tests/real_vllm/test_vllm_real.py"


@pytest.fixture(scope="module")
def run_without_vllm(tmp_path_factory):
    """Runs the real-vLLM tests under pytest in a python where ``import vllm`` fails; returns (exit code, output)."""
    plugin_dir = tmp_path_factory.mktemp("hide_vllm")
    # None in sys.modules makes find_spec("vllm") None and `import vllm` fail, even in the vLLM venv.
    (plugin_dir / "hide_vllm.py").write_text('import sys\nsys.modules["vllm"] = None\n')

    def run(require: str | None) -> tuple[int, str]:
        env = {k: v for k, v in os.environ.items() if k != "ONELAYER_REQUIRE_VLLM"}
        if require is not None:
            env["ONELAYER_REQUIRE_VLLM"] = require
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), env.get("PYTHONPATH")]))
        done = subprocess.run([sys.executable, "-m", "pytest", REAL_TESTS, "-m", "vllm", "-p", "hide_vllm",
                               "-p", "no:cacheprovider", "-q", "-rs"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout + done.stderr

    return run


def _count(outcome: str, output: str) -> int:
    found = re.findall(rf"(\d+) {outcome}", output.splitlines()[-1])
    return int(found[0]) if found else 0


def test_without_the_switch_a_missing_vllm_skips_every_real_test_with_the_install_hint(run_without_vllm):
    code, out = run_without_vllm(None)
    assert code == 0, out
    skipped = _count("skipped", out)
    assert skipped >= 10 and _count("passed", out) == 0 and _count("error", out) == 0, out
    assert "needs vLLM: bash .ci/vllm_env.sh" in out


def test_with_the_switch_a_missing_vllm_fails_every_real_test_with_a_one_line_reason(run_without_vllm):
    code, out = run_without_vllm("1")
    assert code == 1, out
    assert _count("skipped", out) == 0 and _count("passed", out) == 0, out
    failed = _count("failed", out) + _count("errors?", out)
    reason = "ONELAYER_REQUIRE_VLLM=1 and this real-vLLM test was skipped: needs vLLM: bash .ci/vllm_env.sh"
    reasons = [line for line in out.splitlines() if reason in line]
    assert failed >= 10 and len(reasons) >= failed, out


def test_an_unrecognised_value_of_the_switch_stops_pytest_instead_of_skipping(run_without_vllm):
    code, out = run_without_vllm("yes")
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert "ONELAYER_REQUIRE_VLLM='yes': set it to 1" in out
    assert _count("skipped", out) == 0
