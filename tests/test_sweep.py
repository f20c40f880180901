"""Layer sweeps on a tiny model: jobs, resume after SIGKILL, extension, identity checks, inserted blocks, Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from onelayer.benchmarks.suites import get_suite
from onelayer.benchmarks.sweep import (
    PRESETS,
    SweepSpec,
    job_train_config,
    plan_jobs,
    preset_spec,
    validate_spec,
)
from onelayer.benchmarks.sweep_results import load_results
from onelayer.cli import _parse_seeds, app
from onelayer.errors import UserError
from onelayer.training.config import TrainConfig

TESTS = Path(__file__).parent
# A reward that varies on a random tiny model, so every training job really updates its weights.
TRAIN = json.dumps({"num_tasks": 2, "num_generations": 2, "max_new_tokens": 6, "micro_batch_size": 4,
                    "reward_funcs": ["support_rewards:length_reward"], "save_every": 1})


def _sweep_args(model_dir, out, layers="0,3", seeds="2", steps=3, extra=()):
    return ["sweep", "--out", str(out), "--model", str(model_dir), "--layers", layers, "--seeds", seeds,
            "--steps", str(steps), "--eval-items", "4", "--algo", "grpo", "--train", TRAIN, "--quiet", *extra]


@pytest.fixture(autouse=True)
def _support_rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _results(out) -> dict:
    return {r.job: r for r in load_results(out)}


def _comparable(r):
    return (r.score, r.scores, r.extra.get("trained_sha256"), r.extra.get("final_reward"), r.weight_change)


def test_seeds_flag_is_a_count_or_a_list():
    assert _parse_seeds("3") == [0, 1, 2]
    assert _parse_seeds("0,5,7") == [0, 5, 7]
    assert _parse_seeds("5,") == [5]
    with pytest.raises(UserError):
        _parse_seeds("x")


def test_plan_has_one_base_then_full_and_each_target_per_seed():
    spec = SweepSpec(domains=["math"], algos=["grpo"], layers="0,2-3,1.mlp", seeds=[0, 1])
    ids = [j.id for j in plan_jobs(spec, 4)]
    assert ids[0] == "math/base"
    assert ids[1:6] == ["math/grpo/s0/full", "math/grpo/s0/layer-0", "math/grpo/s0/layer-2",
                        "math/grpo/s0/layer-3", "math/grpo/s0/layer-1.mlp"]
    assert len(ids) == 1 + 2 * 5
    assert len(plan_jobs(SweepSpec(layers="all", seeds=[0]), 4)) == 1 + 1 + 4
    with pytest.raises(UserError, match="out of range"):
        SweepSpec(layers="0,9").targets(4)


def test_each_single_layer_lr_scale_plans_its_own_jobs():
    from onelayer.benchmarks.sweep_results import JobResult, done_job_ids

    spec = SweepSpec(domains=["math"], algos=["grpo"], layers="0,2", seeds=[0], single_layer_lr_scale=[1, 4, 0.5])
    jobs = plan_jobs(spec, 4)
    assert [j.id for j in jobs] == ["math/base", "math/grpo/s0/full", "math/grpo/s0/layer-0", "math/grpo/s0/layer-2",
                                    "math/grpo/s0/layer-0-x4", "math/grpo/s0/layer-2-x4", "math/grpo/s0/layer-0-x0.5",
                                    "math/grpo/s0/layer-2-x0.5"]
    assert [j.lr_scale for j in jobs[2:]] == [1.0, 1.0, 4.0, 4.0, 0.5, 0.5]
    cfg = job_train_config(dataclasses.replace(spec, lr=1e-3), jobs[4], Path("unused"))
    assert cfg.single_layer_lr_scale == 4.0 and cfg.lr == 1e-3  # the trainer multiplies (and records) it
    assert "single_layer_lr_scale" not in spec.identity()  # another scale extends a sweep instead of being refused
    # a job of a one-scale sweep recorded before scales had their own ids counts as done
    legacy = JobResult("math/grpo/s0/layer-0", "math", 0, "layer", "0", 0, "grpo", 0.3, {}, lr_scale=4.0)
    assert done_job_ids([legacy]) == {"math/grpo/s0/layer-0-x4"}
    for bad in ([], [1, 0], [-2], ["x"]):
        with pytest.raises(UserError, match="single-layer-lr-scale"):
            SweepSpec(single_layer_lr_scale=bad).lr_scales()


def test_sweep_runs_every_job_writes_a_report_and_resumes_and_extends(tiny_model_dirs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "sw"
    res = runner.invoke(app, _sweep_args(tiny_model_dirs["qwen3"], out))
    assert res.exit_code == 0, res.output
    got = _results(out)
    assert set(got) == {"math/base"} | {f"math/grpo/s{s}/{n}" for s in (0, 1) for n in ("full", "layer-0", "layer-3")}
    for r in got.values():
        if r.method != "base":
            run = Path(r.run_dir)
            assert (run / "trained.safetensors").is_file() and (run / "suites.json").is_file()
            assert not (run / "checkpoints").exists()  # a finished job's checkpoints go (keep_checkpoints off)
            assert json.loads((run / "config.json").read_text())["config"]["lr"] == r.lr
            assert r.extra["trained_sha256"]
    full = got["math/grpo/s0/full"]
    assert set(full.weight_change) == {"0", "1", "2", "3"} and all(v > 0 for v in full.weight_change.values())
    one = got["math/grpo/s0/layer-3"].weight_change
    assert one["3"] > 0 and one["0"] == one["1"] == one["2"] == 0.0  # only the trained block moved
    assert (out / "report" / "report.md").is_file() and "math (grpo)" in res.output
    mtime = (out / "results.jsonl").stat().st_mtime_ns

    res = runner.invoke(app, _sweep_args(tiny_model_dirs["qwen3"], out))  # everything done: nothing reruns
    assert res.exit_code == 0 and (out / "results.jsonl").stat().st_mtime_ns == mtime

    from onelayer.benchmarks.export import export_run

    export_run(full.run_dir, tmp_path / "exported")  # a pruned job still exports (and is checked on reload)

    res = runner.invoke(app, _sweep_args(tiny_model_dirs["qwen3"], out, layers="0,3,1.mlp", seeds="0,2",  # extend
                                         extra=("--keep-checkpoints",)))
    assert res.exit_code == 0, res.output
    ext = _results(out)
    assert all((Path(ext[j].run_dir) / "checkpoints").is_dir() for j in set(ext) - set(got))
    assert set(ext) - set(got) == {"math/grpo/s0/layer-1.mlp"} | {f"math/grpo/s2/{n}" for n in
                                                                 ("full", "layer-0", "layer-3", "layer-1.mlp")}
    assert all(_comparable(ext[j]) == _comparable(got[j]) for j in got)

    res = runner.invoke(app, _sweep_args(tiny_model_dirs["qwen3"], out, steps=4))  # other budget: refused
    assert res.exit_code == 2 and "steps: 3 -> 4" in res.output

    res = runner.invoke(app, _sweep_args(tiny_model_dirs["qwen3"], out, layers="0,3", seeds="0,",  # another lr scale
                                         extra=("--single-layer-lr-scale", "4")))
    assert res.exit_code == 0, res.output
    scaled = _results(out)
    assert set(scaled) - set(ext) == {"math/grpo/s0/layer-0-x4", "math/grpo/s0/layer-3-x4"}
    r4 = scaled["math/grpo/s0/layer-3-x4"]
    assert r4.lr_scale == 4.0 and r4.lr == pytest.approx(4 * got["math/grpo/s0/layer-3"].lr)
    assert json.loads((Path(r4.run_dir) / "config.json").read_text())["single_layer_lr_scale"] == 4.0
    assert "x1 vs x4: not computed" in (out / "report" / "report.md").read_text()  # 2 layers: too few to rank
    assert json.loads((out / "sweep.json").read_text())["all"]["lr_scales"] == [1.0, 4.0]


def test_sweep_killed_with_sigkill_resumes_to_the_same_results(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["qwen3"]
    cmd = [sys.executable, "-m", "onelayer.cli"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(cmd + _sweep_args(model, ref, layers="2", seeds="1", steps=4, extra=["--no-report"]),
                   check=True, env=env, capture_output=True)
    # Kill in the middle of the full-parameter job: after its second step's checkpoint.
    proc = subprocess.Popen(cmd + _sweep_args(model, killed, layers="2", seeds="1", steps=4, extra=["--no-report"]),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "jobs" / "math" / "grpo" / "s0" / "full" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "math/grpo/s0/layer-2" not in {r.job for r in load_results(killed)}
    subprocess.run(cmd + _sweep_args(model, killed, layers="2", seeds="1", steps=4, extra=["--no-report"]),
                   check=True, env=env, capture_output=True)
    a, b = _results(ref), _results(killed)
    assert set(a) == set(b)
    for job in a:
        assert _comparable(a[job]) == _comparable(b[job]), job


def test_identity_copy_insertion_keeps_the_model_function(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    from onelayer.training.insert import insert_block
    from onelayer.training.layers import find_decoder_blocks

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["qwen3"]).eval()
    ids = torch.tensor([[5, 17, 99, 3, 42, 7]])
    before = model(ids).logits
    assert insert_block(model, "onelayer.training.insert:identity_copy", 2) == 5
    _, blocks = find_decoder_blocks(model)
    assert [b.self_attn.layer_idx for b in blocks] == [0, 1, 2, 3, 4]
    assert model.config.num_hidden_layers == 5
    torch.testing.assert_close(model(ids).logits, before)
    with pytest.raises(UserError, match="out of range"):
        insert_block(model, "onelayer.training.insert:identity_copy", 9)
    with pytest.raises(UserError, match="module:factory"):
        insert_block(model, "no_colon", 1)


def test_sweep_trains_an_inserted_block_and_eval_reloads_it(tiny_model_dirs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ins"
    res = runner.invoke(app, _sweep_args(tiny_model_dirs["llama"], out, layers="1", seeds="1", steps=2,
                                         extra=["--insert-layer", "onelayer.training.insert:identity_copy",
                                                "--insert-at", "2", "--no-report"]))
    assert res.exit_code == 0, res.output
    r = _results(out)["math/grpo/s0/layer-insert-2"]
    assert r.target == "insert@2" and r.layer == 2
    from safetensors.torch import load_file

    trained = load_file(str(Path(r.run_dir) / "trained.safetensors"))
    assert trained and all(k.startswith("model.layers.2.") for k in trained)
    res = runner.invoke(app, ["eval", "--run", r.run_dir, "--suite", "math-l1", "--num-items", "4",
                              "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == r.scores["math-l1"]


@pytest.mark.slow  # starts a local Ray instance (minutes on 2 cores); CI runs -m slow after the default suite
def test_ray_executor_gives_the_local_results(tiny_model_dirs, tmp_path):
    runner = CliRunner()
    local, remote = tmp_path / "local", tmp_path / "ray"
    args = dict(layers="3", seeds="1", steps=2)
    assert runner.invoke(app, _sweep_args(tiny_model_dirs["qwen2"], local, **args, extra=["--no-report"])).exit_code == 0
    res = runner.invoke(app, _sweep_args(tiny_model_dirs["qwen2"], remote, **args,
                                         extra=["--no-report", "--executor", "ray", "--cpus-per-job", "1"]))
    assert res.exit_code == 0, res.output
    a, b = _results(local), _results(remote)
    assert set(a) == set(b) == {"math/base", "math/grpo/s0/full", "math/grpo/s0/layer-3"}
    for job in a:
        if a[job].extra.get("trained_sha256") == b[job].extra.get("trained_sha256"):
            assert _comparable(a[job]) == _comparable(b[job]), job
            continue
        # Ray runs each job on 1 CPU, the local executor on 2: torch's CPU kernels (and the sampler's lower-block
        # states a single-layer job replays) are equal only up to fp32 rounding across thread counts, which
        # AdamW's lr * m / (sqrt(v) + eps) can turn into a move of up to lr on an entry whose gradient is rounding
        # noise (2 lr per step at most). Scores, rewards and nearly every weight must still agree.
        assert (a[job].score, a[job].scores, a[job].extra.get("final_reward")) == \
            (b[job].score, b[job].scores, b[job].extra.get("final_reward")), job
        from safetensors.torch import load_file

        wa, wb = (load_file(str(Path(r.run_dir) / "trained.safetensors")) for r in (a[job], b[job]))
        assert wa.keys() == wb.keys()
        for n in wa:
            diff = (wa[n].float() - wb[n].float()).abs()
            assert float(diff.max()) <= 2 * a[job].lr * 2, (job, n)
            assert float((diff > 1e-6).float().mean()) <= 0.01, (job, n)


def test_bad_sweep_options_fail_before_any_work(tmp_path):
    runner = CliRunner()
    for args, needle in [
        (["--domains", "chess"], "chess"),
        (["--algo", "ppo"], "unknown algorithm 'ppo'"),
        (["--seeds", "x"], "--seeds"),
        (["--executor", "slurm"], "unknown executor"),
        (["--suites", "nope"], "unknown suite 'nope'"),
        (["--preset", "huge"], "unknown sweep preset"),
        (["--insert-layer", "onelayer.training.insert:identity_copy"], "--insert-at"),
        (["--train", "num_generations=1"], "num_generations"),
        (["--single-layer-lr-scale", "1,x"], "--single-layer-lr-scale takes"),
        (["--single-layer-lr-scale", "0"], "positive numbers"),
    ]:
        res = runner.invoke(app, ["sweep", "--out", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
        assert "Traceback" not in res.output
    assert not (tmp_path / "bad" / "results.jsonl").exists()


def _hand_built_sweep(path: Path, model: str, domain: str = "math", scores=None) -> Path:
    """A sweep directory with results written by hand: base 0.2, full 0.6, layers 0-3 scored ``scores``."""
    import dataclasses

    from onelayer.benchmarks.sweep_results import JobResult, append_result

    path.mkdir()
    spec = SweepSpec(model=model, domains=[domain], algos=["grpo"], layers="0-3", seeds=[0, 1], steps=2,
                     eval_items=3, train=json.loads(TRAIN))
    (path / "sweep.json").write_text(json.dumps({"spec": dataclasses.asdict(spec), "identity": spec.identity(),
                                                 "all": {"seeds": [0, 1]}, "num_layers": 4}))
    append_result(path, JobResult(f"{domain}/base", domain, -1, "base", "none", None, "none", 0.2, {}))
    for s in (0, 1):
        append_result(path, JobResult(f"{domain}/grpo/s{s}/full", domain, s, "full", "all", None, "grpo", 0.6, {}))
        for layer, score in (scores or {0: 0.3, 1: 0.5, 2: 0.55, 3: 0.25}).items():
            append_result(path, JobResult(f"{domain}/grpo/s{s}/layer-{layer}", domain, s, "layer", str(layer), layer,
                                          "grpo", score, {}))
    return path


def test_compare_runs_each_layer_aware_method_on_unused_seeds(tiny_model_dirs, tmp_path):
    sweep = _hand_built_sweep(tmp_path / "ranked", str(tiny_model_dirs["qwen3"]))
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", "--sweep", str(sweep), "--out", str(out), "--quiet", "--seeds", "2,",
                                   # lora-matched first: the jobs after it share the model it injected adapters into
                                   "--methods", "lora-matched,full,only-top2,only-bottom1,boost-top1,mid2"])
    assert res.exit_code == 0, res.output
    got = _results(out)
    assert set(got) == {"math/base"} | {f"math/grpo/s2/{m}" for m in
                                        ("full", "only-top2", "only-bottom1", "boost-top1", "mid2", "lora-matched")}

    def config(method):
        return json.loads((Path(got[f"math/grpo/s2/{method}"].run_dir) / "config.json").read_text())

    assert config("only-top2")["selection"]["layer_indices"] == [1, 2]
    assert config("only-bottom1")["selection"]["layer_indices"] == [3]
    assert config("mid2")["selection"]["layer_indices"] == [1, 2]
    groups = {g["name"]: g for g in config("boost-top1")["param_groups"]}
    assert len(groups) == 2 and sorted(g["lr"] for g in groups.values()) == [spec_lr := 3e-5, 2 * spec_lr]
    assert config("lora-matched")["lora"]
    from safetensors import safe_open

    with safe_open(str(Path(got["math/grpo/s2/full"].run_dir) / "trained.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not any(".lora_" in n or "base_layer" in n for n in names)  # the adapters were taken out
    table = (out / "compare.md").read_text()
    for m in ("full", "only-top2", "lora-matched"):
        assert f"| {m} |" in table
    assert "undefined (full gain too small)" in table  # accuracy stays 0 on a random tiny model


def test_compare_ranks_by_another_domain_and_takes_a_presets_settings(tiny_model_dirs, tmp_path):
    from onelayer.benchmarks.compare import plan_compare

    code_sweep = _hand_built_sweep(tmp_path / "code", str(tiny_model_dirs["qwen3"]), "code",
                                   {0: 0.55, 1: 0.3, 2: 0.25, 3: 0.5})
    out = tmp_path / "cmp"
    res = CliRunner().invoke(app, ["compare", "--sweep", str(code_sweep), "--out", str(out), "--quiet", "--seeds", "2,",
                                   "--domains", "math", "--rank-domain", "code", "--methods", "only-top1,only-bottom1"])
    assert res.exit_code == 0, res.output
    got = _results(out)
    sel = {m: json.loads((Path(got[f"math/grpo/s2/{m}"].run_dir) / "config.json").read_text())["selection"]
           for m in ("only-top1", "only-bottom1")}
    assert sel["only-top1"]["layer_indices"] == [0] and sel["only-bottom1"]["layer_indices"] == [2]  # code's ranking
    assert f"Ranking: {code_sweep}, domain code" in (out / "compare.md").read_text()
    res = CliRunner().invoke(app, ["compare", "--sweep", str(code_sweep), "--out", str(tmp_path / "x"),
                                   "--rank-domain", "agentic"])
    assert res.exit_code == 2 and "--rank-domain agentic" in res.output and "code" in res.output
    res = CliRunner().invoke(app, ["compare", "--sweep", str(code_sweep), "--out", str(tmp_path / "x"),
                                   "--preset", "cpu-agentic"])
    assert res.exit_code == 2 and "a ranking only holds for its model" in res.output
    # A sweep of the default model: the preset's settings train the compared domain, the math ranking picks layers.
    math_sweep = _hand_built_sweep(tmp_path / "math", "smollm2-135m")
    spec, jobs = plan_compare(math_sweep, ["full", "only-top2", "mid2"], seeds=[5], rank_domain="math",
                              preset="cpu-agentic", log=lambda m: None)
    agentic = SweepSpec.from_dict(preset_spec("cpu-agentic"))
    assert spec.domains == ["agentic"] and spec.algos == ["gigpo"] and spec.lr == agentic.lr
    assert spec.train == agentic.train and spec.domain_suites("agentic") == ["alfworld-gen-easy-sampled",
                                                                           "alfworld-gen-easy"]
    top = next(j for j in jobs if j.method == "only-top2")
    cfg = job_train_config(spec, top, tmp_path / "run")
    assert cfg.rank_domain == "math" and cfg.action_format == "score" and cfg.layers == f"top:2@{math_sweep}"


@pytest.mark.parametrize("name", [n for n in PRESETS if n.startswith("cpu-")])
def test_cpu_presets_give_valid_job_configs(name, tmp_path):
    spec = SweepSpec.from_dict(preset_spec(name))
    validate_spec(spec)
    for job in plan_jobs(spec, num_layers=30):
        if job.method != "base":
            cfg = job_train_config(spec, job, tmp_path / "run")
            assert cfg.lr == spec.domain_lr(job.domain) and cfg.steps == spec.domain_steps(job.domain)
            if name != "cpu-three-domains":
                assert cfg.lr == (spec.lr or TrainConfig.lr) and cfg.steps == spec.steps
    if name == "cpu-agentic":  # the score-format learning study's setting: easy games, 20 steps, the matching suite
        assert spec.domain_suites("agentic") == ["alfworld-gen-easy-sampled", "alfworld-gen-easy"]
        sampled = get_suite("alfworld-gen-easy-sampled")
        assert sampled.temperature == 1.0 and sampled.num_samples == 4
        assert {**sampled.env_kwargs} == {**get_suite("alfworld-gen-easy").env_kwargs}  # the same games
        assert cfg.action_format == "score" and cfg.env_kwargs["generated_games"] == "easy"
        assert (cfg.lr, cfg.steps, cfg.num_tasks, cfg.num_generations) == (1e-4, 20, 3, 4)
        assert cfg.env_kwargs["hide_commands"] == list(get_suite("alfworld-gen-easy").env_kwargs["hide_commands"])


def test_three_domain_preset_gives_each_domain_its_lr_steps_and_the_others_in_domain_suite(tmp_path):
    spec = SweepSpec.from_dict(preset_spec("cpu-three-domains"))
    jobs = plan_jobs(spec, num_layers=30)
    assert {j.domain for j in jobs} == {"math", "code", "agentic"}
    assert {j.target for j in jobs if j.method == "layer"} == {"0", "6", "12", "15", "22", "29", "insert@15"}
    assert len(jobs) == 3 * (1 + 3 * (1 + 6 + 1))
    cfgs = {d: job_train_config(spec, next(j for j in jobs if j.domain == d and j.method == "layer"), tmp_path / d)
            for d in spec.domains}
    assert cfgs["math"].lr == spec.train["math"]["lr"] and cfgs["code"].lr == spec.train["code"]["lr"]
    assert cfgs["agentic"].steps == 20 and cfgs["math"].steps == cfgs["code"].steps == 10
    assert cfgs["code"].env_kwargs == {"dataset": "procedural", "level": 1}
    assert cfgs["agentic"].action_format == "score"
    # transfer: every job is scored on each other domain's first (in-domain) suite; HumanEval only on code jobs
    assert spec.eval_suites("math") == ["math-l1", "code-gen-l1", "alfworld-gen-easy-sampled"]
    assert spec.eval_suites("code") == ["code-gen-l1", "humaneval", "math-l1", "alfworld-gen-easy-sampled"]
    assert spec.transfer_suite_items("math") == {"code-gen-l1": 64, "alfworld-gen-easy-sampled": 10}
    assert spec.transfer_suite_items("agentic") == {"code-gen-l1": 64}


def test_command_line_steps_and_lr_apply_to_every_domain(tmp_path):
    runner = CliRunner()
    out = tmp_path / "sw"
    res = runner.invoke(app, ["sweep", "--preset", "cpu-three-domains", "--out", str(out), "--steps", "1",
                              "--lr", "1e-3", "--dry-run"])
    assert res.exit_code == 0, res.output
    from onelayer.cli import _sweep_spec

    spec = _sweep_spec(preset_spec("cpu-three-domains"), {"steps": 1, "lr": 1e-3}, None)
    assert all(spec.domain_steps(d) == 1 and spec.domain_lr(d) == 1e-3 for d in spec.domains)
    assert spec.train["agentic"]["action_format"] == "score"  # only steps and lr were taken out
    assert "estimated: math" in res.output and "estimated: agentic" in res.output


def test_narrowing_a_presets_domains_drops_its_item_counts_for_the_others(tmp_path):
    from onelayer.cli import _sweep_spec

    spec = _sweep_spec(preset_spec("cpu-three-domains"), {"domains": ["onelayer/Code-v0"]}, None)
    assert spec.transfer_items == {"code": 64}
    res = CliRunner().invoke(app, ["sweep", "--preset", "cpu-three-domains", "--domains", "code", "--out",
                                   str(tmp_path / "sw"), "--dry-run"])
    assert res.exit_code == 0, res.output  # was: "--transfer-items names 'agentic', which is not a swept domain"
    res = CliRunner().invoke(app, ["sweep", "--preset", "cpu-three-domains", "--domains", "code", "--out",
                                   str(tmp_path / "sw2"), "--transfer-items", "agentic=3", "--dry-run"])
    assert res.exit_code == 2 and "not a swept domain" in res.output  # given on the command line: still an error


def test_a_domains_own_options_may_change_until_its_first_job_ran(tmp_path):
    from onelayer.benchmarks.sweep import _check_identity, _write_spec
    from onelayer.benchmarks.sweep_results import JobResult, append_result

    def spec(code_lr, fmt="score"):
        return SweepSpec.from_dict({"domains": ["math", "code", "agentic"], "train": {
            "math": {"lr": 1e-5}, "code": {"lr": code_lr}, "agentic": {"action_format": fmt}}})

    out = tmp_path / "sw"
    out.mkdir()
    _write_spec(out, spec(1e-5), 30)
    _check_identity(out, spec(3e-5))  # nothing ran yet: any domain may still change
    append_result(out, JobResult(job="math/base", domain="math", seed=-1, method="base", target="none", layer=None,
                                 algo="none", score=0.3, scores={"math-l1": 0.3}))
    _check_identity(out, spec(3e-5))  # code has not run: its lr may still be settled
    with pytest.raises(UserError, match="train"):
        _check_identity(out, spec(1e-5, fmt="choice"))  # how a suite is scored: math's transfer would change
    bad = spec(1e-5)
    bad.train["math"]["lr"] = 3e-5
    with pytest.raises(UserError, match="train"):
        _check_identity(out, bad)  # math's jobs ran with 1e-5


def test_cost_lines_use_the_sweeps_own_job_times_once_it_has_them():
    from onelayer.benchmarks.sweep import cost_lines
    from onelayer.benchmarks.sweep_results import JobResult

    spec = SweepSpec.from_dict(preset_spec("cpu-three-domains"))
    jobs = plan_jobs(spec, num_layers=30)
    before = cost_lines(spec, jobs, [])
    assert len(before) == 3 and all("preset's estimate" in line for line in before)
    done = [JobResult(job="math/base", domain="math", seed=-1, method="base", target="none", layer=None, algo="none",
                      score=0.3, scores={}, wall_s=120.0)]
    after = cost_lines(spec, [j for j in jobs if j.id != "math/base"], done)
    assert "1 base" not in after[0] and "preset's estimate" in after[0]
    spec2 = SweepSpec.from_dict({"domains": ["math"], "layers": "0"})
    line = cost_lines(spec2, plan_jobs(spec2, 30), done)[0]
    assert line.startswith("estimated: math: unknown") and "1 base x 2 min" in line


def test_transfer_items_score_only_the_other_domains_suites_on_their_first_items(tiny_model_dirs, tmp_path,
                                                                                 monkeypatch):
    from onelayer.benchmarks import sweep as sweep_mod
    from onelayer.benchmarks.sweep import Job, ModelCache, run_job

    asked: dict = {}

    def fake_run_suites(suites, engine, tok, **kw):
        (s,) = suites
        asked[s.name] = s.num_items
        return {s.name: {"metric": s.metric, s.metric: 0.5}}, {}

    monkeypatch.setattr(sweep_mod, "run_suites", fake_run_suites)
    cache = ModelCache(str(tiny_model_dirs["qwen3"]))

    def scored(domain, **kw):
        asked.clear()
        spec = SweepSpec(model=str(tiny_model_dirs["qwen3"]), domains=["math", "code"], seeds=[0],
                         suites={"math": ["math-l1"], "code": ["code-gen-l1", "humaneval"]}, **kw)
        validate_spec(spec)
        run_job(spec, Job(domain, "none", -1, "base", "none"), tmp_path / str(len(list(tmp_path.iterdir()))), cache)
        return dict(asked)

    full = {"math-l1": 256, "code-gen-l1": 128}
    assert scored("math") == full
    # only the other domain's in-domain suite is cut; a domain's own suites keep their counts
    assert scored("math", transfer_items={"code": 5, "math": 7}) == {"math-l1": 256, "code-gen-l1": 5}
    assert scored("code", transfer_items={"code": 5, "math": 7}) == {"code-gen-l1": 128, "humaneval": None,
                                                                     "math-l1": 7}
    # an env id names the domain too; --eval-items below the transfer count wins
    assert scored("math", transfer_items={"onelayer/Code-v0": 5}, eval_items=3) == {"math-l1": 3, "code-gen-l1": 3}
    assert scored("math", transfer_items={"code": 5}, transfer=False) == {"math-l1": 256}


@pytest.mark.parametrize("value, needle", [("physics=3", "not a swept domain"), ("code=0", ">= 1"),
                                           ("code=x", ">= 1")])
def test_bad_transfer_items_exit_2_before_any_job(tmp_path, value, needle):
    res = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "sw"), "--domains", "math,code",
                                   "--transfer-items", value, "--dry-run"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_a_sweep_started_before_a_setting_existed_resumes_only_at_its_default(tmp_path):
    from onelayer.benchmarks.sweep import _check_identity, _write_spec

    out = tmp_path / "sw"
    out.mkdir()
    spec = SweepSpec(domains=["math", "code"])
    _write_spec(out, spec, 30)
    stored = json.loads((out / "sweep.json").read_text())
    del stored["identity"]["transfer_items"]  # as a sweep.json written before the setting was added
    (out / "sweep.json").write_text(json.dumps(stored))
    _check_identity(out, spec)
    with pytest.raises(UserError, match="transfer_items"):
        _check_identity(out, SweepSpec(domains=["math", "code"], transfer_items={"code": 5}))


def test_inserted_blocks_can_be_added_to_a_sweep_until_one_has_run(tmp_path):
    from onelayer.benchmarks.sweep import _check_identity, _write_spec
    from onelayer.benchmarks.sweep_results import JobResult, append_result

    factory = "onelayer.training.insert:identity_copy"
    out = tmp_path / "sw"
    out.mkdir()
    _write_spec(out, SweepSpec(), 30)
    append_result(out, JobResult(job="math/base", domain="math", seed=-1, method="base", target="none", layer=None,
                                 algo="none", score=0.3, scores={"math-l1": 0.3}))
    _check_identity(out, SweepSpec(insert_layer=factory, insert_at=[15]))  # adds insert@15 jobs only
    _write_spec(out, SweepSpec(insert_layer=factory, insert_at=[15]), 30)
    append_result(out, JobResult(job="math/gigpo/s0/layer-insert-15", domain="math", seed=0, method="layer",
                                 target="insert@15", layer=15, algo="gigpo", score=0.4, scores={"math-l1": 0.4}))
    with pytest.raises(UserError, match="insert_layer"):  # another block at the same ids would not compare
        _check_identity(out, SweepSpec(insert_layer="mypkg.blocks:other", insert_at=[15]))
