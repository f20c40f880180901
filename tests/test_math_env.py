"""onelayer/Math-v0: deterministic tasks, math-verify grading, disjoint splits."""

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs.grading import extract_answer, grade
from onelayer.envs.math_problems import procedural_eval_pool, procedural_train_problem
from onelayer.errors import UserError


@pytest.mark.parametrize("response,gold,ok", [
    ("The answer is \\boxed{42}.", "42", True),
    ("12 + 30 = 42", "42", True),
    ("So we get \\boxed{\\frac{1}{2}}", "0.5", True),
    ("Answer: 1/2", "\\frac{1}{2}", True),
    ("The sum is 1,250 apples.", "1250", True),
    ("\\boxed{41}", "42", False),
    ("I do not know.", "42", False),
    ("", "42", False),
])
def test_grading_handles_boxed_fractions_latex_and_plain_numbers(response, gold, ok):
    assert grade(response, gold).correct is ok


def test_extraction_prefers_boxed_over_later_numbers():
    assert extract_answer("\\boxed{7} because 3 + 4 = 7 and not 8") == "7"


def test_reset_is_deterministic_in_the_seed_and_step_ends_the_episode():
    env = gym.make("onelayer/Math-v0")
    obs1, info1 = env.reset(seed=123)
    obs2, info2 = env.reset(seed=123)
    assert obs1 == obs2 and info1["task_id"] == info2["task_id"]
    a, b = obs1.removeprefix("What is ").rstrip("?").split(" + ")
    _, reward, terminated, _, info = env.step(f"\\boxed{{{int(a) + int(b)}}}")
    assert reward == 1.0 and terminated and info["correct"] and info["reason"] == "correct"
    env.reset(seed=123)
    _, reward, _, _, info = env.step("no idea")
    assert reward == 0.0 and info["reason"] == "no answer found in the response"


def test_task_id_option_selects_the_same_problem():
    env = gym.make("onelayer/Math-v0", split="eval", level=2)
    obs, info = env.reset(options={"task_id": 5})
    obs2, info2 = env.reset(options={"task_id": info["task_id"]})
    assert obs == obs2 and info2["task_id"].endswith("/eval/5")
    with pytest.raises(UserError, match="out of range"):
        env.reset(options={"task_id": 10**9})


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_train_and_eval_never_share_a_problem(level):
    eval_questions = {p.question for p in procedural_eval_pool(level)}
    assert len(eval_questions) >= 256
    train_questions = {procedural_train_problem(level, i).question for i in range(3000)}
    assert not eval_questions & train_questions


def test_bad_env_options_are_user_errors():
    with pytest.raises(UserError, match="level"):
        gym.make("onelayer/Math-v0", level=9)
    with pytest.raises(UserError, match="split"):
        gym.make("onelayer/Math-v0", split="test")
    with pytest.raises(UserError, match="does not exist"):
        gym.make("onelayer/Math-v0", source="/nonexistent/file.jsonl")


def test_local_jsonl_source(tmp_path):
    path = tmp_path / "problems.jsonl"
    rows = [f'{{"question": "What is {i} + 1?", "answer": "{i + 1}"}}' for i in range(60)]
    path.write_text("\n".join(rows))
    train = gym.make("onelayer/Math-v0", source=str(path))
    evals = gym.make("onelayer/Math-v0", source=str(path), split="eval")
    tq = {train.unwrapped._item(i).question for i in range(train.unwrapped.num_tasks)}
    eq = {evals.unwrapped._item(i).question for i in range(evals.unwrapped.num_tasks)}
    assert tq and eq and not tq & eq and len(tq | eq) == 60


def test_local_parquet_source_with_its_own_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mine_test.parquet"  # "test" in the name: the file is an evaluation split as a whole
    pq.write_table(pa.table({"problem": ["What is 2 + 2?", "What is 3 + 5?"], "answer": ["4", "8"]}), path)
    env = gym.make("onelayer/Math-v0", source=str(path), split="eval")
    assert env.unwrapped.num_tasks == 2
    obs, _ = env.reset(options={"task_id": 1})
    assert obs == "What is 3 + 5?"
    assert env.step("\\boxed{8}")[1] == 1.0
