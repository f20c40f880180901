"""The training-step benchmark's token counts (the FLOP floor's N and R) follow what ``ppo_update`` forwards."""

from onelayer.benchmarks.train_step import forwarded_tokens
from onelayer.training.rows import Row


def _group(prompt, lengths, adv):
    return [Row(list(prompt), [7] * n, adv) for n in lengths]


def test_prompts_count_once_per_micro_batch_and_silent_micro_batches_not_at_all():
    a = _group(range(10), [3, 4], 0.5)  # prompt 10, responses 3 + 4
    b = _group(range(5), [2, 2], 0.0)  # a silent group
    c = _group(range(10), [1, 1], -0.5)  # a's prompt again, in another micro-batch
    rows = a + b + c
    assert forwarded_tokens(rows, True, 2, skip_silent=True) == (10 + 7 + 10 + 2, 7 + 2)
    assert forwarded_tokens(rows, True, 2, skip_silent=False) == (10 + 7 + 5 + 4 + 10 + 2, 7 + 4 + 2)
    assert forwarded_tokens(rows, False, 2, skip_silent=False) == (20 + 7 + 10 + 4 + 20 + 2, 7 + 4 + 2)
    # one micro-batch holding a silent row and a live one runs whole
    assert forwarded_tokens(rows, True, 6, skip_silent=True) == (10 + 7 + 5 + 4 + 2, 7 + 4 + 2)


def test_score_rows_count_the_prompt_and_every_candidate():
    rows = [Row([1, 2, 3], [9], 1.0, candidates=[[9], [8, 8], [7, 7, 7]], choice=0),
            Row([1, 2], [8, 8], 0.0, candidates=[[8, 8]], choice=0)]
    assert forwarded_tokens(rows, True, 1, skip_silent=True) == (3 + 6, 6)
    assert forwarded_tokens(rows, True, 1, skip_silent=False) == (3 + 6 + 2 + 2, 6 + 2)


def test_profile_puts_every_op_of_both_phases_under_one_kind(tiny_model_dirs, monkeypatch):
    """On a tiny model: both phases profiled, the kinds' self times add up to about the phase's wall time, and the
    matmuls the floor counts are found (a run whose ops all fell under 'other' would say nothing)."""
    from pathlib import Path

    from onelayer.benchmarks import profile_step
    from onelayer.benchmarks.profile_step import KINDS, kind_of, measure

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    plain = profile_step._config

    def varied_reward(*a, **kw):  # a random tiny model earns math reward 0: reward length, so the update runs
        cfg = plain(*a, **kw)
        cfg.reward_funcs = ["support_rewards:length_reward"]
        return cfg

    monkeypatch.setattr(profile_step, "_config", varied_reward)

    assert kind_of("aten::mm") == "matmul" and kind_of("aten::cat") == "copies"
    assert kind_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert kind_of("aten::_foreach_mul_") == "optimizer" and kind_of("aten::pow") == "elementwise"
    phases = measure(str(tiny_model_dirs["qwen3"]), "1", None, "math", "cpu")
    for name in ("sampling", "update"):
        p = phases[name]
        assert set(p["by_kind_s"]) == set(KINDS)
        total = sum(p["by_kind_s"].values())
        assert 0.3 * p["wall_s"] <= total <= 1.1 * p["wall_s"], (name, total, p["wall_s"])
        assert p["by_kind_s"]["matmul"] > 0 and p["flops"] > 0 and p["tokens"] > 0
    assert phases["update"]["by_kind_s"]["optimizer"] > 0


def test_peak_memory_is_the_process_own_not_its_large_parents():
    # Linux keeps the pre-exec address space's size in ru_maxrss: train_step processes started by `onelayer bench`
    # after it had loaded the model all reported the bench's 2.3 GB as their peak.
    import subprocess
    import sys

    import torch

    from onelayer.benchmarks.machine import peak_rss_bytes

    big = torch.ones(200 * 2**20)  # 800 MB, touched, in this (the parent) process
    assert peak_rss_bytes() >= big.numel() * 4
    out = subprocess.run([sys.executable, "-c", "from onelayer.benchmarks.machine import peak_rss_bytes; "
                          "print(peak_rss_bytes())"], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 400 * 2**20, int(out.stdout) / 2**20  # the child's own peak: an interpreter
    del big


def test_dtype_reaches_the_trainer_and_the_table_names_it(tiny_model_dirs, tmp_path):
    """``--dtype bfloat16``: the trainer's model computes in bf16 with its trained block in fp32, in both the default
    and a preset's configuration, and the results table says which throughput the floor used."""
    import json

    import torch

    from onelayer.benchmarks import results as res
    from onelayer.benchmarks.train_step import _config, measure
    from onelayer.training.trainer import Trainer

    assert _config("m", "15", 16, 8, "cpu", None, "math", "bfloat16").dtype == "bfloat16"
    assert _config("m", "15", 16, 8, "cpu", "cpu-three-domains", "agentic", "bfloat16").dtype == "bfloat16"
    assert _config("m", "15", 16, 8, "cpu", "cpu-three-domains", "agentic").dtype == "auto"
    cfg = _config(str(tiny_model_dirs["qwen3"]), "1", 16, 8, "cpu", None, "math", "bfloat16")
    cfg.out = str(tmp_path / "run")
    trainer = Trainer(cfg)
    kinds = {n.split(".")[2] if ".layers." in n else "other": p.dtype for n, p in trainer.model.named_parameters()}
    assert kinds["1"] == torch.float32 and kinds["0"] == torch.bfloat16 and kinds["other"] == torch.bfloat16
    row = measure(str(tiny_model_dirs["qwen3"]), "1", 16, 8, 1, "cpu", dtype="bfloat16")
    assert row["step_s"] > 0 and row["sampling_s"] > 0 and row["sampler_captured"]
    row.update(time_vs_all=1.0, sampling_vs_all=1.0, memory_vs_all=1.0, floor_s=1.0, floor_fraction=1.0, layers="all")
    (tmp_path / "ts.json").write_text(json.dumps({"dtype": "bfloat16", "matmul_gflops": 500.0, "rows": [row]}))
    table = res.train_step(tmp_path, "ts.json")
    assert "computes in bf16" in table and "measured bf16 matmul throughput, 500.0" in table
    (tmp_path / "ts.json").write_text(json.dumps({"matmul_gflops": 500.0, "rows": [row]}))  # stored before --dtype
    assert "measured fp32 matmul" in res.train_step(tmp_path, "ts.json")


def test_an_unknown_dtype_exits_2_before_any_model_loads(capsys):
    import pytest

    from onelayer.benchmarks.train_step import main

    with pytest.raises(SystemExit) as e:
        main(["--dtype", "float8"])
    assert e.value.code == 2 and "invalid choice: 'float8'" in capsys.readouterr().err
