"""RESULTS.md is generated from the stored result files: the committed tables match them, and a stale one is caught."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onelayer.benchmarks import results as res
from onelayer.errors import UserError

REPO_RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_committed_results_tables_match_the_stored_files():
    """The CI check: every generated block of results/RESULTS*.md equals what the stored files give, no table
    sits outside a block, and every hand-recorded table is listed with its reason."""
    problems = res.check(REPO_RESULTS)
    assert not problems, "\n".join(problems) + "\n(run `python -m onelayer.benchmarks.results --write` and reread " \
                                                "the prose next to each changed block)"


def test_every_table_deliberately_not_generated_is_still_in_a_document():
    """NOT_GENERATED lists only hand-recorded tables that exist, so the list cannot outgrow what is true."""
    hand = {b.spec for d in res.load(REPO_RESULTS) for b in d.blocks if b.kind == "hand"}
    assert hand == set(res.NOT_GENERATED)


def test_the_corrected_numbers_come_from_the_stored_files():
    """The two numbers found wrong by hand: the choice-format study's paired-by-game p-values and the math
    sweep's single-layer peak-memory range, now generated."""
    pooled = res.build("study-pooled studies/alfworld-easy", REPO_RESULTS)
    assert "gigpo minus base: +0.025" in pooled and "grpo minus base: +0.049" in pooled
    assert "p = 0.43" not in pooled and "p = 0.13" not in pooled
    jobs = res.build("sweep-jobs sweeps/cpu-math", REPO_RESULTS)
    assert "single-layer jobs (18): wall-clock 257-1,182 s, peak RSS 2,865-5,724 MiB (2.8-5.6 GiB)" in jobs


# ---------------------------------------------------------------- a tiny synthetic results directory


def _job(job: str, method: str, target: str, seed: int, score: float, layer: int | None = None) -> dict:
    return {"job": job, "domain": "math", "seed": seed, "method": method, "target": target, "layer": layer,
            "algo": "none" if method == "base" else "grpo", "score": score, "scores": {"math-l1": score},
            "lr": 3e-5, "lr_scale": 1.0, "run_dir": f"/elsewhere/{job}", "wall_s": 100.0 + seed,
            "peak_rss_mb": 2048.0, "weight_change": {"1": 0.2, "2": 0.3} if method == "full" else {},
            "extra": {"train_time_s": 90.0, "mean_reward": 0.25}}


def _write_sweep(d: Path, layer1: float = 0.5) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "sweep.json").write_text(json.dumps({"num_layers": 4, "eval_suites": {"math": ["math-l1"]}}))
    rows = [_job("math/base", "base", "none", -1, 0.2)]
    for s, full in ((0, 0.6), (1, 0.7)):
        rows += [_job(f"math/grpo/s{s}/full", "full", "all", s, full),
                 _job(f"math/grpo/s{s}/layer-1", "layer", "1", s, layer1 + 0.01 * s, 1),
                 _job(f"math/grpo/s{s}/layer-2", "layer", "2", s, 0.3, 2)]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


DOC = """# Results

Prose with no table.

<!-- results:table sweep-summary sweeps/tiny -->
<!-- /results:table -->

<!-- results:table sweep-jobs sweeps/tiny -->
<!-- /results:table -->

```text
| a table in a code fence is not a results table |
```
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A results dir with one two-seed sweep and a RESULTS.md whose blocks were just written."""
    _write_sweep(tmp_path / "sweeps" / "tiny")
    (tmp_path / "RESULTS.md").write_text(DOC)
    assert res.write(tmp_path) == []
    return tmp_path


