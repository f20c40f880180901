"""The procedural code set (Code-v0, dataset="procedural"): correct references, tests that catch wrong answers,
disjoint splits, reproducible items, and the env and suites built on it."""

from __future__ import annotations

import ast
import json
import os
import string
import subprocess
import sys

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids and suites)
from onelayer.benchmarks.suites import CODE_GEN_ITEMS, default_suite, get_suite
from onelayer.envs import code_gen
from onelayer.envs.checker import check
from onelayer.envs.code_gen import (
    LEVELS,
    NUM_EXAMPLES,
    NUM_TESTS,
    eval_pool,
    off_by_one_solutions,
    train_problem,
)
from onelayer.envs.code_harness import run_tests
from onelayer.errors import UserError

TRAIN_PER_LEVEL = 60

# Runs programs against check(candidate) in a plain interpreter (a subprocess with a timeout): the bulk check of
# a thousand items; a sample goes through the real sandbox below.
_BULK_RUNNER = r"""
import json, sys
verdicts = {}
for item in json.load(sys.stdin):
    out = {}
    for label, source in item["programs"].items():
        try:
            namespace, tests = {}, {}
            exec(source, namespace)
            exec(item["test"], tests)
            tests["check"](namespace[item["entry_point"]])
            out[label] = True
        except Exception:
            out[label] = False
    verdicts[item["task_id"]] = out
json.dump(verdicts, sys.stdout)
"""


def _every_item():
    items = [p for level in LEVELS for p in eval_pool(level)]
    return items + [train_problem(level, i) for level in LEVELS for i in range(TRAIN_PER_LEVEL)]


def _first_expected(problem) -> object:
    check = ast.parse(problem.test).body[0]
    return ast.literal_eval(check.body[0].test.comparators[0])


def wrong_solutions(problem) -> dict[str, str]:
    """Wrong programs every item's tests must reject: constants, an argument as is, and off-by-one constants."""
    ep = problem.entry_point
    programs = {
        "return None": f"def {ep}(*args):\n    return None\n",
        "return the first argument": f"def {ep}(*args):\n    return args[0]\n",
        "return the last argument": f"def {ep}(*args):\n    return args[-1]\n",
        "return the first example's answer": f"def {ep}(*args):\n    return {_first_expected(problem)!r}\n",
    }
    for i, source in enumerate(off_by_one_solutions(problem)):
        programs[f"off by one #{i}"] = source
    return programs


@pytest.fixture(scope="module")
def bulk_verdicts():
    items = _every_item()
    payload = [{"task_id": p.task_id, "entry_point": p.entry_point, "test": p.test,
                "programs": {"reference": p.reference_code, **wrong_solutions(p)}} for p in items]
    done = subprocess.run([sys.executable, "-c", _BULK_RUNNER], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=300, check=True)
    return items, json.loads(done.stdout)


def test_every_reference_passes_its_tests_and_every_wrong_solution_fails(bulk_verdicts):
    items, verdicts = bulk_verdicts
    assert len(verdicts) == len(items) > 5 * (CODE_GEN_ITEMS + TRAIN_PER_LEVEL)
    failed = [tid for tid, v in verdicts.items() if not v["reference"]]
    assert not failed, f"references failing their own tests: {failed[:5]}"
    passed_wrong = [(tid, label) for tid, v in verdicts.items() for label, ok in v.items()
                    if ok and label != "reference"]
    assert not passed_wrong, f"wrong solutions accepted: {passed_wrong[:5]}"
    # Off-by-one variants exist for most items (templates whose every parameter is fixed have none).
    with_variants = sum(any(label.startswith("off by one") for label in v) for v in verdicts.values())
    assert with_variants > 0.8 * len(items)


def test_a_sample_passes_and_fails_the_same_way_in_the_real_sandbox():
    for level in LEVELS:
        for problem in (eval_pool(level)[level], train_problem(level, 7)):
            assert run_tests(problem, problem.reference_code).passed, problem.task_id
        wrongs = wrong_solutions(eval_pool(level)[0])
        for label in ("return None", next(k for k in reversed(wrongs) if k != "return the first example's answer")):
            outcome = run_tests(eval_pool(level)[0], wrongs[label])
            assert not outcome.passed and outcome.units_total == NUM_TESTS, (level, label)


