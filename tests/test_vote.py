"""Ensembles: majority vote on final answers (math-verify equivalence), pass@k for code, overlap (Jaccard)."""

import json

import pytest

from onelayer.agents.evaluation import ItemOutcome
from onelayer.benchmarks.vote import (
    answer_classes,
    jaccard,
    majority_vote,
    pairwise_jaccard,
    run_vote,
    vote,
)
from onelayer.errors import UserError


def item(index, answer, success, **details):
    """A math item as the env reports it: the extracted answer and whether it was graded correct."""
    return ItemOutcome(index, f"t{index}", success, float(success), 1, f"The answer is {answer}",
                       {"extracted": answer, **details})


def test_majority_vote_counts_equivalent_answers_as_one():
    assert answer_classes(["1/2", "0.5", "3", None, "\\frac{1}{2}"]) == [[0, 1, 4], [2]]
    assert majority_vote(["1/2", "3", "0.5", None]) == (0, 2)
    assert majority_vote(["4", "3", "3"]) == (1, 2)


def test_majority_vote_ties_go_to_the_earliest_member_and_abstentions_do_not_count():
    assert majority_vote(["3", "4"]) == (0, 1)
    assert majority_vote(["4", "3", "3", "4"]) == (0, 2)
    assert majority_vote([None, "7", None]) == (1, 1)
    assert majority_vote([None, None]) == (None, 0)


def test_jaccard_of_solved_sets():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) is None
    assert pairwise_jaccard([{1}, {1, 2}, set()]) == [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]


# Three members on four items (gold: 2, 10, 1/2, 7).
MEMBERS = [
    [item(0, "2", True), item(1, "10", True), item(2, "0.3", False), item(3, "5", False)],
    [item(0, "2", True), item(1, "11", False), item(2, "0.5", True), item(3, None, False)],
    [item(0, "3", False), item(1, "11", False), item(2, "\\frac{1}{2}", True), item(3, "6", False)],
]


def test_math_vote_scores_the_winning_answer():
    res = vote(MEMBERS, "math", ["a", "b", "c"])
    assert [v.winner for v in res.items] == [0, 1, 1, 0]  # item 3: 5 vs 6 tie -> the earliest member
    assert [v.success for v in res.items] == [True, False, True, False]
    assert res.vote_score == 0.5
    assert res.member_scores == [0.5, 0.5, 0.25]
    assert res.any_score == 0.75
    assert res.pass_at_k["pass@3"] == 0.75 and res.pass_at_k["pass@1"] == pytest.approx(5 / 12)
    # solved: a {0, 1}, b {0, 2}, c {2}
    assert res.jaccard[0][1] == pytest.approx(1 / 3) and res.jaccard[0][2] == 0.0 and res.jaccard[1][2] == 0.5
    assert res.mean_jaccard == pytest.approx((1 / 3 + 0 + 0.5) / 3)
    assert res.method == "majority" and res.note == ""


def test_code_pools_members_for_pass_at_k_and_agentic_says_voting_does_not_apply():
    code = [[ItemOutcome(i, f"HumanEval/{i}", s, float(s), 1, "def f(): ...") for i, s in enumerate(row)]
            for row in ([True, False], [False, False])]
    res = vote(code, "code")
    assert res.vote_score is None and res.method == "pass@k" and res.pass_at_k == {"pass@1": 0.25, "pass@2": 0.5}
    res = vote(code, "agentic")
    assert res.vote_score is None and "not applicable" in res.note and res.any_score == 0.5


def test_members_must_share_the_item_list():
    with pytest.raises(UserError, match="other items"):
        vote([MEMBERS[0], MEMBERS[1][:3]], "math")
    with pytest.raises(UserError, match="at least 2"):
        vote([MEMBERS[0]], "math")


def _save_result(path, items, env="onelayer/Math-v0"):
    from dataclasses import asdict

    path.write_text(json.dumps({"accuracy": sum(i.success for i in items) / len(items), "metric": "accuracy",
                                "num_items": len(items), "items": [asdict(i) for i in items], "env": env,
                                "env_kwargs": {}, "domain": "math"}))
    return path


def test_cli_votes_over_saved_results(tmp_path):
    from test_cli import run_cli

    files = [_save_result(tmp_path / f"{n}.json", m) for n, m in zip("abc", MEMBERS)]
    out = tmp_path / "vote.json"
    r = run_cli("eval", "--vote", ",".join(map(str, files)), "--out", out)
    assert r.returncode == 0, r.stderr
    assert "majority vote 0.5000" in r.stdout and "mean pairwise Jaccard" in r.stdout
    saved = json.loads(out.read_text())
    assert saved["vote"]["vote_score"] == 0.5 and saved["self_consistency"] is None

    r = run_cli("eval", "--vote", str(files[0]))
    assert r.returncode == 2 and "at least 2" in r.stderr


def test_vote_over_runs_with_a_self_consistency_baseline(tiny_model_dirs, tmp_path):
    from test_trainer import tiny_config

    from onelayer.training.trainer import Trainer

    d = tiny_model_dirs["qwen3"]
    runs = []
    for layer in ("1", "2"):
        Trainer(tiny_config(d, tmp_path / layer, layers=layer, steps=0)).train(progress=False)
        runs.append(str(tmp_path / layer))
    res = run_vote(runs, num_items=3, self_consistency=str(d), sc_temperature=1.0)
    assert res["vote"]["num_items"] == 3 and res["vote"]["members"] == runs
    sc = res["self_consistency"]
    assert sc["num_samples"] == 2 and sc["members"] == ["sample0", "sample1"] and sc["vote_score"] is not None
