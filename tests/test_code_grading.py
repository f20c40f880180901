"""Code-v0's grade cannot be forged: the submission runs in a process of its own and only plain data crosses.

Every hostile submission here would have scored 1.0 (or credit it did not earn) if the
tests ran in the submission's process; each must score 0 now. The honest cases make
sure the isolation costs nothing real: exceptions the tests expect, float tolerances,
nested containers and the standard library's look-alikes of plain values still pass.
"""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs.code_data import CodeProblem, load_problems
from onelayer.envs.code_harness import run_tests

HUMANEVAL = {p.task_id: p for p in load_problems("humaneval")}


def score(task_id: str, code: str, *, reward: str = "binary", dataset: str = "humaneval", timeout_s: float = 5.0):
    """The reward and info of submitting ``code`` (a complete program) to ``task_id``."""
    env = gym.make("onelayer/Code-v0", dataset=dataset, split="all", reward=reward, timeout_s=timeout_s)
    env.reset(options={"task_id": task_id})
    _, reward_value, _, _, info = env.step(f"```python\n{code}\n```")
    return reward_value, info


def canonical(task_id: str) -> str:
    p = HUMANEVAL[task_id]
    return p.prompt + p.canonical_solution


# ---- forgeries: all score 0 -------------------------------------------------------------------------

# What the checker would report for a full pass of HumanEval/23 (three units).
FAKE_EVENTS = "".join(json.dumps(e) + "\n" for e in [{"event": "start", "units": 3}] + [
    {"event": "unit", "i": i, "ok": True} for i in range(3)] + [{"event": "done"}]).encode()

# HumanEval/23: strlen(string) -> int. Each body would pass (or report passes) if it shared the grader's process.
FORGED = {
    "always-true __eq__": "class Any:\n        def __eq__(self, other):\n            return True\n    return Any()",
    "int subclass equal to anything": "class Int(int):\n        def __eq__(self, other):\n            return True\n"
                                      "        __hash__ = int.__hash__\n    return Int(-1)",
    "str subclass equal to anything": "class Str(str):\n        __eq__ = lambda self, other: True\n    return Str('x')",
    "a lambda": "return lambda *a: True",
    "a list holding an object equal to anything": "class Any:\n        __eq__ = lambda s, o: True\n    return [Any()]",
    "the runner's reporter via sys.modules['__main__']": (
        "import sys, os\n    m = sys.modules['__main__']\n    for fd in range(3, 256):\n        try:\n"
        "            out = m.Reporter(fd)\n            for i in range(3):\n"
        "                out.emit('unit', i=i, ok=True)\n            out.emit('done')\n        except Exception:\n"
        "            pass\n    os._exit(0)"),
    "raw result lines on every descriptor": (
        f"import os\n    line = {FAKE_EVENTS!r}\n"
        "    for fd in range(256):\n        try:\n            os.write(fd, line)\n        except OSError:\n"
        "            pass\n    os._exit(0)"),
    "writes through /proc/self/fd and the parent's /proc/PID/fd": (
        f"import os\n    line = {FAKE_EVENTS!r}\n"
        "    for d in ('/proc/self/fd', f'/proc/{os.getppid()}/fd'):\n        try:\n            names = os.listdir(d)\n"
        "        except OSError:\n            continue\n        for name in names:\n            try:\n"
        "                with open(f'{d}/{name}', 'wb') as f:\n                    f.write(line)\n"
        "            except OSError:\n                pass\n    os._exit(0)"),
    "gc: the runner's objects in its own process": (
        "import gc, os\n    for obj in gc.get_objects():\n        if isinstance(obj, dict) and 'steps' in obj:\n"
        "            return len(string)  # the task would be here if the server had it\n"
        "        if type(obj).__name__ in ('Reporter', 'Server'):\n            try:\n"
        "                obj.emit('done')\n            except Exception:\n                pass\n    os._exit(0)"),
    "reads the checker's memory": (
        "import os\n    try:\n        open(f'/proc/{os.getppid()}/mem', 'rb')\n    except OSError:\n        return -1\n"
        "    return len(string)  # it could read the checker: reward it, so the test shows it"),
    "kills the checker": "import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return -1",
    "stops the checker": "import os, signal\n    os.kill(os.getppid(), signal.SIGSTOP)\n    return -1",
    "sys.exit inside the call": "import sys\n    sys.exit(0)",
}


