"""A damaged run directory either resumes (falling back to the last good checkpoint, and saying so) or exits 2 naming the file.

One real 2-step run (checkpoints after steps 1 and 2) is copied per case and
damaged one file at a time; then ``onelayer train --resume`` / ``eval --run`` /
``export`` run on it through the real CLI. A resume that falls back to step 1
redoes step 2 and must end with the same weights and metrics as the undamaged run.
"""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from onelayer.cli import app

FLAGS = ["--layers", "1", "--num-tasks", "2", "--num-generations", "4", "--max-new-tokens", "6", "--eval-size", "2",
         "--eval-every", "0", "--save-every", "1", "--save-total-limit", "2", "--lr", "1e-3",
         "--reward-funcs", "support_rewards:length_reward", "--quiet"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished_run(tiny_model_dirs, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    r = cli("train", "--model", tiny_model_dirs["qwen3"], "--steps", "2", "--out", run, *FLAGS)
    assert r.exit_code == 0, r.output
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-000001", "step-000002"]
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(finished_run, d)
    return d


def _metrics(run):
    return [{k: v for k, v in m.items() if not k.startswith("time/")}
            for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _same_weights(a, b):
    ta, tb = load_file(str(a / "trained.safetensors")), load_file(str(b / "trained.safetensors"))
    return ta.keys() == tb.keys() and all((ta[k] == tb[k]).all() for k in ta)


def _resume(run):
    return cli("train", "--out", run, "--resume", "--quiet")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _one_error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


# --- resumes cleanly -------------------------------------------------------------------------------------------

def test_truncated_top_level_weights_are_rewritten_from_the_last_checkpoint(run, finished_run):
    _truncate(run / "trained.safetensors")
    r = _resume(run)
    assert r.exit_code == 0, r.output
    assert _same_weights(run, finished_run) and _metrics(run) == _metrics(finished_run)


@pytest.mark.parametrize("damage,named", [
    (lambda c: _truncate(c / "trained.safetensors"), "trained.safetensors"),
    (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt"),
    (lambda c: (c / "state.json").unlink(), "state.json"),
    (lambda c: (c / "state.json").write_text("{garbage"), "state.json"),
    (lambda c: (c / "state.json").write_text('{"step": 7}'), "step 7"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt"),
    # same size, scrambled header: only loading the file can tell
    (lambda c: (c / "trained.safetensors").write_bytes(b"\xff" * 8 + (c / "trained.safetensors").read_bytes()[8:]),
     "cannot be loaded"),
], ids=["weights truncated", "optimizer truncated", "state missing", "state garbage", "state for another step",
        "optimizer missing", "weights header scrambled"])
def test_damaged_last_checkpoint_falls_back_to_the_previous_one_and_loses_nothing(run, finished_run, damage, named):
    damage(run / "checkpoints" / "step-000002")
    r = _resume(run)
    assert r.exit_code == 0, r.output
    assert "skipping checkpoint" in r.stderr and "step-000002" in r.stderr and named in r.stderr
    assert "at step 1" in r.stderr  # says where it resumed from
    # step 2 is redone exactly: same weights, same metrics as the undamaged run
    assert _same_weights(run, finished_run)
    assert _metrics(run) == _metrics(finished_run)
    assert json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())["step"] == 2


def test_leftover_temp_files_and_half_deleted_checkpoints_are_cleaned_up(run, finished_run):
    leftovers = [run / ".trained.safetensors.x1.tmp", run / ".config.json.x2.tmp",
                 run / "checkpoints" / "step-000002" / ".optimizer.pt.x3.tmp"]
    for p in leftovers:
        p.write_bytes(b"partial")
    half = run / "checkpoints" / ".step-000000.deleting"
    half.mkdir()
    (half / "state.json").write_text('{"step": 0}')
    r = _resume(run)
    assert r.exit_code == 0, r.output
    assert not any(p.exists() for p in leftovers) and not half.exists()
    assert _same_weights(run, finished_run) and _metrics(run) == _metrics(finished_run)


def test_torn_last_metrics_line_and_incomplete_checkpoint_are_ignored(run, finished_run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # a writer killed mid-line
    broken = run / "checkpoints" / "step-000003"
    broken.mkdir()
    (broken / "trained.safetensors").write_bytes(b"partial")  # no state.json: killed while checkpointing
    r = cli("train", "--out", run, "--resume", "--steps", "3", "--quiet")
    assert r.exit_code == 0, r.output
    assert "step-000003" in r.stderr and "incomplete" in r.stderr
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3] and _metrics(run)[:2] == _metrics(finished_run)


def test_missing_metrics_resumes_with_a_warning(run):
    (run / "metrics.jsonl").unlink()
    r = _resume(run)
    assert r.exit_code == 0, r.output
    assert "metrics.jsonl lacks lines" in r.stderr


def test_damaged_eval_json_is_reported_not_fatal(run):
    (run / "eval.json").write_text("{not json")
    r = _resume(run)
    assert r.exit_code == 0, r.output
    assert "eval.json is damaged" in r.stderr


# --- exits 2 naming the file -------------------------------------------------------------------------------------

def test_missing_config_names_it_and_says_what_to_do(run):
    (run / "config.json").unlink()
    line = _one_error_line(_resume(run))
    assert "config.json" in line and "is missing" in line and "restore" in line


@pytest.mark.parametrize("text", ["{garbage", '{"no_config": 1}', "[]"])
def test_damaged_config_names_it(run, text):
    (run / "config.json").write_text(text)
    line = _one_error_line(_resume(run))
    assert "config.json is damaged" in line and "restore" in line


def test_garbage_line_inside_metrics_names_the_line(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n#garbage#\n" + "\n".join(lines[1:]) + "\n")
    line = _one_error_line(_resume(run))
    assert "metrics.jsonl line 2" in line and "fix that line" in line


def test_every_checkpoint_damaged_names_each(run):
    for c in (run / "checkpoints").iterdir():
        _truncate(c / "optimizer.pt")
    line = _one_error_line(_resume(run))
    assert "no usable checkpoint" in line and "step-000001" in line and "step-000002" in line
    assert "optimizer.pt" in line and "another --out" in line


def test_eval_and_export_of_damaged_weights_name_the_file_and_the_fix_works(run, tmp_path):
    _truncate(run / "trained.safetensors")
    for args in (["eval", "--run", run, "--num-items", "2"], ["export", run, "--out", tmp_path / "merged"]):
        line = _one_error_line(cli(*args))
        assert "trained.safetensors is damaged" in line and "--resume" in line
    assert _resume(run).exit_code == 0  # the fix the message names
    r = cli("eval", "--run", run, "--num-items", "2")
    assert r.exit_code == 0, r.output


def test_eval_of_missing_weights_names_the_file(run):
    (run / "trained.safetensors").unlink()
    line = _one_error_line(cli("eval", "--run", run, "--num-items", "2"))
    assert "trained.safetensors does not exist" in line and "--resume" in line
