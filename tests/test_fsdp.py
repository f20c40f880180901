"""FSDP over 2 CPU processes (gloo): one step equals the single-process step on the same batch.

The launch is the documented one (torchrun, here ``python -m torch.distributed.run``);
tests/fsdp_worker.py is what each rank runs.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onelayer.errors import UserError
from onelayer.training.config import TrainConfig
from onelayer.training.trainer import Trainer

TESTS = Path(__file__).parent


def fsdp_config(model_dir, out, **kw) -> dict:
    base = dict(model=str(model_dir), out=str(out), layers="all", steps=1, num_tasks=2, num_generations=2,
                max_new_tokens=6, eval_size=2, eval_every=0, save_every=1, reward_funcs=["support_rewards:length_reward"],
                lr=1e-3, seed=0, device="cpu")
    base.update(kw)
    return base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# score: multi-turn episodes give the ranks different numbers of steps, so the short rank pads its batch
SCORE = dict(env="onelayer/GuessNumber-v0", env_kwargs={"high": 4}, action_format="score", max_turns=3, seed=1,
             reward_funcs=[])


@pytest.mark.parametrize("fmt", ["generate", "score"])
def test_fsdp_two_processes_match_the_single_process_step(fmt, tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["qwen3"]
    cfg = fsdp_config(model_dir, tmp_path / "single", **(SCORE if fmt == "score" else {}))
    # The single-process step on a fixed batch: the reference the 2-process update must reproduce.
    single = Trainer(TrainConfig.from_dict(cfg))
    trajs = single.sample(1)
    assert {t.group for t in trajs} == {0, 1}
    if fmt == "score":  # the ranks hold different numbers of steps: rank 1 pads
        assert len({sum(t.length for t in trajs if t.group == g) for g in (0, 1)}) == 2
    w0 = {n: p.detach().clone() for n, p in single.model.named_parameters() if n in single.param_names}
    ref_grads = {}
    single.optimizer.register_step_pre_hook(lambda opt, args, kwargs: ref_grads.update(
        {n: p.grad.detach().clone() for n, p in single.model.named_parameters() if n in single.param_names}))
    ref_stats = single.update(trajs, single.advantages(trajs)[0])
    ref = {n: p.detach().clone() for n, p in single.model.named_parameters() if n in single.param_names}
    torch.save(trajs, tmp_path / "trajs.pt")
    (tmp_path / "config.json").write_text(json.dumps(cfg))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(_free_port()), str(TESTS / "fsdp_worker.py"), str(tmp_path / "config.json"),
                        str(tmp_path / "trajs.pt"), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]

    # The key property: same batch, same gradient, within float reduction-order noise.
    fixed = torch.load(tmp_path / "fixed.pt", weights_only=False)
    assert fixed["stats"]["grad_norm"] == pytest.approx(ref_stats["grad_norm"], rel=1e-5)  # catches a wrong loss normaliser
    assert fixed["stats"]["loss"] == pytest.approx(ref_stats["loss"], rel=1e-5, abs=1e-7)
    assert fixed["stats"]["entropy"] == pytest.approx(ref_stats["entropy"], rel=1e-5)
    assert set(fixed["weights"]) == set(fixed["grads"]) == set(ref) == set(ref_grads)
    lr, eps = single.config.lr, single.optimizer.defaults["eps"]
    for n in ref:
        assert not torch.equal(ref[n], w0[n]), n
        # Two ranks sum their half-batches' gradients where one process sums the whole batch, and the
        # thread count changes how matmuls block their sums: the same fp32 terms added in another order.
        # Each gradient entry sums at most a few hundred token terms, so the error stays far below
        # 1e-4 of the tensor's largest entry (fp32 unit roundoff 6e-8, times the terms summed).
        g, g_ref = fixed["grads"][n], ref_grads[n]
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-4 * float(g_ref.abs().max()) + 1e-12, msg=n)
        # The weights are NOT compared with each other: AdamW's first step moves every entry by
        # lr * g / (|g| + eps), so an entry whose gradient is rounding noise (|g| near eps) can move by
        # anything up to lr either way, on one machine and not on another. Each side must instead have
        # applied exactly that step to its own gradient.
        for w, grad in ((fixed["weights"][n], g), (ref[n], g_ref)):
            torch.testing.assert_close(w, w0[n] - lr * grad / (grad.abs() + eps), rtol=1e-6, atol=1e-7, msg=n)

    # The 2-step run: written once, by rank 0; both ranks hold the same, finite, trained weights.
    run = tmp_path / "run"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["config"]["fsdp"] is True
    assert (run / "eval.json").is_file() and (run / "checkpoints" / "step-000003" / "state.json").is_file()
    for stage in ("run", "resumed"):
        r0, r1 = (torch.load(tmp_path / f"{stage}-rank{k}.pt") for k in (0, 1))
        assert set(r0) == set(ref)
        for n in r0:
            assert torch.equal(r0[n], r1[n]), f"{stage}: ranks disagree on {n}"
            assert torch.isfinite(r0[n]).all(), n
            assert not torch.equal(r0[n], w0[n]), f"{stage}: {n} did not train"
    saved = load_file(str(run / "trained.safetensors"))
    for n in saved:
        assert torch.equal(saved[n], torch.load(tmp_path / "resumed-rank0.pt")[n]), n


def test_fsdp_without_torchrun_is_a_one_line_user_error(tiny_model_dirs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(TESTS)
    r = subprocess.run([sys.executable, "-m", "onelayer.cli", "train", "--model", str(tiny_model_dirs["qwen3"]),
                        "--layers", "all", "--fsdp", "--out", str(tmp_path / "run"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: --fsdp runs one process per device under torchrun")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_fsdp_refuses_num_tasks_not_divisible_by_the_world_size(tiny_model_dirs, tmp_path, monkeypatch):
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(k, v)
    cfg = TrainConfig.from_dict(fsdp_config(tiny_model_dirs["qwen3"], tmp_path / "run", num_tasks=3, fsdp=True))
    with pytest.raises(UserError, match="num_tasks=3 .* 2 processes"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()
