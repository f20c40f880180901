"""onelayer/Code-v0: real HumanEval problems, real sandboxed test runs, exact verdicts."""

from __future__ import annotations

import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs import ENVS, code_extract
from onelayer.envs.code_data import load_problems, split_of
from onelayer.envs.code_extract import extract_code
from onelayer.envs.code_harness import plan_tests
from onelayer.errors import UserError

INFO_KEYS = {"task_id", "anchor", "won", "success", "passed", "pass_fraction", "error", "syntax_error", "timeout",
             "invalid_action", "attempt", "method"}
HUMANEVAL = {p.task_id: p for p in load_problems("humaneval")}


def make(**kw):
    kw.setdefault("split", "all")
    return gym.make("onelayer/Code-v0", **kw)


def fenced(code: str) -> str:
    return f"Here is my solution.\n\n```python\n{code}\n```\n\nIt loops over the list once."


def canonical(task_id: str) -> str:
    p = HUMANEVAL[task_id]
    return fenced(p.prompt + p.canonical_solution)


def submit(task_id: str, reply: str, **kw):
    env = make(**kw)
    env.reset(options={"task_id": task_id})
    return env.step(reply)


# ---- the problems and the contract -------------------------------------------------------------

def test_registered_with_the_code_domain_and_a_four_step_limit():
    assert ENVS["onelayer/Code-v0"].domain == "code"
    env = make()
    assert env.spec.max_episode_steps == 4
    from onelayer.envs.domain import domain_spec

    spec = domain_spec("onelayer/Code-v0")  # declared in the env's metadata["onelayer"]
    assert (spec.name, spec.metric, spec.multi_turn, spec.actions, spec.answer) == ("code", "pass@1", True, False, "code")
    assert spec.train["env_kwargs"] == {"dataset": "humaneval"} and spec.suite == "humaneval"


def test_humaneval_splits_are_disjoint_stable_and_cover_all_164():
    train, evals, full = (make(split=s).unwrapped for s in ("train", "eval", "all"))
    assert full.num_tasks == 164
    assert set(train.task_ids()).isdisjoint(evals.task_ids())
    assert sorted(train.task_ids() + evals.task_ids()) == sorted(full.task_ids())
    assert 40 <= evals.num_tasks <= 70  # about a third
    assert all(split_of(t) == "eval" for t in evals.task_ids())
    assert make(split="train").unwrapped.task_ids() == train.task_ids()


def test_reset_is_deterministic_in_the_seed_and_reports_the_dataset_task_id():
    env = make(split="train")
    obs1, info1 = env.reset(seed=7)
    obs2, info2 = env.reset(seed=7)
    assert obs1 == obs2 and info1["task_id"] == info2["task_id"]
    assert info1["task_id"].startswith("HumanEval/") and info1["anchor"] == obs1
    seen = {env.reset(seed=s)[1]["task_id"] for s in range(40)}
    assert len(seen) > 10  # different seeds pick different problems


def test_task_id_option_takes_a_dataset_id_or_an_index():
    env = make()
    obs, info = env.reset(options={"task_id": "HumanEval/13"})
    assert info["task_id"] == "HumanEval/13" and "def greatest_common_divisor(a: int, b: int) -> int:" in obs
    assert env.reset(options={"task_id": 13})[1]["task_id"] == "HumanEval/13"
    with pytest.raises(UserError, match="out of range"):
        env.reset(options={"task_id": 164})
    with pytest.raises(UserError, match="not in the 'train' split"):
        train = make(split="train")
        held_out = make(split="eval").unwrapped.task_ids()[0]
        train.reset(options={"task_id": held_out})


def test_the_prompt_shows_the_signature_and_asks_for_a_python_block():
    obs, _ = make().reset(options={"task_id": "HumanEval/0"})
    assert "```python\nfrom typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float)" in obs
    assert "reply with the complete function" in obs.lower() and "in a single ```python code block" in obs
    assert obs.endswith('    True\n    """\n```\n')


def test_passes_gymnasium_check_env_without_warnings():
    env = make(split="train").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)
    obs, _ = env.reset(options={"task_id": 0})
    assert env.observation_space.contains(obs)


def test_step_info_carries_every_documented_key():
    _, reward, terminated, truncated, info = submit("HumanEval/13", canonical("HumanEval/13"))
    assert INFO_KEYS <= set(info)
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["won"] is info["success"] is info["passed"] is True
    assert info["error"] == "" and info["pass_fraction"] == 1.0 and info["method"] == "fenced"


# ---- correctness against the dataset itself --------------------------------------------------------

def _verdicts(task_id: str) -> tuple[float, float]:
    p = HUMANEVAL[task_id]
    right = submit(task_id, canonical(task_id))[1]
    wrong = submit(task_id, p.prompt + "    return None\n")[1]
    return right, wrong


