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


class _AnswersOne:
    """Always answers "1" (pure position preference) and records every prompt it saw, decoded."""

    def __init__(self, tokenizer):
        self.tokenizer, self.prompts = tokenizer, []

    def generate(self, prompts, params):
        from onelayer.agents.engine import Generation

        self.prompts += [self.tokenizer.decode(p) for p in prompts]
        one = self.tokenizer.encode("1", add_special_tokens=False)
        return [Generation(one, [0.0] * len(one), "stop") for _ in prompts]


def test_greedy_agentic_passes_average_over_action_orders(tokenizer, tmp_path, monkeypatch):
    from onelayer.benchmarks.suites import run_suite
    from onelayer.envs import alfworld_gen

    monkeypatch.setenv("ONELAYER_CACHE", str(tmp_path))
    for split, n in (("train", 3), ("eval", 2)):
        monkeypatch.setitem(alfworld_gen.EASY_SETS, split, {**alfworld_gen.EASY_SETS[split], "n": n})
    engine = _AnswersOne(tokenizer)
    suite = get_suite("alfworld-gen-easy").with_overrides(num_items=2, num_samples=3, max_turns=2)
    res = run_suite(suite, engine, tokenizer, action_format="choice", history_length=0)
    assert res["settings"]["num_samples"] == 3 and len(res["by_sample"]) == 3
    assert res["success_rate"] == pytest.approx(sum(res["by_sample"]) / 3)
    assert res["pass@1"] == pytest.approx(res["success_rate"])  # the same mean, item by item
    first_turns = [p for p in engine.prompts if "(step 1)" in p]
    assert len(first_turns) == 2 * 3
    lists = [p.split("Admissible actions:\n", 1)[1].split("\nReply with", 1)[0].split("\n") for p in first_turns]
    assert len({tuple(lst) for lst in lists}) > 2  # each pass numbers an item's actions in its own order...
    assert len({tuple(sorted(line.split(". ", 1)[1] for line in lst)) for lst in lists}) <= 2  # ...of the same ones


def test_a_suites_score_over_several_samples_is_their_mean(monkeypatch, tokenizer):
    from onelayer.agents.evaluation import EvalResult, ItemOutcome
    from onelayer.benchmarks import suites

    solved = {0: {0, 1}, 100_003: {1}, 200_006: set()}  # items each pass (sample seed) gets right

    def fake_policy(engine, prompts, env_id, kw, *, num_items, seed, metric, **_):
        items = [ItemOutcome(i, f"t{i}", i in solved[seed], 0.0, 1, "") for i in range(num_items)]
        return EvalResult(metric, sum(i.success for i in items) / num_items, num_items, items)

    monkeypatch.setattr(suites, "evaluate_policy", fake_policy)
    res = suites.run_suite(get_suite("math-l1").with_overrides(num_items=4, num_samples=3), None, tokenizer)
    assert res["by_sample"] == [0.5, 0.25, 0.0] and res["accuracy"] == pytest.approx(0.25)
    assert [i["samples_correct"] for i in res["items"]] == [1, 2, 0, 0]
    one = suites.run_suite(get_suite("math-l1").with_overrides(num_items=4), None, tokenizer)
    assert one["accuracy"] == 0.5 and "by_sample" not in one

