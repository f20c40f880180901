"""The ALFWorld learning study script: games, base eval, runs, summary, and resuming by rerunning."""

import json

import pytest

from onelayer.benchmarks import alfworld_learning as study
from onelayer.envs.alfworld_gen import EASY_SETS, read_signatures
from onelayer.errors import UserError


def test_study_runs_summarizes_and_skips_finished_runs(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(EASY_SETS, "train", {**EASY_SETS["train"], "n": 3})
    monkeypatch.setitem(EASY_SETS, "eval", {**EASY_SETS["eval"], "n": 2})
    monkeypatch.setitem(study.SETTINGS, "eval_size", 2)
    monkeypatch.setitem(study.SETTINGS, "num_tasks", 1)
    monkeypatch.setitem(study.SETTINGS, "max_turns", 2)
    out = tmp_path / "study"
    args = ["--out", str(out), "--model", str(tiny_model_dirs["qwen3"]), "--steps", "1", "--seeds", "0,1",
            "--algos", "gigpo", "--eval-samples", "2"]
    assert study.main(args) == 0
    games = out / "games"
    assert not read_signatures(games / "train") & read_signatures(games / "eval")  # held-out games
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"gigpo-s0", "gigpo-s1"}
    assert summary["algos"]["gigpo"]["seeds"] == 2 and summary["algos"]["gigpo"]["sd"] is not None
    assert set(summary["base"]["by_seed"]) == {"0", "1"} and 0 <= summary["base"]["eval_success_rate"] <= 1
    run = summary["runs"]["gigpo-s1"]
    assert run["base_eval_success_rate"] == summary["base"]["by_seed"]["1"]
    assert run["gain"] == run["eval_success_rate"] - run["base_eval_success_rate"]
    assert json.loads((out / "runs" / "base-s1" / "config.json").read_text())["config"]["seed"] == 1
    config = json.loads((out / "runs" / "gigpo-s1" / "config.json").read_text())["config"]
    assert config["action_format"] == "choice" and config["seed"] == 1 and config["env_kwargs"]["data_path"] == str(games)
    assert config["env_kwargs"]["hide_commands"] == ["help", "look", "inventory"]
    assert "| gigpo-s0 |" in capsys.readouterr().out
    sampled = summary["eval_sampled"]
    assert sampled["samples"] == 2 and sampled["temperature"] == 1.0 and len(sampled["base_by_sample"]) == 2
    assert set(sampled["runs"]) == set(summary["runs"])
    assert sampled["runs"]["gigpo-s1"]["gain"] == sampled["runs"]["gigpo-s1"]["success_rate"] - sampled["base"]
    paired = sampled["runs"]["gigpo-s1"]["paired"]
    assert paired["games"] == 2 and paired["gain"] == pytest.approx(sampled["runs"]["gigpo-s1"]["gain"])
    assert 0 < paired["p_permutation"] <= 1
    base_sampled = json.loads((out / "runs" / "base-s0" / "eval_sampled.json").read_text())
    settings = base_sampled["settings"]
    assert settings["num_samples"] == 2 and settings["max_new_tokens"] == 3 and settings["temperature"] == 1.0
    assert base_sampled["items"][0]["details"]["game_file"].startswith(str(games / "eval"))
    lines = (out / "runs" / "gigpo-s0" / "metrics.jsonl").read_text()
    scored = (out / "runs" / "gigpo-s0" / "eval_sampled.json").read_text()
    assert study.main(args) == 0  # a rerun reuses finished runs and their scores
    assert (out / "runs" / "gigpo-s0" / "metrics.jsonl").read_text() == lines
    assert (out / "runs" / "gigpo-s0" / "eval_sampled.json").read_text() == scored
    three = [*args[:-1], "3"]
    assert study.main(three) == 0  # more passes: only the new one runs, added to the stored two
    assert "sampled passes 2..2" in capsys.readouterr().err
    extended = json.loads((out / "runs" / "gigpo-s0" / "eval_sampled.json").read_text())
    assert extended["settings"]["num_samples"] == 3 and extended["by_sample"][:2] == json.loads(scored)["by_sample"]
    fresh = study.eval_sampled(out / "runs" / "gigpo-s0", games, 1)  # fewer passes than stored: starts over...
    again = study.eval_sampled(out / "runs" / "gigpo-s0", games, 3)  # ...and growing back gives the same passes
    assert fresh["success_rate"] == extended["by_sample"][0] and again["by_sample"] == extended["by_sample"]
    assert [i["samples"] for i in again["items"]] == [i["samples"] for i in extended["items"]]
    assert study.main(["--out", str(out), "--eval-samples", "-1"]) == 2
    assert study.main(["--out", str(out), "--seeds", "x"]) == 2
    assert study.main(["--out", str(out), "--lr", "0"]) == 2
    assert study.main([*args, "--lr", "1e-3"]) == 2  # finished runs of another lr are not mixed in
    assert "trained with lr 0.0001" in capsys.readouterr().err
    assert study.main([*args, "--action-format", "score"]) == 2  # nor runs of another action format
    assert "run in the choice action format, not score" in capsys.readouterr().err