def test_every_humaneval_canonical_solution_passes_and_return_none_fails():
    with ThreadPoolExecutor(4) as pool:
        verdicts = dict(zip(HUMANEVAL, pool.map(_verdicts, HUMANEVAL)))
    assert len(verdicts) == 164
    assert [t for t, (right, _) in verdicts.items() if right != 1.0] == []
    assert [t for t, (_, wrong) in verdicts.items() if wrong != 0.0] == []


OFF_BY_ONE = {
    "HumanEval/13": "def greatest_common_divisor(a, b):\n    while b:\n        a, b = b, a % b\n    return a + 1",
    "HumanEval/23": "def strlen(string):\n    return len(string) - 1",
    "HumanEval/55": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n + 1):\n        a, b = b, a + b\n    return a",
    "HumanEval/60": "def sum_to_n(n):\n    return sum(range(n))",
    "HumanEval/4": ("def mean_absolute_deviation(numbers):\n    m = sum(numbers) / len(numbers)\n"
                    "    return sum(abs(x - m) for x in numbers) / (len(numbers) - 1)"),
}


@pytest.mark.parametrize("task_id", sorted(OFF_BY_ONE))
def test_off_by_one_solutions_fail(task_id):
    _, reward, _, _, info = submit(task_id, fenced(OFF_BY_ONE[task_id]))
    assert reward == 0.0 and not info["passed"] and info["error"].startswith("test 1 of")
    assert not info["syntax_error"] and not info["timeout"] and not info["invalid_action"]


def test_a_syntax_error_is_reported_as_such():
    _, reward, _, _, info = submit("HumanEval/23", fenced("def strlen(string):\n    return len(string"))
    assert reward == 0.0 and info["syntax_error"] and info["error"].startswith("syntax error: line 2")
    assert info["pass_fraction"] == 0.0


def test_an_infinite_loop_is_a_timeout():
    _, reward, _, _, info = submit("HumanEval/23", fenced("def strlen(string):\n    while True:\n        pass"),
                                   timeout_s=1.0)
    assert reward == 0.0 and info["timeout"] and info["error"].startswith("timeout")


def test_a_reply_without_code_is_an_invalid_action():
    _, reward, terminated, _, info = submit("HumanEval/23", "The length of a string is how many characters it has.")
    assert reward == 0.0 and terminated and info["invalid_action"] and info["error"].startswith("no code found")


def test_a_wrong_function_name_is_explained():
    _, _, _, _, info = submit("HumanEval/23", fenced("def length(string):\n    return len(string)"))
    assert "defines no function named 'strlen'" in info["error"]


# ---- rewards ---------------------------------------------------------------------------------------

def test_fraction_reward_counts_the_asserts_that_pass():
    # HumanEval/0 has 7 asserts; four expect True.
    reply = fenced("def has_close_elements(numbers, threshold):\n    return True")
    assert submit("HumanEval/0", reply)[1] == 0.0
    _, reward, _, _, info = submit("HumanEval/0", reply, reward="fraction")
    assert reward == pytest.approx(4 / 7) and info["pass_fraction"] == pytest.approx(4 / 7)
    assert plan_tests(HUMANEVAL["HumanEval/0"]).num_units == 7


def test_partial_credit_survives_a_timeout_in_a_later_test():
    # Right on every test but the last (threshold 0.5), where it hangs.
    reply = fenced(
        "def has_close_elements(numbers, threshold):\n"
        "    while threshold == 0.5:\n        pass\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])")
    _, reward, _, _, info = submit("HumanEval/0", reply, reward="fraction", timeout_s=1.5)
    assert info["timeout"] and reward == pytest.approx(6 / 7)


# ---- multi-turn ----------------------------------------------------------------------------------

def test_multi_turn_gives_test_feedback_then_accepts_a_fix():
    env = make(mode="multi")
    first_obs, _ = env.reset(options={"task_id": "HumanEval/23"})
    obs, reward, terminated, truncated, info = env.step(fenced("def strlen(string):\n    return len(string) + 1"))
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert "attempt 1 of 3" in obs and "Failed test: assert candidate('') == 0" in obs
    assert obs.endswith(first_obs) and info["anchor"] == obs
    assert env.unwrapped.observation_space.contains(obs)
    obs, reward, terminated, _, info = env.step(fenced("def strlen(string):\n    return len(string)"))
    assert (obs, reward, terminated) == ("", 1.0, True) and info["attempt"] == 2


def test_multi_turn_ends_after_max_attempts_and_single_turn_after_one():
    env = make(mode="multi", max_attempts=2)
    env.reset(options={"task_id": "HumanEval/23"})
    assert env.step("no idea")[2] is False
    assert env.step("still no idea")[2] is True
    single = make()
    single.reset(options={"task_id": "HumanEval/23"})
    assert single.step("no idea")[2] is True
    with pytest.raises(RuntimeError, match="reset"):
        single.step("again")


