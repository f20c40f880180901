"""Code-v0 rewards only what the candidate gets right: no test unit is free, no training task pays a constant."""

from __future__ import annotations

import ast
import json
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs.code_data import CONSTANT_REWARD_TASKS, load_problems, load_split, split_of
from onelayer.envs.code_harness import plan_tests, run_tests

HUMANEVAL = {p.task_id: p for p in load_problems("humaneval")}


# ---- HumanEval: every unit depends on the candidate ----------------------------------------------------

class PoisonUsed(Exception):
    """A test looked at the poisoned candidate's result."""


def _refuse(*_args, **_kwargs):
    raise PoisonUsed


class Poison:
    """A result no test can accept without looking at it: every operation on it raises."""

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __bool__ = __len__ = __iter__ = _refuse
    __contains__ = __getitem__ = __getattr__ = __float__ = __int__ = __index__ = __abs__ = __neg__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __mod__ = __rmod__ = __pow__ = __rpow__ = __round__ = __call__ = _refuse


def units_a_poisoned_candidate_passes(task_id: str) -> list[str]:
    """Run the problem's test steps here, with every solution function returning a Poison; the units that pass.

    Independent of how the harness decides what a unit is: a unit that passes here never
    looked at anything the candidate returned, so a stub would get it for free.
    """
    problem = HUMANEVAL[task_id]
    plan = plan_tests(problem)
    ns = {"__name__": "tests"}
    for name in plan.names:
        ns[name] = lambda *a, **k: Poison()
    exec(plan.context, ns)
    exec(plan.prelude, ns)
    ns["candidate"] = ns[problem.entry_point]
    passed = []
    for source, is_unit in plan.steps:
        try:
            exec(source, ns)
        except Exception:
            continue  # setup that failed leaves the later units a NameError: they fail too
        if is_unit:
            passed.append(source)
    return passed


def test_humaneval_has_the_trivial_asserts_this_guards_against():
    # 48 statements such as `assert True, "This prints if this assert fails 1 (good for debugging!)"`.
    trivial = [src for p in HUMANEVAL.values() for src, _ in plan_tests(p).steps
               if isinstance(ast.parse(src).body[0], ast.Assert) and src.startswith("assert True")]
    assert len(trivial) == 48


def test_no_humaneval_unit_passes_without_looking_at_the_candidate():
    free = {t: units for t in HUMANEVAL if (units := units_a_poisoned_candidate_passes(t))}
    assert free == {}


def test_assert_true_and_asserts_on_constants_are_setup_not_units():
    # HumanEval/83: `assert True, "This prints if this assert fails 1 ..."`, five asserts on the candidate,
    # then `assert True, "... 2 ..."`.
    plan = plan_tests(HUMANEVAL["HumanEval/83"])
    assert plan.num_units == 5 and not any(src.startswith("assert True") for src in plan.unit_texts)
    assert [unit for _, unit in plan.steps] == [False, True, True, True, True, True, False]  # still run, in order
    p = HUMANEVAL["HumanEval/83"]
    stub = run_tests(p, p.prompt + "    return None\n")
    assert (stub.units_passed, stub.units_total, stub.pass_fraction) == (0, 5, 0.0)
    assert run_tests(p, p.prompt + p.canonical_solution).passed


@pytest.mark.parametrize("test,units", [
    ("def check(candidate):\n    assert True\n    assert 1 == 1, 'x'\n    assert candidate(2) == 4\n", 1),
    ("def check(candidate):\n    out = candidate(2)\n    assert out == 4\n    k = 3\n    assert k == 3\n", 1),
    # dependence through loops, containers the candidate's results go into, and helpers that call it
    ("def check(candidate):\n    res = []\n    for x in range(3):\n        res.append(candidate(x))\n"
     "    assert res == [0, 2, 4]\n", 1),
    ("def check(candidate):\n    twice = lambda x: candidate(candidate(x))\n    assert twice(1) == 4\n", 1),
    ("def helper(x):\n    return double(x) + 1\n\ndef check(candidate):\n    assert helper(1) == 3\n", 1),
    # a verdict carried by control flow: the candidate must raise
    ("def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n        pass\n"
     "    else:\n        assert False, 'no error'\n", 1),
    # a loop that calls the candidate around a constant-true assert still tests nothing
    ("def check(candidate):\n    for x in range(3):\n        candidate(x)\n        assert True\n"
     "    assert candidate(0) == 0\n", 1),
    ("assert double(2) == 4\nassert abs(-1) == 1\n", 1),  # top-level asserts
])
def test_units_are_the_asserts_that_depend_on_the_candidate(test, units):
    from onelayer.envs.code_data import CodeProblem

    problem = CodeProblem("Units/0", 'def double(x):\n    """Twice x."""\n', "double", test=test)
    assert plan_tests(problem).num_units == units


def test_tests_with_no_assert_on_the_candidate_are_a_data_error():
    from onelayer.envs.code_data import CodeProblem
    from onelayer.errors import UserError

    problem = CodeProblem("Free/0", 'def double(x):\n    """Twice x."""\n', "double",
                          test="def check(candidate):\n    candidate(1)\n    assert True, 'always'\n")
    with pytest.raises(UserError, match=r"no assert of its tests depends on the solution.*assert double\(\.\.\.\)"):
        plan_tests(problem)