def _items(wins: list[list[int]]) -> list[dict]:
    """Eval items: game g won on the passes marked 1 in wins[g]."""
    return [{"task_id": f"game-{g}", "samples": [{"success": bool(w)} for w in passes]} for g, passes in enumerate(wins)]


def test_sampled_summary_pairs_every_run_with_the_base_on_the_same_seeds():
    base = {"success_rate": 0.25, "by_sample": [0.2, 0.3], "settings": {"num_samples": 2, "temperature": 1.0},
            "items": _items([[0, 1], [0, 0]])}
    runs = {"gigpo": {0: {"success_rate": 0.35, "by_sample": [0.3, 0.4], "items": _items([[1, 1], [0, 0]])},
                      1: {"success_rate": 0.15, "by_sample": [0.1, 0.2], "items": _items([[0, 0], [0, 0]])},
                      2: {"success_rate": 0.40, "by_sample": [0.4, 0.4], "items": _items([[1, 1], [1, 0]])}}}
    out = study.summarize_sampled(base, runs)
    assert out["samples"] == 2 and out["base_by_sample"] == [0.2, 0.3]
    assert [round(r["gain"], 6) for r in out["runs"].values()] == [0.1, -0.1, 0.15]
    algo = out["algos"]["gigpo"]
    assert round(algo["gain_mean"], 6) == round((0.1 - 0.1 + 0.15) / 3, 6)
    assert round(algo["gain_sd"], 6) == round(algo["sd"], 6) == 0.132288  # sd of 0.35, 0.15, 0.40 (by hand)


def test_paired_gain_is_per_game_against_the_base():
    # base wins games 0-1 on half the passes and nothing else; the run wins games 0-4 on every pass
    base = {"items": _items([[1, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 0]])}
    run = {"items": _items([[1, 1]] * 5 + [[0, 0]])}
    pr = study.paired_by_game(run, base)
    # differences 0.5, 0.5, 1, 1, 1, 0: mean 4/6; 5 nonzero, |sum| = 4 reached by all-plus / all-minus only
    assert pr["games"] == 6 and pr["gain"] == pytest.approx(4 / 6)
    assert pr["games_up"] == 5 and pr["games_down"] == 0 and pr["p_permutation"] == 2 / 32
    assert 0.3 <= pr["ci95"][0] < pr["gain"] < pr["ci95"][1] <= 1.0
    reordered = {"items": list(reversed(run["items"]))}  # games are matched by task id, not position
    assert study.paired_by_game(reordered, base) == pr
    with pytest.raises(UserError, match="different games"):
        study.paired_by_game({"items": run["items"][:5]}, base)
    with pytest.raises(UserError, match="gigpo-s1 and the base model .* delete the stale"):
        study.paired_by_game({"items": run["items"][:5]}, base, "gigpo-s1")
