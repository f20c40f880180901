"""The ALFWorld learning study script: games, base eval, runs, summary, and resuming by rerunning."""

import json

from onelayer.benchmarks import alfworld_learning as study
from onelayer.envs.alfworld_gen import EASY_SETS, read_signatures


def test_study_runs_summarizes_and_skips_finished_runs(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(EASY_SETS, "train", {**EASY_SETS["train"], "n": 3})
    monkeypatch.setitem(EASY_SETS, "eval", {**EASY_SETS["eval"], "n": 2})
    monkeypatch.setitem(study.SETTINGS, "eval_size", 2)
    monkeypatch.setitem(study.SETTINGS, "num_tasks", 1)
    monkeypatch.setitem(study.SETTINGS, "max_turns", 2)
    out = tmp_path / "study"
    args = ["--out", str(out), "--model", str(tiny_model_dirs["qwen3"]), "--steps", "1", "--seeds", "0,1",
            "--algos", "gigpo"]
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
    lines = (out / "runs" / "gigpo-s0" / "metrics.jsonl").read_text()
    assert study.main(args) == 0  # a rerun reuses finished runs
    assert (out / "runs" / "gigpo-s0" / "metrics.jsonl").read_text() == lines
    assert study.main(["--out", str(out), "--seeds", "x"]) == 2
    assert study.main(["--out", str(out), "--lr", "0"]) == 2
    assert study.main([*args, "--lr", "1e-3"]) == 2  # finished runs of another lr are not mixed in
    assert "trained with lr 0.0001" in capsys.readouterr().err