def test_feedback_is_ascii_and_identical_for_identical_failures():
    reply = fenced("def strlen(string):\n    raise ValueError(f'caf\\u00e9 {object()}')")
    env = make(mode="multi")
    observations = []
    for _ in range(2):
        env.reset(options={"task_id": "HumanEval/23"})
        observations.append(env.step(reply)[0])
    assert observations[0] == observations[1]
    assert "ValueError: caf\\xe9 <object object at 0x...>" in observations[0]
    assert observations[0].isascii()
    assert "line 2, in strlen" in observations[0]  # the candidate's own traceback


# ---- the candidate cannot cheat ------------------------------------------------------------------

def test_printing_fake_results_and_exiting_early_does_not_pass():
    reply = fenced(
        "import os, sys\n"
        "print('{\"event\": \"done\"}')\n"
        "sys.__stdout__.write('\\n{\"event\": \"unit\", \"i\": 0, \"ok\": true}\\n')\n"
        "def strlen(string):\n    os._exit(0)")
    _, reward, _, _, info = submit("HumanEval/23", reply, reward="fraction")
    assert reward == 0.0 and not info["passed"]


def test_the_tests_and_reference_are_not_readable_by_the_candidate():
    reply = fenced("import os\ndef strlen(string):\n    assert os.listdir('.') == ['main.py']\n    return len(string)")
    assert submit("HumanEval/23", reply)[1] == 1.0


def test_redefining_a_prompt_helper_does_not_fool_the_tests():
    # HumanEval/32's tests check find_zero with the prompt's poly(); a fake poly must not help.
    reply = fenced("def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0")
    assert submit("HumanEval/32", reply)[1] == 0.0


# ---- code extraction -------------------------------------------------------------------------------

PROMPT = HUMANEVAL["HumanEval/23"].prompt


@pytest.mark.parametrize("reply,method", [
    ("```python\ndef strlen(string):\n    return len(string)\n```", "fenced"),
    ("```py\ndef strlen(string):\n    return len(string)\n```\nDone!", "fenced"),
    ("Sure!\n```\ndef strlen(string):\n    return len(string)\n```", "fenced"),
    ("```python\ndef strlen(string):\n    return len(string)\n", "fenced"),  # generation stopped in the block
    ("First a sketch:\n```python\ndef strlen(s):\n    pass\n```\nFinal:\n```python\n"
     "def strlen(string):\n    return len(string)\n```", "fenced"),
    ("The function is:\n\ndef strlen(string):\n    return len(string)\n\nThis counts characters.", "function"),
    ("    return len(string)\n", "completion"),
    ("```python\n    return len(string)\n```", "completion"),
])
@pytest.mark.parametrize("sanitizer", ["evalplus", "fallback"])
def test_code_is_found_in_every_common_reply_form(reply, method, sanitizer, monkeypatch):
    if sanitizer == "fallback":
        monkeypatch.setattr(code_extract, "_evalplus_sanitize", lambda: None)
    found = extract_code(reply, PROMPT, "strlen")
    assert found.method == method
    assert submit("HumanEval/23", reply)[1] == 1.0


def test_extraction_drops_prose_tests_and_main_blocks():  # EvalPlus' sanitizer at work
    reply = ("```python\nimport math\n\ndef strlen(string):\n    return len(string)\n\n"
             "print(strlen('abc'))\nif __name__ == '__main__':\n    input()\n```")
    code = extract_code(reply, PROMPT, "strlen").code
    assert "import math" in code and "def strlen" in code
    assert "print(" not in code and "__main__" not in code


@pytest.mark.parametrize("reply", ["", "I cannot solve this.", "```bash\nls\n```"])
def test_replies_without_python_code_extract_nothing(reply):
    assert extract_code(reply, PROMPT, "strlen").code is None


# ---- other datasets and bad options ----------------------------------------------------------------

def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_local_jsonl_in_the_humaneval_schema_works(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [
        {"task_id": "Mine/0", "prompt": "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n", "entry_point": "add",
         "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"},
        {"task_id": "Mine/1", "prompt": "def neg(a):\n    \"\"\"Negate.\"\"\"\n", "entry_point": "neg",
         "test": "assert neg(2) == -2\nassert neg(0) == 0\n"},  # top-level asserts calling it by name
    ])
    env = make(dataset=str(path))
    assert env.unwrapped.task_ids() == ["Mine/0", "Mine/1"]
    env.reset(options={"task_id": "Mine/0"})
    assert env.step(fenced("def add(a, b):\n    return a + b"))[1] == 1.0
    env.reset(options={"task_id": "Mine/1"})
    assert env.step(fenced("def neg(a):\n    return a"))[4]["error"].startswith("test 1 of 2 failed: assert neg(2) == -2")


