"""Math grading: every grade is bounded in time in any thread, and numbers are read honestly."""

import threading
import time

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs import grading
from onelayer.envs.grading import evaluation_risk, extract_answer, grade, same_answer
from onelayer.errors import UserError

BOUND_S = 10.0  # generous: the worker's own bound below is 2 s, a worker restart about 2 s more


def _grade_in_thread(response: str, gold: str, **kw):
    out = {}
    t = threading.Thread(target=lambda: out.update(grade=grade(response, gold, **kw)))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "grading from a thread did not return"
    return out["grade"]


def _warm_worker():
    """Start a grading worker now, so the timed grade below is charged for its comparison only."""
    assert grade("\\boxed{x^2+1}", "1+x^2").correct


# ---------------------------------------------------------------- bounded in time
NOT_EVALUATED = [
    "\\boxed{9^{9^{9^{9}}}}",  # a power tower: sympy would compute 9^387420489 in C, past any signal
    "\\boxed{10^{10^{10}}!}",
    "\\boxed{(10^{6})!}",  # before: over 15 s against gold 1/2
    "\\boxed{\\binom{10000000}{5000000}}",  # before: over 20 s
    "\\boxed{2**3**4**5}",
    "\\boxed{123456^{654321}}",
    "\\boxed{" + "\\frac{1}{" * 30 + "2" + "}" * 30 + "}",  # nested fractions, 30 deep
    "\\boxed{" + "1+" * 600 + "1}",  # 1,201 characters
]


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "thread"])
@pytest.mark.parametrize("response", NOT_EVALUATED)
def test_answers_that_could_explode_score_0_at_once_with_the_reason(response, in_thread):
    t = time.monotonic()
    g = _grade_in_thread(response, "\\frac{1}{2}") if in_thread else grade(response, "\\frac{1}{2}")
    assert time.monotonic() - t < BOUND_S
    assert not g.correct and g.extracted
    assert g.reason.startswith("answer not evaluated: ") and "scores 0" in g.reason


HANGS = "\\boxed{\\prod_{k=1}^{99999} k^{k}}"  # passes the screen; math-verify runs over 20 s on it unbounded


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "thread"])
def test_a_comparison_past_its_bound_is_killed_and_scores_0(in_thread):
    assert evaluation_risk(HANGS[7:-1]) is None  # so the worker's time bound is what stops it
    _warm_worker()
    t = time.monotonic()
    g = _grade_in_thread(HANGS, "\\frac{1}{2}", timeout_s=2) if in_thread else grade(HANGS, "\\frac{1}{2}", timeout_s=2)
    assert time.monotonic() - t < BOUND_S
    assert not g.correct and g.reason == "comparing the answers took longer than 2 s; the answer scores 0"
    assert grade("\\boxed{\\sqrt{4}}", "2").correct  # the next grade gets a fresh worker


def test_the_env_says_why_a_hanging_answer_scored_0():
    env = gym.make("onelayer/Math-v0")
    env.reset(seed=0)
    t = time.monotonic()
    _, reward, terminated, _, info = env.step("so it is \\boxed{9^{9^{9^{9}}}}")
    assert time.monotonic() - t < BOUND_S
    assert reward == 0.0 and terminated and not info["correct"]
    assert "power tower" in info["reason"] and info["extracted"] == "9^{9^{9^{9}}}"


def test_concurrent_grades_from_many_threads_are_all_right():
    cases = [("\\boxed{x^2+2x+1}", "(x+1)^2", True), ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
             ("\\boxed{x^2}", "x^3", False), ("\\boxed{\\pi}", "3.14", False)] * 3
    results = [None] * len(cases)

    def run(i, response, gold):
        results[i] = grade(response, gold).correct

    threads = [threading.Thread(target=run, args=(i, r, g)) for i, (r, g, _) in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [ok for _, _, ok in cases]


def test_plain_numbers_are_graded_without_math_verify(monkeypatch):
    # The hot path (GSM8K, procedural levels) must not pay for a process round trip.
    def no_worker(*a, **kw):
        raise AssertionError("a plain number went to the math-verify worker")

    monkeypatch.setattr(grading, "_bounded_compare", no_worker)
    assert grade("\\boxed{42}", "42").correct
    assert grade("12 + 30 = 42", "42").correct
    assert grade("The sum is 1,250 apples.", "1250").correct
    assert grade("\\boxed{\\frac{1}{2}}", "0.5").correct
    assert grade("Answer: 1/2", "\\frac{1}{2}").correct
    assert grade("\\boxed{-3.50}", "-7/2").correct
    assert not grade("\\boxed{41}", "42").correct


def test_a_grader_that_cannot_start_stops_with_a_user_error(monkeypatch):
    # Fail closed: without its worker no answer can be compared in bounded time, so nothing is scored.
    monkeypatch.setattr(grading, "_pool", None)
    monkeypatch.setattr(grading.sys, "executable", "/bin/false")
    with pytest.raises(UserError, match="grading worker .* did not start"):
        grade("\\boxed{x^2+1}", "1+x^2")


@pytest.mark.parametrize("answer", ["x^2+1", "2^{10}", "e^{i\\pi}", "(n-1)!", "10!", "\\binom{10}{3}",
                                    "\\frac{\\sqrt{3}}{2}", "(1, 2)", "10^{-3}", "a != b"])
def test_ordinary_answers_pass_the_screen(answer):
    assert evaluation_risk(answer) is None


# ---------------------------------------------------------------- reading numbers
@pytest.mark.parametrize("response,extracted", [
    ("The total is 1,234.", "1234"),
    ("It costs $1,000 in all.", "1000"),
    ("So 12,345,678 people.", "12345678"),
    ("The answer is 1,234.5", "1234.5"),
    ("I have 5, then 7", "7"),  # a sentence comma after a number is not a separator
    # Not thousands separators: a list, or a decimal comma. Neither is the number 42 or 123, so no single answer.
    ("The answer is 4,2", None),
    ("So the values are 1,2,3", None),
    ("The answer is 4,2. Check: 40 + 2 = 42", None),  # a malformed stated answer is not replaced by a later number
    ("x = 1,2345", None),
])
def test_commas_count_only_as_thousands_separators(response, extracted):
    assert extract_answer(response) == extracted


def test_a_list_is_not_graded_as_the_number_its_digits_spell():
    assert not grade("The answer is 4,2", "42").correct
    assert not grade("1,2,3", "123").correct
    assert grade("\\boxed{3, 2, 1}", "1,2,3").correct  # a boxed list is compared as a list


def test_gsm8k_style_answers_still_grade():
    gsm8k = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
             "in April and May.\n#### 72")
    assert grade(gsm8k, "72").correct
    assert grade("She earns $1,250 a week.\n#### 1,250", "1250").correct


def test_a_gold_answer_is_read_as_latex_first():
    # Before, a gold without a backslash was parsed as plain text: "1+x^2" read as 1, so x^2+1 was wrong.
    assert grade("\\boxed{x^2+1}", "1+x^2").correct
    assert not grade("\\boxed{1}", "1+x^2").correct


def test_same_answer_is_bounded_too():
    assert same_answer("0.5", "\\frac{1}{2}")
    assert not same_answer("9^{9^{9^{9}}}", "9^{9^{9^{9}}}0")