# Problems where None (or a falsy value) is the right answer for some inputs: honest partial credit for a stub.
NONE_IS_RIGHT = {
    "HumanEval/12": 1,  # longest([]) == None
    "HumanEval/52": 2,  # below_threshold: two `assert not candidate(...)`
    "HumanEval/56": 8,  # correct_bracketing: eight `assert not candidate(...)` of 12
    "HumanEval/61": 8,  # correct_bracketing (parentheses): the same
    "HumanEval/90": 3,  # next_smallest(...) == None three times
    "HumanEval/128": 1,  # prod_signs([]) == None
    "HumanEval/137": 1,  # compare_one(1, 1) == None
    "HumanEval/162": 1,  # string_to_md5('') == None
}


def test_a_stub_returning_none_earns_only_the_units_where_none_is_right():
    def stub(task_id):
        p = HUMANEVAL[task_id]
        return run_tests(p, p.prompt + "    return None\n")

    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(zip(HUMANEVAL, pool.map(stub, HUMANEVAL)))
    earned = {t: o.units_passed for t, o in outcomes.items() if o.units_passed}
    assert earned == NONE_IS_RIGHT
    assert all(o.units_total == plan_tests(HUMANEVAL[t]).num_units for t, o in outcomes.items())


# ---- MBPP+: no task whose grading pays a constant gives training rewards ---------------------------------

# EvalPlus-schema rows (MBPP+ itself cannot be had offline here): three ordinary tasks and the two whose
# EvalPlus oracles accept a constant, under their real task ids and entry points.
MBPP_PLUS_ROWS = [
    {"task_id": "Mbpp/2", "entry_point": "similar_elements", "atol": 0,
     "prompt": '"""\nWrite a function to find the shared elements from the given two lists.\n"""\n',
     "canonical_solution": "\ndef similar_elements(test_tup1, test_tup2):\n"
                           "  return tuple(set(test_tup1) & set(test_tup2))\n",
     "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4], [5, 4, 3, 7]]], "plus_input": []},
    {"task_id": "Mbpp/3", "entry_point": "is_not_prime", "atol": 0,
     "prompt": '"""\nWrite a python function to identify non-prime numbers.\n"""\n',
     "canonical_solution": "\ndef is_not_prime(n):\n  return n < 2 or any(n % i == 0 for i in range(2, int(n ** 0.5) + 1))\n",
     "base_input": [[2], [10], [35], [37]], "plus_input": []},
    {"task_id": "Mbpp/4", "entry_point": "heap_queue_largest", "atol": 0,
     "prompt": '"""\nWrite a function to find the n largest integers from a given list of numbers, returned in '
               'descending order.\n"""\n',
     "canonical_solution": "\nimport heapq\ndef heap_queue_largest(nums, n):\n  return heapq.nlargest(n, nums)\n",
     "base_input": [[[25, 35, 22, 85, 14, 65, 75, 22, 58], 3], [[1, 0, 2], 2]], "plus_input": []},
    {"task_id": "Mbpp/164", "entry_point": "are_equivalent", "atol": 0,
     "prompt": '"""\nWrite a function to determine if the sum of the divisors of two integers are the same.\n"""\n',
     "canonical_solution": "\ndef div_sum(n):\n  return sum(i for i in range(1, n) if n % i == 0)\n"
                           "def are_equivalent(num1, num2):\n  return div_sum(num1) == div_sum(num2)\n",
     "base_input": [[36, 57], [2, 4], [23, 47]], "plus_input": []},
    {"task_id": "Mbpp/295", "entry_point": "sum_div", "atol": 0,
     "prompt": '"""\nWrite a function to return the sum of all divisors of a number.\n"""\n',
     "canonical_solution": "\ndef sum_div(number):\n  return sum(i for i in range(1, number) if number % i == 0)\n",
     "base_input": [[8], [12], [7]], "plus_input": []},
]


@pytest.fixture
def mbpp_plus(tmp_path, monkeypatch):
    path = tmp_path / "MbppPlus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MBPP_PLUS_ROWS))
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", str(path))
    return str(path)


def test_tasks_that_reward_a_constant_are_named_with_the_reason():
    assert set(CONSTANT_REWARD_TASKS) == {("mbpp+", "are_equivalent"), ("mbpp+", "sum_div")}
    assert split_of("Mbpp/164") == split_of("Mbpp/295") == "train"  # only the exclusion keeps them out


def test_mbpp_plus_tasks_that_reward_a_constant_are_in_neither_train_nor_eval(mbpp_plus):
    assert [p.task_id for p in load_split("mbpp+", "train")] == ["Mbpp/2", "Mbpp/4"]
    assert [p.task_id for p in load_split("mbpp+", "eval")] == ["Mbpp/3"]
    assert {"Mbpp/164", "Mbpp/295"} <= {p.task_id for p in load_split("mbpp+", "all")}  # the full benchmark


def test_a_constant_earns_nothing_on_any_mbpp_plus_training_task(mbpp_plus):
    env = gym.make("onelayer/Code-v0", dataset="mbpp+", split="train", reward="fraction")
    for task_id in env.unwrapped.task_ids():
        _, info = env.reset(options={"task_id": task_id})
        reply = f"```python\ndef {info['entry_point']}(*args):\n    return 0\n```"
        assert env.step(reply)[1] == 0.0, task_id


def test_the_full_benchmark_grades_the_excluded_tasks_as_evalplus_does(mbpp_plus):
    # EvalPlus (evalplus/eval/__init__.py): any output passes are_equivalent, 0 passes sum_div. Kept in `all`
    # only, so a full-benchmark score stays comparable with EvalPlus' own.
    env = gym.make("onelayer/Code-v0", dataset="mbpp+", split="all")
    for task_id, name in (("Mbpp/164", "are_equivalent"), ("Mbpp/295", "sum_div")):
        env.reset(options={"task_id": task_id})
        assert env.step(f"```python\ndef {name}(*args):\n    return 0\n```")[1] == 1.0, task_id