@pytest.mark.parametrize("body", FORGED.values(), ids=FORGED.keys())
def test_forging_a_pass_from_the_candidates_process_scores_zero(body):
    reward, info = score("HumanEval/23", f"def strlen(string):\n    {body}", reward="fraction", timeout_s=2.0)
    assert reward == 0.0 and not info["passed"] and info["error"]


def test_a_value_that_is_not_plain_data_is_a_failed_call_with_a_reason():
    _, info = score("HumanEval/23", "def strlen(string):\n    class Int(int):\n        pass\n    return Int(len(string))")
    assert "returned a value of type 'Int'" in info["error"] and "only plain data" in info["error"]


def test_os_exit_before_the_tests_scores_zero():
    # A default argument runs when the module loads (a bare top-level call would be cut by code extraction).
    code = "import os\ndef strlen(string, _=os._exit(0)):\n    return len(string)"
    reward, info = score("HumanEval/23", code, reward="fraction")
    assert reward == 0.0 and info["error"].startswith("the program exited before the tests finished (exit code 0)")
    outcome = run_tests(HUMANEVAL["HumanEval/23"], "import os\nos._exit(0)\ndef strlen(string):\n    return len(string)")
    assert not outcome.passed and outcome.pass_fraction == 0.0


def test_monkeypatched_builtins_stay_in_the_candidates_process():
    # HumanEval/2's tests compare with abs(...) < 1e-6: an abs() that always returns 0 would pass any answer.
    code = ("import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.AssertionError = type('Nothing', (Exception,), {})\n"
            "def truncate_number(number):\n    return 42.0")
    reward, _ = score("HumanEval/2", code, reward="fraction")
    assert reward == 0.0


def test_a_module_planted_in_the_working_directory_is_not_imported_by_the_tests():
    # The tests import colorsys after the solution has run; a colorsys.py it drops in the working
    # directory would run inside the checker (and make abs() return 0) if that directory were on its path.
    problem = CodeProblem("Plant/0", 'def double(x):\n    """Twice x."""\n', "double",
                          test="import colorsys\nassert abs(double(2) - 4) < 1e-9\n")
    planted = "import builtins\nbuiltins.abs = lambda x: 0\n"
    code = f"open('colorsys.py', 'w').write({planted!r})\ndef double(x):\n    return 12345"
    assert not run_tests(problem, code).passed
    assert run_tests(problem, "def double(x):\n    return 2 * x").passed


def test_dying_midway_fails_the_rest_and_keeps_the_earlier_credit():
    # strlen's tests: '' -> 0, 'x' -> 1, 'asdasnakj' -> 9. It answers the first, then exits "cleanly".
    code = "import os\ndef strlen(string):\n    if string:\n        os._exit(0)\n    return 0"
    reward, info = score("HumanEval/23", code, reward="fraction")
    assert reward == pytest.approx(1 / 3) and "exited before the tests finished" in info["error"]


def test_garbage_on_the_reply_channel_fails_the_rest():
    # The second call scribbles on every descriptor (its reply pipe among them) and then answers correctly.
    code = ("import os\ncalls = []\ndef strlen(string):\n    calls.append(1)\n    if len(calls) == 2:\n"
            "        for fd in range(3, 64):\n            try:\n                os.write(fd, b'\\xff' * 64)\n"
            "            except OSError:\n                pass\n    return len(string)")
    reward, info = score("HumanEval/23", code, reward="fraction")
    assert reward == pytest.approx(1 / 3) and "protocol" in info["error"]


# ---- honest solutions still pass ----------------------------------------------------------------------

@pytest.mark.parametrize("task_id", [
    "HumanEval/2", "HumanEval/4", "HumanEval/32",  # floats compared with a tolerance (abs / math.fabs)
    "HumanEval/87", "HumanEval/115", "HumanEval/129",  # nested lists (of tuples) in and out
    "HumanEval/111", "HumanEval/107", "HumanEval/148",  # a dict, a tuple, a tuple of strings
    "HumanEval/38", "HumanEval/50",  # the tests call the prompt's own encode_* helpers
])
def test_canonical_solutions_of_varied_test_shapes_pass(task_id):
    assert score(task_id, canonical(task_id))[0] == 1.0