def test_num_samples_overrides_a_suite_and_is_checked(tiny_model_dirs, tmp_path):
    runner, model = CliRunner(), str(tiny_model_dirs["qwen3"])
    out = tmp_path / "two.json"
    res = runner.invoke(app, ["eval", "--model", model, "--suite", "math-l1", "--num-items", "3", "--num-samples", "2",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["settings"]["num_samples"] == 2 and data["accuracy"] == pytest.approx(sum(data["by_sample"]) / 2)
    assert all(len(i["samples"]) == 2 for i in data["items"])
    res = runner.invoke(app, ["eval", "--model", model, "--suite", "humaneval-pass@k", "--num-samples", "4"])
    assert res.exit_code == 2 and "humaneval-pass@k (pass@10)" in res.output
    res = runner.invoke(app, ["eval", "--model", model, "--env", "onelayer/Math-v0", "--num-samples", "2"])
    assert res.exit_code == 2 and "--num-samples goes with --suite" in res.output


def test_later_passes_merge_into_the_same_result_as_one_run(monkeypatch, tokenizer):
    from onelayer.agents.evaluation import EvalResult, ItemOutcome
    from onelayer.benchmarks import suites

    solved = {0: {0, 1}, 100_003: {1}, 200_006: {2, 3}, 300_009: {0}}  # items each pass (sample seed) gets right
    calls = []

    def fake_policy(engine, prompts, env_id, kw, *, num_items, seed, metric, **_):
        calls.append(seed)
        items = [ItemOutcome(i, f"t{i}", i in solved[seed], 0.0, 1, f"r{seed}") for i in range(num_items)]
        return EvalResult(metric, sum(i.success for i in items) / num_items, num_items, items)

    monkeypatch.setattr(suites, "evaluate_policy", fake_policy)
    suite = get_suite("math-l1").with_overrides(num_items=4)
    whole = suites.run_suite(suite.with_overrides(num_samples=4), None, tokenizer)
    calls.clear()
    first = suites.run_suite(suite, None, tokenizer)  # one pass: no per-sample lists yet
    rest = suites.run_suite(suite.with_overrides(num_samples=3), None, tokenizer, first_sample=1)
    assert calls == [0, 100_003, 200_006, 300_009]  # the later part drew only the new passes, with their own seeds
    merged = suites.merge_samples(first, rest)
    for key in ("accuracy", "by_sample", "pass@1"):
        assert merged[key] == pytest.approx(whole[key])
    assert merged["items"] == whole["items"] and merged["settings"]["num_samples"] == 4
    assert merged["by_sample"] == [0.5, 0.25, 0.5, 0.25]
    with pytest.raises(UserError, match="must start at pass 1"):
        suites.merge_samples(first, suites.run_suite(suite.with_overrides(num_samples=2), None, tokenizer, first_sample=2))
    with pytest.raises(UserError, match="differing: temperature"):
        suites.merge_samples(first, suites.run_suite(suite.with_overrides(temperature=0.5), None, tokenizer, first_sample=1))


def test_a_stored_result_extends_only_with_passes_of_the_same_evaluation(monkeypatch, tokenizer):
    from onelayer.agents.evaluation import EvalResult, ItemOutcome
    from onelayer.benchmarks import suites

    def fake_policy(engine, prompts, env_id, kw, *, num_items, seed, metric, **_):
        items = [ItemOutcome(i, f"t{i}", i == seed % 3, 0.0, 1, "") for i in range(num_items)]
        return EvalResult(metric, sum(i.success for i in items) / num_items, num_items, items)

    monkeypatch.setattr(suites, "evaluate_policy", fake_policy)
    suite = get_suite("math-l1").with_overrides(num_items=3, num_samples=2)
    done = suites.run_suite(suite, None, tokenizer)
    assert suites.extension_mismatch(done, suite) == []
    renamed = dict(done, suite="my-math")  # another name for the same evaluation still extends
    assert suites.extension_mismatch(renamed, suite) == []
    merged = suites.merge_samples(renamed, suites.run_suite(suite.with_overrides(num_samples=1), None, tokenizer,
                                                             first_sample=2))
    assert merged["settings"]["num_samples"] == 3
    code = get_suite("humaneval-pass@k").with_overrides(num_items=3, num_samples=2)  # k = 1, 5, 10
    part = suites.merge_samples(suites.run_suite(code, None, tokenizer),
                                suites.run_suite(code.with_overrides(num_samples=3), None, tokenizer, first_sample=2))
    assert "pass@1" in part and "pass@5" in part and "pass@10" not in part  # no pass@10 from 5 samples
    assert suites.extension_mismatch(done, suite.with_overrides(max_new_tokens=7, env_kwargs={"level": 2})) == [
        "max_new_tokens", "env_kwargs"]
