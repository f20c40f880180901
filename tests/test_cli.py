"""The `onelayer` command: train / eval / export on a tiny model, and one-line user errors with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch

TINY_FLAGS = ["--num-tasks", "2", "--num-generations", "4", "--max-new-tokens", "6", "--eval-size", "4",
              "--reward-funcs", "support_rewards:length_reward", "--lr", "1e-3", "--quiet"]


def run_cli(*args, cwd=None):
    """Run the real console command in a subprocess (the tests dir on PYTHONPATH for reward functions)."""
    import os
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    return subprocess.run([sys.executable, "-m", "onelayer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_train_eval_export_round_trip(tiny_model_dirs, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "--model", tiny_model_dirs["qwen3"], "--env", "onelayer/Math-v0", "--layers", "2",
                "--algo", "grpo", "--steps", "2", "--out", run, *TINY_FLAGS)
    assert r.returncode == 0, r.stderr
    assert "eval accuracy on 4 held-out items: final" in r.stdout
    for name in ("config.json", "metrics.jsonl", "trained.safetensors", "eval.json"):
        assert (run / name).is_file(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all("/" not in k or k.count("/") == 1 for k in metrics[0])  # flat keys

    out = tmp_path / "eval.json"
    r = run_cli("eval", "--run", run, "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    train_eval = json.loads((run / "eval.json").read_text())
    assert res["accuracy"] == train_eval["accuracy"] and res["num_items"] == 4
    assert [i["response"] for i in res["items"]] == [i["response"] for i in train_eval["items"]]

    merged = tmp_path / "merged"
    r = run_cli("export", run, "--out", merged)
    assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    trained = load_file(str(run / "trained.safetensors"))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in trained.items())


def test_config_file_and_resume(tiny_model_dirs, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model_dirs['llama']}\nlayers: 1\nsteps: 1\nnum_tasks: 2\nnum_generations: 4\n"
                   "max_new_tokens: 6\neval_size: 4\nlr: 0.001\nreward_funcs: [support_rewards:length_reward]\n")
    run = tmp_path / "run"
    r = run_cli("train", "--config", cfg, "--out", run, "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "--config", cfg, "--out", run, "--quiet")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = run_cli("train", "--out", run, "--steps", "2", "--resume", "--quiet")  # the stored options are reused
    assert r.returncode == 0, r.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


@pytest.mark.parametrize("args,needle", [
    (["train", "--env", "onelayer/Nope-v0"], "unknown domain or env id 'onelayer/Nope-v0'"),
    (["train", "--algo", "ppo"], "unknown algorithm 'ppo'"),
    (["train", "--layers", "1-x"], "bad layer spec"),
    (["train", "--num-generations", "1"], "num_generations"),
    (["train", "--num-tasks", "3", "--num-generations", "2", "--mini-batch-size", "4"], "must divide"),
    (["train", "--model", "/no/such/model.gguf"], "does not exist"),
    (["train", "--config", "/no/such.yaml"], "does not exist"),
    (["eval", "--model", "smollm2-135m", "--env", "onelayer/Nope-v0"], "unknown domain or env id"),
    (["eval"], "exactly one of --run"),
    (["eval", "--run", "/tmp"], "not a onelayer run directory"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, needle, tmp_path):
    r = run_cli(*args, "--out", tmp_path / "x") if args[0] == "train" else run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1


def test_out_of_range_layer_on_a_real_model_dir(tiny_model_dirs, tmp_path):
    r = run_cli("train", "--model", tiny_model_dirs["qwen2"], "--layers", "12", "--out", tmp_path / "x", "--quiet")
    assert r.returncode == 2 and "valid indices are 0..3" in r.stderr


def test_envs_list_shows_math():
    r = run_cli("envs", "list")
    assert r.returncode == 0 and "onelayer/Math-v0" in r.stdout and "math" in r.stdout


def test_prompt_longer_than_max_prompt_length_is_a_user_error(tiny_model_dirs, tmp_path):
    r = run_cli("train", "--model", tiny_model_dirs["qwen3"], "--max-prompt-length", "8", "--out", tmp_path / "x", "--quiet")
    assert r.returncode == 2 and "shorter than the env's first prompt" in r.stderr


def test_missing_dataset_path_fails_before_the_model_loads(tmp_path):
    r = run_cli("train", "--env-kwargs", "source=/no/such/data.jsonl", "--out", tmp_path / "x", "--quiet")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "x").exists()
