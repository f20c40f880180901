"""`onelayer tune-lr`: full-parameter RL over an lr grid on a sweep's budget, the choice, and reuse of its jobs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from onelayer.benchmarks.sweep import SweepSpec
from onelayer.benchmarks.sweep_results import JobResult, load_results
from onelayer.benchmarks.tune_lr import check_grid, default_grid, preset_lr, summarize, tune_spec
from onelayer.cli import app
from onelayer.errors import UserError

TESTS = Path(__file__).parent
TRAIN = json.dumps({"num_tasks": 2, "num_generations": 2, "max_new_tokens": 6, "micro_batch_size": 4,
                    "reward_funcs": ["support_rewards:length_reward"], "save_every": 1})


@pytest.fixture(autouse=True)
def _support_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _full(lr_scores: dict[float, list[float]], base: float = 0.2) -> dict[float, list[JobResult]]:
    out = {}
    for lr, scores in lr_scores.items():
        rows = [JobResult("math/base", "math", -1, "base", "none", None, "none", base, {})]
        rows += [JobResult(f"math/grpo/s{s}/full", "math", s, "full", "all", None, "grpo", v, {}, lr=lr)
                 for s, v in enumerate(scores)]
        out[lr] = rows
    return out


def test_best_lr_is_the_highest_mean_with_ties_to_the_smaller_and_edges_flagged():
    spec = SweepSpec(domains=["math"], algos=["grpo"], seeds=[0, 1])
    got = summarize(spec, [1e-5, 3e-5, 1e-4], _full({1e-5: [0.3, 0.4], 3e-5: [0.5, 0.3], 1e-4: [0.2, 0.3]}))
    s = got["math/grpo"]
    assert s["best_lr"] == 3e-5 and not s["at_edge"] and s["base"] == 0.2  # 0.4 vs 0.35 and 0.25
    row = s["lrs"][1]
    assert row["mean"] == pytest.approx(0.4) and row["gain"] == pytest.approx(0.2) and row["sd"] == pytest.approx(0.1414, abs=1e-4)
    tie = summarize(spec, [1e-5, 3e-5], _full({1e-5: [0.4, 0.4], 3e-5: [0.4, 0.4]}))["math/grpo"]
    assert tie["best_lr"] == 1e-5 and tie["at_edge"]
    partial = summarize(spec, [1e-5, 3e-5], _full({1e-5: [0.4, 0.4], 3e-5: [0.9]}))["math/grpo"]
    assert partial["best_lr"] is None and not partial["complete"]  # a grid point lacks a seed: no choice yet
    one_seed = summarize(SweepSpec(domains=["math"], algos=["grpo"], seeds=[1]), [1e-5, 3e-5],
                         _full({1e-5: [0.9, 0.3], 3e-5: [0.2, 0.4]}))["math/grpo"]
    assert one_seed["best_lr"] == 3e-5 and one_seed["lrs"][0]["scores"] == {"1": 0.3}  # only the asked seeds count


def test_grid_checks_and_default():
    assert check_grid([3e-5, 1e-5]) == [1e-5, 3e-5]
    for bad, needle in (([1e-5], "at least two"), ([1e-5, 0.0], "positive"), ([1e-5, 1e-5], "twice")):
        with pytest.raises(UserError, match=needle):
            check_grid(bad)
    assert default_grid(3e-5) == [1e-5, 3e-5, 9e-5]


def test_the_grid_lr_overrides_a_per_domain_lr_and_the_default_grid_centres_on_it():
    # cpu-three-domains records each domain's lr in its own train options; a grid point must still train at its lr
    import dataclasses

    from onelayer.benchmarks.sweep import Job, job_train_config, preset_spec

    spec = SweepSpec.from_dict({**preset_spec("cpu-three-domains"), "domains": ["code"]})
    assert spec.domain_lr("code") == 1e-5 and preset_lr(spec) == 1e-5
    point = dataclasses.replace(tune_spec(spec), lr=3e-4)
    assert point.domain_lr("code") == 3e-4 and point.train["code"]["num_tasks"] == 4  # only the lr is dropped
    cfg = job_train_config(point, Job("code", "grpo", 0, "full", "all"), Path("unused"))
    assert cfg.lr == 3e-4
    assert spec.train["code"]["lr"] == 1e-5  # the caller's spec is unchanged
    assert preset_lr(SweepSpec.from_dict(preset_spec("cpu-three-domains"))) is None  # 1e-5, 1e-5 and 3e-5


def _args(model_dir, out, lrs="1e-4,1e-2", extra=()):
    return ["tune-lr", "--out", str(out), "--model", str(model_dir), "--lrs", lrs, "--steps", "2",
            "--eval-items", "4", "--algo", "grpo", "--train", TRAIN, "--quiet", *extra]


def test_tune_lr_runs_full_rl_per_lr_picks_one_and_its_directory_extends_into_a_sweep(tiny_model_dirs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "tune"
    res = runner.invoke(app, _args(tiny_model_dirs["qwen3"], out))
    assert res.exit_code == 0, res.output
    record = json.loads((out / "tune_lr.json").read_text())
    assert record["grid"] == [1e-4, 1e-2] and record["seeds"] == [0]
    s = record["results"]["math/grpo"]
    assert s["complete"] and s["best_lr"] in (1e-4, 1e-2) and "| 0.0001 | 1 |" in res.output
    best = max(s["lrs"], key=lambda r: (r["mean"], -r["lr"]))
    assert s["best_lr"] == best["lr"]
    jobs = {lr: {r.job: r for r in load_results(out / f"lr-{lr:g}")} for lr in (1e-4, 1e-2)}
    for lr, by_id in jobs.items():
        assert set(by_id) == {"math/base", "math/grpo/s0/full"}  # base + full only
        run = Path(by_id["math/grpo/s0/full"].run_dir)
        assert json.loads((run / "config.json").read_text())["config"]["lr"] == lr
    copied = jobs[1e-2]["math/base"]
    assert copied.score == jobs[1e-4]["math/base"].score and "copied_from" in copied.extra  # evaluated once
    assert (Path(copied.run_dir) / "suites.json").is_file()
    assert (out / "tune_lr.md").read_text().count("| 0.01 |") == 1
    mtimes = {lr: (out / f"lr-{lr:g}" / "results.jsonl").stat().st_mtime_ns for lr in jobs}

    res = runner.invoke(app, ["tune-lr", "--out", str(out), "--quiet"])  # resume: the stored settings, nothing reruns
    assert res.exit_code == 0, res.output
    assert {lr: (out / f"lr-{lr:g}" / "results.jsonl").stat().st_mtime_ns for lr in jobs} == mtimes

    res = runner.invoke(app, ["tune-lr", "--out", str(out), "--lrs", "1e-5,1e-4,1e-2", "--quiet"])  # grow the grid
    assert res.exit_code == 0, res.output
    grown = {r.job: r for r in load_results(out / "lr-1e-05")}
    assert set(grown) == {"math/base", "math/grpo/s0/full"} and "copied_from" in grown["math/base"].extra
    assert {lr: (out / f"lr-{lr:g}" / "results.jsonl").stat().st_mtime_ns for lr in jobs} == mtimes
    assert json.loads((out / "tune_lr.json").read_text())["grid"] == [1e-5, 1e-4, 1e-2]

    res = runner.invoke(app, _args(tiny_model_dirs["qwen3"], out, extra=("--steps", "3")))
    assert res.exit_code == 2 and "other settings (steps)" in res.output

    # the winner's directory is a sweep: adding layers reuses its base and full jobs
    d = out / "lr-0.0001"
    res = runner.invoke(app, ["sweep", "--out", str(d), "--layers", "1", "--seeds", "0,", "--quiet", "--no-report"])
    assert res.exit_code == 0, res.output
    ext = {r.job: r for r in load_results(d)}
    assert set(ext) == {"math/base", "math/grpo/s0/full", "math/grpo/s0/layer-1"} and ext["math/grpo/s0/layer-1"].lr == 1e-4


def test_bad_tune_lr_options_fail_before_any_work(tmp_path):
    runner = CliRunner()
    for args, needle in ((["--lrs", "1e-5"], "at least two"), (["--lrs", "1e-5,x"], "--lrs takes"),
                         (["--algo", "ppo"], "unknown algorithm"), (["--preset", "huge"], "unknown sweep preset")):
        res = runner.invoke(app, ["tune-lr", "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2 and needle in res.output, (args, res.output)
        assert "Traceback" not in res.output
    assert not (tmp_path / "bad" / "lr-1e-05").exists()