def test_standard_library_look_alikes_of_plain_values_pass():
    # A namedtuple for a tuple, a Counter for a dict: honest code, accepted as their plain values.
    tup = ("from collections import namedtuple\nPair = namedtuple('Pair', 'sum product')\n"
           "def sum_product(numbers):\n    p = 1\n    for n in numbers:\n        p *= n\n    return Pair(sum(numbers), p)")
    assert score("HumanEval/8", tup)[0] == 1.0
    hist = ("from collections import Counter\ndef histogram(test):\n    c = Counter(test.split())\n"
            "    top = max(c.values(), default=0)\n    return Counter({k: v for k, v in c.items() if v == top})")
    assert score("HumanEval/111", hist)[0] == 1.0


EXCEPTION_TASK = {
    "task_id": "Raises/0", "entry_point": "isqrt",
    "prompt": 'def isqrt(n: int) -> int:\n    """Integer square root; ValueError for a negative n."""\n',
    "test": ("def check(candidate):\n    assert candidate(17) == 4\n    try:\n        candidate(-1)\n"
             "    except ValueError as e:\n        assert 'negative' in str(e)\n    else:\n        assert False, 'no error'\n"
             "    try:\n        candidate(-4)\n    except:\n        pass\n    else:\n        assert False, 'no error'\n"),
}


@pytest.fixture
def raises_dataset(tmp_path):
    path = tmp_path / "raises.jsonl"
    path.write_text(json.dumps(EXCEPTION_TASK) + "\n")
    return str(path)


@pytest.mark.parametrize("raise_stmt,expected", [
    ("raise ValueError('negative input')", 1.0),
    ("raise ArithmeticError('negative input')", 2 / 3),  # not a ValueError: only the bare except accepts it
    ("class Negative(ValueError):\n            pass\n        raise Negative('negative input')", 1.0),  # a subclass
    ("raise ValueError('no')", 2 / 3),  # the right type, the wrong message
    ("return -1", 1 / 3),
])
def test_exceptions_the_tests_expect_cross_with_their_type_and_message(raises_dataset, raise_stmt, expected):
    code = f"import math\ndef isqrt(n):\n    if n < 0:\n        {raise_stmt}\n    return math.isqrt(n)"
    reward, _ = score("Raises/0", code, reward="fraction", dataset=raises_dataset)
    assert reward == pytest.approx(expected)


def test_a_bare_except_in_the_tests_cannot_turn_a_dead_candidate_into_a_pass(raises_dataset):
    # candidate(-4) kills its process; the tests' `except: pass` would otherwise count it as "raised".
    code = ("import math, os\ndef isqrt(n):\n    if n == -4:\n        os._exit(0)\n"
            "    if n < 0:\n        raise ValueError('negative')\n    return math.isqrt(n)")
    reward, info = score("Raises/0", code, reward="fraction", dataset=raises_dataset)
    assert reward == pytest.approx(2 / 3) and not info["passed"]


def test_tests_that_call_other_solution_functions_by_name_reach_them():
    problem = CodeProblem("Two/0", 'def double(x):\n    """Twice x; also define half(x)."""\n', "double",
                          test="assert double(3) == 6\nassert half(double(5)) == 5\n")
    assert run_tests(problem, "def double(x):\n    return 2 * x\n\ndef half(x):\n    return x // 2\n").passed
    assert not run_tests(problem, "def double(x):\n    return 2 * x\n").passed


@pytest.mark.parametrize("isolation", ["namespaces", "userns", "process"])
def test_every_isolation_level_grades_in_two_processes(isolation):
    from onelayer.envs.sandbox import isolation_level

    if isolation == "namespaces" and isolation_level() != "namespaces":
        pytest.skip("needs root with CAP_SYS_ADMIN and util-linux unshare")
    if isolation == "userns" and shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    problem = HUMANEVAL["HumanEval/23"]
    assert run_tests(problem, canonical("HumanEval/23"), isolation=isolation).passed
    attacks = [FORGED["always-true __eq__"]]
    if isolation != "process":
        # The opt-in process level keeps the caller's uid and filesystem: its grade is documented as
        # unprotected (docs/sandbox.md), and these attacks race the checker there (they won 1 run in 2).
        attacks += [FORGED["writes through /proc/self/fd and the parent's /proc/PID/fd"],
                    FORGED["reads the checker's memory"]]
    for body in attacks:
        outcome = run_tests(problem, f"def strlen(string):\n    {body}", isolation=isolation)
        assert outcome.pass_fraction == 0.0, (body, outcome)