def test_items_are_humaneval_shaped():
    for level in LEVELS:
        for problem in eval_pool(level)[:40] + tuple(train_problem(level, i) for i in range(20)):
            assert problem.source == "procedural" and problem.key
            prompt = ast.parse(problem.prompt).body
            assert len(prompt) == 1 and prompt[0].name == problem.entry_point
            assert ast.get_docstring(prompt[0]).count(">>> ") == NUM_EXAMPLES
            check_fn = ast.parse(problem.test).body[0]
            assert check_fn.name == "check" and len(check_fn.body) == NUM_TESTS
            text = problem.prompt + problem.test + problem.canonical_solution
            assert set(text) <= set(string.printable), problem.task_id  # the env's observation charset


def test_every_template_names_its_functions_validly_and_states_its_parameters():
    for level in LEVELS:
        for template in code_gen.TEMPLATES[level]:
            docs = set()
            for params in template.space:
                spec = template.make(*params)
                assert all(name.isidentifier() for name in spec.names), (template.key(params), spec.names)
                docs.add(spec.doc)
            # Different parameters, different words: the prompt says which function it asks for.
            assert len(docs) == len(template.space), template.name


def test_eval_pools_are_fixed_lists_that_each_suite_fits_in():
    for level in LEVELS:
        pool = eval_pool(level)
        assert len(pool) >= CODE_GEN_ITEMS
        assert len(pool) == len(code_gen.eval_keys(level))  # no eval key was given up for want of good tests
        assert [p.task_id for p in pool] == [f"procedural/L{level}/eval/{i}" for i in range(len(pool))]
        assert len({p.key for p in pool}) == len(pool)  # each function once
        # Several templates, not one family: the first suite items already mix them.
        assert len({p.key.partition("(")[0] for p in pool[:CODE_GEN_ITEMS]}) >= 8


def test_train_and_eval_share_no_function_and_no_prompt():
    for level in LEVELS:
        evals = eval_pool(level)
        train = [train_problem(level, i) for i in range(300)]
        assert {p.key for p in evals}.isdisjoint(p.key for p in train)
        assert {p.prompt for p in evals}.isdisjoint(p.prompt for p in train)
        assert {p.test for p in evals}.isdisjoint(p.test for p in train)
        # By construction: the key decides the split, and both splits only take keys of their own.
        assert {code_gen.split_of(p.key) for p in evals} == {"eval"}
        assert {code_gen.split_of(p.key) for p in train} == {"train"}
        every_eval_key = {t.key(params) for t, params in code_gen.eval_keys(level)}
        assert {p.key for p in evals} <= every_eval_key
        assert len({p.key for p in train}) > 100  # the stream varies


# What every item of the set is, as one hash (run here and in other interpreters).
_FINGERPRINT = """
import hashlib, json
from onelayer.envs.code_gen import LEVELS, eval_pool, train_problem

def fingerprint():
    items = [p for level in LEVELS for p in eval_pool(level)]
    items += [train_problem(level, i) for level in LEVELS for i in (0, 1, 12345, 2**31 - 1)]
    text = json.dumps([(p.task_id, p.prompt, p.test, p.canonical_solution, p.key) for p in items])
    return hashlib.sha256(text.encode()).hexdigest()
"""


def test_the_same_index_gives_the_same_item_in_any_process():
    namespace: dict = {}
    exec(_FINGERPRINT, namespace)
    here = namespace["fingerprint"]()
    for hash_seed in ("1", "12345"):  # another interpreter, another string-hash seed: the same items
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", _FINGERPRINT + "print(fingerprint())"], capture_output=True,
                             text=True, timeout=120, env=env, check=True)
        assert out.stdout.strip() == here
    assert train_problem(2, 5) == train_problem(2, 5) and train_problem(2, 5) != train_problem(2, 6)


# ---- the env ---------------------------------------------------------------------------------------

def make(**kw):
    return gym.make("onelayer/Code-v0", dataset="procedural", **kw)


