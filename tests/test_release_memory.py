"""The trainer hands the sampler's freed memory back to the OS before the update (glibc malloc_trim)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from onelayer.training.memory import release_freed_memory


def _rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_holes_in_the_heap_go_back_to_the_os():
    # 100 kB blocks sit below glibc's mmap threshold: they come from the heap. Freeing every other one leaves holes
    # that free() never returns (they are not at the heap's top); the trim does.
    keep, holes = [], []
    for _ in range(1500):
        holes.append(b"h" * 100_000)
        keep.append(b"k" * 100_000)
    del holes
    before = _rss_anon_mib()
    assert release_freed_memory() is True
    after = _rss_anon_mib()
    assert before - after > 80, (before, after)  # about 143 MiB of holes
    assert len(keep) == 1500 and keep[-1][:1] == b"k"


def test_the_trainer_releases_after_sampling(tiny_model_dirs, tmp_path, monkeypatch):
    from onelayer.training import trainer as trainer_mod
    from onelayer.training.config import TrainConfig
    from onelayer.training.trainer import Trainer

    calls = []
    monkeypatch.setattr(trainer_mod, "release_freed_memory", lambda: calls.append(1) or True)
    cfg = TrainConfig(model=str(tiny_model_dirs["qwen3"]), layers="1", out=str(tmp_path / "run"), steps=1,
                      num_tasks=2, num_generations=2, max_new_tokens=4, device="cpu")
    Trainer(cfg).sample(1)
    assert calls == [1, 1]  # before the KV cache is allocated and after it is freed