def test_write_fills_the_blocks_from_the_stored_sweep(tiny):
    text = (tiny / "RESULTS.md").read_text()
    # C_1 = (mean(0.5, 0.51) - 0.2) / (mean(0.6, 0.7) - 0.2) = 0.305 / 0.45
    assert re.search(r"^\| 1 \| 2 \| 0\.5050 ± 0\.0071 \| 0\.68 \[", text, re.M)
    assert "| 1 | 0, 1 | 0.500, 0.510 | 0.25, 0.25 | 90, 90 | 100, 101 | 2048, 2048 |" in text
    assert text.startswith("# Results\n\nProse with no table.\n")  # prose outside the blocks is kept
    assert res.check(tiny) == []


def test_check_catches_a_changed_number_and_names_the_table_and_line(tiny, capsys):
    _write_sweep(tiny / "sweeps" / "tiny", layer1=0.4)  # a rerun changes layer 1's scores
    problems = res.check(tiny)
    assert len(problems) == 2
    assert problems[0].startswith("RESULTS.md: table 'sweep-summary sweeps/tiny' is stale at line ")
    assert "committed:   | 1 | 2 | 0.5050" in problems[0] and "stored data: | 1 | 2 | 0.4050" in problems[0]
    assert "table 'sweep-jobs sweeps/tiny'" in problems[1]
    assert res.main([str(tiny), "--check"]) == 1
    assert "is stale" in capsys.readouterr().out
    assert res.main([str(tiny), "--write"]) == 0
    assert res.check(tiny) == []
    assert res.main([str(tiny), "--check"]) == 0


def test_check_rejects_a_table_outside_every_block_and_an_unlisted_hand_table(tiny):
    doc = tiny / "RESULTS.md"
    doc.write_text(doc.read_text() + "\n| x | y |\n| --- | --- |\n| 1 | 2 |\n\n"
                   "<!-- results:hand my-notes -->\n| a |\n| --- |\n<!-- /results:hand -->\n")
    line = doc.read_text().split("\n").index("| x | y |") + 1
    problems = res.check(tiny)
    assert [p for p in problems if "outside every results block" in p] == [  # one message per table, not per row
        f"RESULTS.md line {line}: a table outside every results block: mark it `<!-- results:table KIND PATH -->` "
        "(generated) or `<!-- results:hand NAME -->` (NAME listed in benchmarks/results.py NOT_GENERATED with the "
        "reason)"]
    assert any("hand-recorded table 'my-notes' is not listed in NOT_GENERATED" in p for p in problems)


def test_a_missing_source_or_bad_block_fails_closed(tiny):
    doc = tiny / "RESULTS.md"
    doc.write_text(DOC.replace("sweeps/tiny -->\n<!-- /results:table -->\n\n```", "sweeps/gone -->\n"
                                                                               "<!-- /results:table -->\n\n```"))
    with pytest.raises(UserError, match="sweeps/gone does not exist"):
        res.check(tiny)
    assert res.main([str(tiny), "--check"]) == 2
    doc.write_text("<!-- results:table no-such-kind sweeps/tiny -->\n<!-- /results:table -->\n")
    with pytest.raises(UserError, match="unknown results block kind 'no-such-kind'"):
        res.check(tiny)
    doc.write_text("<!-- results:table sweep-jobs sweeps/tiny -->\nno end marker\n")
    with pytest.raises(UserError, match="never closed"):
        res.check(tiny)
    doc.write_text("<!-- results:table sweep-jobs sweeps/tiny bogus=1 -->\n<!-- /results:table -->\n")
    with pytest.raises(UserError, match="bogus"):
        res.check(tiny)


def test_the_default_results_dir_is_the_current_directory_s_results_folder(tiny, tmp_path_factory, monkeypatch,
                                                                          capsys):
    elsewhere = tmp_path_factory.mktemp("no-results-here")
    monkeypatch.chdir(elsewhere)
    assert res.main(["--check"]) == 2
    assert "results directory results does not exist" in capsys.readouterr().err
    monkeypatch.chdir(tiny.parent)
    (tiny.parent / "results").symlink_to(tiny, target_is_directory=True)
    assert res.main(["--check"]) == 0
