"""onelayer/Math-v0: deterministic tasks, math-verify grading, disjoint splits."""

import json
import re

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs import math_problems
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


def _answer_content(level: int, question: str) -> tuple:
    """What a procedural question's answer depends on, read from its text: the operation and its operands, sorted
    where the operation commutes (7 + 12 is 12 + 7; a word problem's name and objects do not count)."""
    nums = [int(n) for n in re.findall(r"\d+", question)]
    if level <= 3:
        op = "-" if " - " in question else "*" if " * " in question else "+"
        return (op, tuple(nums) if op == "-" else tuple(sorted(nums)))
    if level == 4:  # has a, gets b more, gives away c: a + b - c
        a, b, c = nums
        return ("add-sub", tuple(sorted((a, b))), c)
    boxes, per, extra = nums  # level 5: boxes * per + extra
    return ("mul-add", tuple(sorted((boxes, per))), extra)


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_no_eval_problem_has_a_twin_in_train(level):
    # Before, 167 of the 283 level-1 eval questions had their swapped twin (b + a) among the train questions.
    train = {_answer_content(level, procedural_train_problem(level, i).question) for i in range(4000)}
    evals = {_answer_content(level, p.question) for p in procedural_eval_pool(level)}
    assert len(procedural_eval_pool(level)) >= 256  # the math-l<level> suites score items 0..255
    assert not evals & train


# ---------------------------------------------------------------- datasets: disjoint splits by construction
def _write_jsonl(path, questions, answer=lambda i: str(i)):
    path.write_text("\n".join(json.dumps({"question": q, "answer": answer(i)}) for i, q in enumerate(questions)))
    return path


def _questions(env) -> list[str]:
    return [env.unwrapped._item(i).question for i in range(env.unwrapped.num_tasks)]


@pytest.fixture
def fresh_pools():
    math_problems.dataset_pool.cache_clear()
    yield
    math_problems.dataset_pool.cache_clear()


