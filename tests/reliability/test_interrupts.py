"""Killed and interrupted runs lose nothing: SIGKILL then --resume equals an uninterrupted run; Ctrl-C checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _cmd(model_dir, out, steps):
    return [sys.executable, "-m", "onelayer.cli", "train", "--model", str(model_dir), "--layers", "1", "--steps", str(steps),
            "--num-tasks", "2", "--num-generations", "4", "--max-new-tokens", "6", "--eval-size", "4", "--eval-every", "0",
            "--save-every", "1", "--lr", "1e-3", "--reward-funcs", "support_rewards:length_reward", "--quiet", "--out", str(out)]


def _env():
    return dict(os.environ, PYTHONPATH=str(TESTS))


def _wait_for_steps(run: Path, n: int, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "process ended early"
        time.sleep(0.2)
    raise AssertionError(f"no {n} steps within {timeout}s")


def _strip(lines):
    out = []
    for line in lines:
        m = json.loads(line)
        out.append({k: v for k, v in m.items() if not k.startswith(("time/", "eval/"))})
    return out


def _kill_when(proc, ready, what, timeout=300):
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"ended before {what}: " + (proc.stderr.read() if proc.stderr else "")
        assert time.time() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_at_several_moments_then_resume_matches_an_uninterrupted_run(tiny_model_dirs, tmp_path):
    """Killed after a step, then twice in the middle of checkpoint writes; resumed each time; equal to one clean run."""
    model = tiny_model_dirs["qwen3"]
    ref = tmp_path / "ref"
    assert subprocess.run(_cmd(model, ref, 4), env=_env(), capture_output=True, timeout=600).returncode == 0

    run = tmp_path / "killed"
    # 1. at an arbitrary moment: as soon as step 1's metrics line is on disk (step 2 or the checkpoint is under way)
    proc = subprocess.Popen(_cmd(model, run, 4), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1,
               "step 1")
    # 2. halfway through writing step 2's optimizer.pt, 3. halfway through writing step 3's state.json
    for target in ("step-000002/optimizer.pt", "step-000003/state.json"):
        mark = tmp_path / "mark"
        mark.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).with_name("stall_write.py")), target, str(mark), *_cmd(model, run, 4)[3:],
               "--resume"]
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _kill_when(proc, mark.exists, f"the write of {target}")
        written = run / "checkpoints" / target
        assert not written.exists()  # the half-written bytes are only in a temporary file, never under the real name
        assert list(written.parent.glob(f".{written.name}.*.tmp"))
    r = subprocess.run(_cmd(model, run, 4) + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "skipping checkpoint" in r.stderr and "step-000003" in r.stderr  # the incomplete one is named
    assert not list(run.rglob("*.tmp"))  # leftovers of the killed writes are gone
    assert _strip((run / "metrics.jsonl").read_text().splitlines()) == _strip((ref / "metrics.jsonl").read_text().splitlines())
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "trained.safetensors")), load_file(str(run / "trained.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bit-identical on CPU


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny_model_dirs, tmp_path):
    run = tmp_path / "interrupted"
    cmd = _cmd(tiny_model_dirs["llama"], run, 50)
    cmd[cmd.index("--save-every") + 1] = "100"  # only the interrupt makes a checkpoint
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(run, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    ckpts = sorted((run / "checkpoints").iterdir())
    assert len(ckpts) == 1 and (ckpts[0] / "state.json").exists()
    step = json.loads((ckpts[0] / "state.json").read_text())["step"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == step
