"""``ONELAYER_REQUIRE_VLLM=1``: a real-vLLM test that would be skipped fails instead, with the skip's reason.

Without vLLM these tests skip, so that a user without it still gets a green run. CI sets the switch on the line
that runs them in the vLLM venv (.ci/run): there a missing vLLM, or any other skip in this folder, would
otherwise make a green run that tested nothing. Unset or ``0``: the normal skip; any other value stops pytest
with a usage error (an unrecognised value must not quietly mean "skip").
"""

from __future__ import annotations

import os

import pytest

REQUIRE_VLLM = "ONELAYER_REQUIRE_VLLM"


def vllm_required(value: str | None) -> bool:
    """Whether a skip in this folder is a failure, from the value of ``ONELAYER_REQUIRE_VLLM``."""
    if value in (None, "", "0"):
        return False
    if value == "1":
        return True
    raise pytest.UsageError(f"{REQUIRE_VLLM}={value!r}: set it to 1 (a skipped real-vLLM test fails, as in CI) "
                            "or 0 / unset it (the test is skipped)")


def pytest_configure(config):
    vllm_required(os.environ.get(REQUIRE_VLLM))  # a bad value stops the run before any test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not vllm_required(os.environ.get(REQUIRE_VLLM)):
        return
    # A skip's longrepr is (path, line, "Skipped: <reason>").
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE_VLLM}=1 and this real-vLLM test was skipped: {reason} (unset {REQUIRE_VLLM} to allow it)"