def test_env_serves_the_eval_pool_and_the_train_stream_by_seed():
    evals = make(level=2, split="eval").unwrapped
    assert evals.num_tasks == len(eval_pool(2)) and evals.task_ids()[0] == "procedural/L2/eval/0"
    obs, info = evals.reset(options={"task_id": 3})
    assert info["task_id"] == "procedural/L2/eval/3" and eval_pool(2)[3].prompt.strip() in obs

    train = make(level=2, split="train")
    assert train.unwrapped.num_tasks is None  # an unbounded stream, like Math-v0's
    obs1, info1 = train.reset(seed=11)
    obs2, info2 = make(level=2, split="train").reset(seed=11)
    assert (obs1, info1["task_id"]) == (obs2, info2["task_id"])  # equal seeds: one GRPO group
    assert info1["task_id"].startswith("procedural/L2/train/")
    replay, _ = train.reset(options={"task_id": info1["task_id"]})
    assert replay == obs1
    assert len({train.reset(seed=s)[1]["task_id"] for s in range(20)}) == 20
    with pytest.raises(UserError, match="procedural/L2/train/0"):
        train.reset(options={"task_id": "procedural/L2/eval/3"})


@pytest.mark.parametrize("split", ["train", "eval"])
def test_env_passes_every_contract_check(split):
    results = check(lambda: make(level=3, split=split), max_steps=4)
    assert all(r.ok for r in results), [r for r in results if not r.ok]


def test_single_turn_rewards_the_reference_and_not_a_wrong_answer():
    env = make(level=1, split="eval")
    problem = eval_pool(1)[0]
    env.reset(options={"task_id": 0})
    _, reward, terminated, _, info = env.step(f"Sure.\n```python\n{problem.reference_code}```")
    assert (reward, terminated, info["passed"]) == (1.0, True, True)
    env.reset(options={"task_id": 0})
    _, reward, terminated, _, info = env.step(f"```python\n{wrong_solutions(problem)['return None']}```")
    assert (reward, terminated, info["passed"], info["attempt"]) == (0.0, True, False, 1)


def test_multi_turn_episode_gives_test_feedback_then_accepts_the_fix():
    env = make(level=2, split="train", mode="multi", max_attempts=3)
    obs, info = env.reset(seed=4)
    problem = env.unwrapped._problem
    wrong = wrong_solutions(problem)["return the first argument"]
    obs, reward, terminated, truncated, info = env.step(f"```python\n{wrong}```")
    assert (reward, terminated, truncated, info["attempt"]) == (0.0, False, False, 1)
    assert "did not pass the tests (attempt 1 of 3)" in obs and "Failed test: assert candidate(" in obs
    assert problem.prompt.strip() in obs  # the problem is restated under the feedback
    obs, reward, terminated, _, info = env.step(f"```python\n{problem.reference_code}```")
    assert (obs, reward, terminated, info["passed"], info["attempt"]) == ("", 1.0, True, True, 2)


@pytest.mark.parametrize("kwargs", [{"level": 0}, {"level": 6}, {"level": "two"}, {"level": 1.5}, {"level": True},
                                    {"split": "all"}])
def test_bad_options_are_one_line_user_errors(kwargs):
    with pytest.raises(UserError) as e:
        make(**kwargs)
    assert "\n" not in str(e.value) and ("level" in str(e.value) or "split" in str(e.value))


def test_level_applies_only_to_the_procedural_set():
    with pytest.raises(UserError, match="only to dataset='procedural'"):
        gym.make("onelayer/Code-v0", dataset="humaneval", level=2)


def test_a_bad_level_on_the_command_line_is_exit_2_with_one_line():
    from typer.testing import CliRunner

    from onelayer.cli import app

    res = CliRunner().invoke(app, ["envs", "check", "onelayer/Code-v0", "--env-kwargs", "dataset=procedural,level=9"])
    assert res.exit_code == 2
    assert "unknown procedural code level 9" in res.output and len(res.output.strip().splitlines()) == 1


# ---- suites -----------------------------------------------------------------------------------------

def test_code_gen_suites_score_pass_at_1_greedy_on_each_level():
    for level in LEVELS:
        suite = get_suite(f"code-gen-l{level}")
        assert (suite.env, suite.metric, suite.temperature, suite.num_samples) == ("onelayer/Code-v0", "pass@1", 0.0, 1)
        assert suite.env_kwargs == {"dataset": "procedural", "level": level}
        assert suite.num_items == CODE_GEN_ITEMS <= len(eval_pool(level)) and suite.max_new_tokens >= 128
    assert default_suite("code").name == "humaneval"  # HumanEval stays Code-v0's (transfer) suite