def test_bad_local_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        make(dataset=str(tmp_path / "missing.jsonl"))
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "X/0", "prompt": "def f(): pass"}])
    with pytest.raises(UserError, match="lacks entry_point, test"):
        make(dataset=str(bad))


@pytest.mark.parametrize("kwargs,match", [
    ({"dataset": "apps"}, "unknown code dataset 'apps'"),
    ({"mode": "chat"}, "unknown mode"),
    ({"reward": "dense"}, "unknown reward"),
    ({"split": "test"}, "unknown split"),
    ({"max_attempts": 0}, "max_attempts"),
])
def test_bad_options_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        make(**kwargs)


HUMANEVAL_PLUS_ROWS = [
    {"task_id": "HumanEval/0", "prompt": HUMANEVAL["HumanEval/0"].prompt, "entry_point": "has_close_elements",
     "canonical_solution": HUMANEVAL["HumanEval/0"].canonical_solution, "atol": 0, "contract": "",
     "base_input": [[[1.0, 2.0, 3.0], 0.5], [[1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3]],
     "plus_input": [[[1.0, 1.05], 0.1], [[], 1.0], [[5.0, -5.0], 20.0]]},
    {"task_id": "HumanEval/32", "prompt": HUMANEVAL["HumanEval/32"].prompt, "entry_point": "find_zero",
     "canonical_solution": HUMANEVAL["HumanEval/32"].canonical_solution, "atol": 1e-4, "contract": "",
     "base_input": [[[1, 2]], [[-6, 11, -6, 1]]], "plus_input": [[[2, -4, 1, 3]]]},
]
MBPP_PLUS_ROWS = [
    {"task_id": "Mbpp/2", "entry_point": "similar_elements", "atol": 0,
     "prompt": '"""\nWrite a function to find the shared elements from the given two lists.\n'
               'assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"""\n',
     "canonical_solution": "\ndef similar_elements(test_tup1, test_tup2):\n"
                           "  return tuple(set(test_tup1) & set(test_tup2))\n",
     "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4], [5, 4, 3, 7]]],
     "plus_input": [[[11, 12, 14, 13], [17, 15, 14, 13]]]},
]


def test_humaneval_plus_runs_differential_tests_from_the_evalplus_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(_write_jsonl(tmp_path / "HumanEvalPlus.jsonl",
                                                                   HUMANEVAL_PLUS_ROWS)))
    assert submit("HumanEval/0", canonical("HumanEval/0"), dataset="humaneval+")[1] == 1.0
    always_false = fenced("def has_close_elements(numbers, threshold):\n    return False")
    _, reward, _, _, info = submit("HumanEval/0", always_false, dataset="humaneval+", reward="fraction")
    assert reward == pytest.approx(2 / 5)  # the first and the fourth input have no close pair
    assert info["error"] == ("test 2 of 5 failed: input ([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3): wrong output")
    # find_zero is judged by |poly(xs, x)| <= atol, as in EvalPlus, so any root passes.
    newton = fenced("def find_zero(xs):\n    x = 0.5\n    for _ in range(200):\n"
                    "        f = sum(c * x**i for i, c in enumerate(xs))\n"
                    "        d = sum(i * c * x**(i - 1) for i, c in enumerate(xs) if i)\n"
                    "        x -= f / d\n    return x")
    assert submit("HumanEval/32", newton, dataset="humaneval+")[1] == 1.0


def test_mbpp_plus_decodes_tuples_and_compares_sets_like_evalplus(tmp_path, monkeypatch):
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", str(_write_jsonl(tmp_path / "MbppPlus.jsonl", MBPP_PLUS_ROWS)))
    obs, _ = make(dataset="mbpp+").reset(options={"task_id": "Mbpp/2"})
    assert "function named `similar_elements`" in obs and "Write a function to find the shared elements" in obs
    any_order = fenced("def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))")
    assert submit("Mbpp/2", any_order, dataset="mbpp+")[1] == 1.0
    _, _, _, _, info = submit("Mbpp/2", fenced("def similar_elements(a, b):\n    return a"), dataset="mbpp+")
    assert info["error"] == "test 1 of 3 failed: input ((3, 4, 5, 6), (5, 7, 4, 10)): wrong output"


def test_missing_evalplus_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.delenv("MBPP_OVERRIDE_PATH", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"humaneval\+ data not found.*HumanEvalPlus\.jsonl\.gz.*HUMANEVAL_OVERRIDE_PATH"):
        make(dataset="humaneval+")
    with pytest.raises(UserError, match=r"mbpp\+ data not found.*MBPP_OVERRIDE_PATH"):
        make(dataset="mbpp+")
    monkeypatch.setenv("MBPP_OVERRIDE_PATH", str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="does not exist"):
        make(dataset="mbpp+")
