"""Named evaluation suites: pass@k, reproducibility, missing data, and `onelayer eval --suite`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from onelayer.benchmarks.suites import (
    SUITES,
    SuiteDataMissing,
    check_available,
    get_suite,
    parse_suites,
    pass_at_k,
)
from onelayer.cli import app
from onelayer.errors import UserError


def test_pass_at_k_matches_the_unbiased_estimator_by_hand():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))  # = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k failures: some k-subset always passes
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 5)


def test_every_suite_names_its_domain_metric_and_a_fixed_item_rule():
    for s in SUITES.values():
        assert s.domain in ("math", "code", "agentic")
        assert s.metric == {"math": "accuracy", "code": f"pass@{s.k[0]}", "agentic": "success_rate"}[s.domain]
        assert s.num_samples >= max(s.k)
    assert [s.name for s in parse_suites("math-l1, humaneval")] == ["math-l1", "humaneval"]
    with pytest.raises(UserError, match="unknown suite 'mathh'"):
        get_suite("mathh")


def test_missing_real_alfworld_data_says_what_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))  # nothing downloaded there
    with pytest.raises(SuiteDataMissing, match="alfworld-download"):
        check_available(get_suite("alfworld-eval-id"))


def test_eval_suite_is_reproducible_and_reports_per_item_outcomes(tiny_model_dirs, tmp_path):
    runner = CliRunner()
    model = str(tiny_model_dirs["qwen3"])
    outs = []
    for i in range(2):
        out = tmp_path / f"one{i}.json"
        res = runner.invoke(app, ["eval", "--model", model, "--suite", "math-l2", "--num-items", "6", "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(json.loads(out.read_text()))
    a, b = outs
    assert a["suite"] == "math-l2" and "accuracy" in a and a["num_items"] == 6 and len(a["items"]) == 6
    assert a["settings"]["item_list"] == "eval split items 0..5"
    assert [i["response"] for i in a["items"]] == [i["response"] for i in b["items"]]
    assert a["accuracy"] == b["accuracy"]


def test_several_suites_nest_results_and_list_missing_data(tiny_model_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "none"))
    out = tmp_path / "many.json"
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dirs["llama"]), "--suite",
                                   "math-l1,alfworld-eval-ood,math-l3", "--num-items", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data["suites"]) == {"math-l1", "math-l3"}
    assert "alfworld-download" in data["missing"]["alfworld-eval-ood"]
    assert "(missing)" in res.output and "math-l3" in res.output
    for r in data["suites"].values():
        assert r["num_items"] == 3 and len(r["items"]) == 3


def test_suite_flag_refuses_conflicting_sampling_flags(tiny_model_dirs):
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dirs["llama"]), "--suite", "math-l1",
                                   "--temperature", "0.7"])
    assert res.exit_code == 2 and "--suite fixes" in res.output