@pytest.fixture
def fake_hub(monkeypatch, fresh_pools):
    """``datasets.load_dataset`` answering from in-memory records: {(hub name, hub split): [records]}."""
    import datasets

    data: dict[tuple[str, str], list[dict]] = {}

    def load_dataset(name, config=None, split=None, **kw):
        if (name, split) not in data:
            raise FileNotFoundError(f"no {name} {split} here")
        return list(data[(name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return data


def test_a_train_file_is_never_read_for_evaluation(tmp_path, fresh_pools):
    # README's example: source=/data/gsm8k_train.jsonl. Before, its eval split was a hash third of the same file,
    # which the train split (the whole file) had trained on.
    train_file = _write_jsonl(tmp_path / "gsm8k_train.jsonl", [f"What is {i} + 2?" for i in range(60)])
    with pytest.raises(UserError, match="train file.*eval_source"):
        gym.make("onelayer/Math-v0", source=str(train_file), split="eval")
    test_file = _write_jsonl(tmp_path / "gsm8k_test.jsonl", [f"What is {i} + 3?" for i in range(20)])
    with pytest.raises(UserError, match="evaluation file.*never trained on"):
        gym.make("onelayer/Math-v0", source=str(test_file), split="train")
    train = gym.make("onelayer/Math-v0", source=str(train_file), eval_source=str(test_file))
    evals = gym.make("onelayer/Math-v0", source=str(train_file), eval_source=str(test_file), split="eval")
    assert len(_questions(train)) == 60 and len(_questions(evals)) == 20
    assert not set(_questions(train)) & set(_questions(evals))
    assert evals.unwrapped.task_id_of(0).startswith(f"math/{test_file}/eval/")


def test_a_file_name_saying_train_and_test_is_an_error(tmp_path, fresh_pools):
    path = _write_jsonl(tmp_path / "train_test.jsonl", ["What is 1 + 1?"])
    with pytest.raises(UserError, match="both train and test"):
        gym.make("onelayer/Math-v0", source=str(path))


def test_role_words_are_whole_words_of_the_file_name():
    assert math_problems.file_role("/data/gsm8k_train.jsonl") == "train"
    assert math_problems.file_role("test-00000-of-00001.parquet") == "eval"
    assert math_problems.file_role("latest_contest.jsonl") is None  # "test" inside a word is not the word


def test_a_one_split_hub_source_is_hash_split_and_eval_reads_only_its_eval_part(fake_hub):
    # MATH-500 has one split, "test". Before, the train split was two thirds of it and the eval split all of it.
    from onelayer.agents.evaluation import make_eval_env
    from onelayer.benchmarks.suites import env_kwargs_of, get_suite

    fake_hub[("HuggingFaceH4/MATH-500", "test")] = [
        {"problem": f"Find $x$ if $x - {i} = 0$.", "answer": str(i), "solution": "..."} for i in range(300)]
    train = gym.make("onelayer/Math-v0", source="math500")
    evals = make_eval_env("onelayer/Math-v0", env_kwargs_of(get_suite("math500")))  # what the suite scores
    tq, eq = set(_questions(train)), set(_questions(evals))
    assert tq and eq and not tq & eq and len(tq | eq) == 300
    assert 60 < len(eq) < 140  # about a third


def test_a_two_split_hub_source_drops_train_questions_its_test_split_also_holds(fake_hub):
    shared = "Janet has 3 ducks and buys 2 more. How many ducks does she have?"
    fake_hub[("openai/gsm8k", "train")] = [
        {"question": f"What is {i} + 5?", "answer": f"so {i + 5}\n#### {i + 5}"} for i in range(30)] + [
        {"question": "  " + shared.upper(), "answer": "#### 5"}]  # a copy differing in case and spaces
    fake_hub[("openai/gsm8k", "test")] = [{"question": shared, "answer": "#### 5"},
                                          {"question": "What is 1,000 + 234?", "answer": "#### 1,234"}]
    train = gym.make("onelayer/Math-v0", source="gsm8k")
    evals = gym.make("onelayer/Math-v0", source="gsm8k", split="eval")
    assert len(_questions(train)) == 30 and shared.upper().strip() not in {q.strip() for q in _questions(train)}
    assert _questions(evals) == [shared, "What is 1,000 + 234?"]
    assert evals.unwrapped._item(1).answer == "1234"


def _math_record(i: int) -> dict:
    return {"problem": f"Compute ${i}^2$.", "level": "Level 3", "type": "Algebra",
            "solution": f"We have ${i}^2 = {i * i}$, so the answer is $\\boxed{{{i * i}}}$."}


def test_the_drgrpo_preset_never_trains_on_a_problem_it_scores(fake_hub):
    # Before, it trained on MATH-500's hash two thirds and scored all of MATH-500.
    from onelayer.agents.evaluation import make_eval_env
    from onelayer.benchmarks.suites import env_kwargs_of, get_suite
    from onelayer.benchmarks.sweep import preset_spec

    math_test = [_math_record(i) for i in range(100, 400)]
    math500 = [{**r, "answer": str(int(r["problem"][9:-4]) ** 2)} for r in math_test[:150]]  # a subset of the test
    fake_hub[("DigitalLearningGmbH/MATH-lighteval", "train")] = [_math_record(i) for i in range(100)] + math500[:5]
    fake_hub[("DigitalLearningGmbH/MATH-lighteval", "test")] = math_test
    fake_hub[("HuggingFaceH4/MATH-500", "test")] = math500
    spec = preset_spec("gpu-qwen2.5-math-1.5b-drgrpo")
    train = gym.make("onelayer/Math-v0", **spec["train"]["math"]["env_kwargs"])
    trained = set(_questions(train))
    assert len(trained) == 100  # MATH's train split, less the 5 problems its test split also holds
    assert train.unwrapped._item(7).answer == "49"  # the gold answer is the solution's last \boxed{}
    for name in spec["suites"]["math"]:
        scored = set(_questions(make_eval_env("onelayer/Math-v0", env_kwargs_of(get_suite(name)))))
        assert scored and not scored & trained


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


def test_a_solution_without_a_boxed_answer_is_left_out_and_said(tmp_path, fresh_pools):
    rows = [_math_record(i) for i in range(30)] + [{"problem": "Prove it.", "solution": "Clear."}]
    path = tmp_path / "math_train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.warns(UserWarning, match="1 of 31 records"):
        env = gym.make("onelayer/Math-v0", source=str(path))
    assert env.unwrapped.num_tasks == 30 and env.unwrapped._item(5).answer == "25"
