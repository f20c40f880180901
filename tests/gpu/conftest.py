"""GPU tests: skipped, with the reason, where CUDA or vLLM is missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# The checks shared with the CPU real-vLLM tests (tests/real_vllm/engine_checks.py): that folder is no package
# (see its module docstring), so it is put on the path here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "real_vllm"))


def _missing() -> str | None:
    if not torch.cuda.is_available():
        return f"needs a CUDA GPU (torch {torch.__version__} sees none)"
    if importlib.util.find_spec("vllm") is None:
        return "needs vLLM: pip install 'onelayer[vllm]' on the CUDA machine"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    if reason is None:
        return
    here = str(__file__).rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))
