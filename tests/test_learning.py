"""Learning for real: one middle layer of the default model learns procedural math on CPU.

Marked ``slow`` (about 15 minutes on 2 cores): ``python -m pytest -m slow``.
"""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_layer_15_gains_ten_points_in_20_steps_and_eval_reproduces_it(tmp_path):
    run = tmp_path / "math-layer15"
    r = subprocess.run([sys.executable, "-m", "onelayer.cli", "train", "--env", "onelayer/Math-v0", "--layers", "15",
                        "--algo", "grpo", "--steps", "20", "--eval-at-start", "--out", str(run), "--quiet"],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    base = metrics[0]["eval/accuracy"]
    final = metrics[-1]["eval/accuracy"]
    assert metrics[0]["step"] == 0 and metrics[-1]["step"] == 20
    assert json.loads((run / "eval.json").read_text())["num_items"] >= 256
    assert final - base >= 0.10, f"accuracy {base:.3f} -> {final:.3f}: less than +10 points"

    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "onelayer.cli", "eval", "--run", str(run), "--out", str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text())["accuracy"] == final
