"""The trainer updates exactly the selected tensors, proves it, and saves/loads them faithfully."""

import json

import pytest
import torch
from tiny_models import ARCHS

from onelayer.errors import TrainingError, UserError
from onelayer.training import checkpoint as ckpt
from onelayer.training.config import TrainConfig
from onelayer.training.trainer import Trainer

METRIC_KEYS = {"step", "reward", "kl", "entropy", "grad_norm", "update_norm", "clip_fraction", "truncated_fraction",
               "no_signal_groups", "time/sampling_s", "time/training_s"}


def tiny_config(model_dir, out, **kw):
    base = dict(model=str(model_dir), out=str(out), steps=1, num_tasks=2, num_generations=4, max_new_tokens=6,
                eval_size=4, eval_every=0, reward_funcs=["support_rewards:length_reward"], lr=1e-3,
                micro_batch_size=3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(model_dir)


def _changed(before, model):
    after = model.state_dict()
    return {n for n in before if not torch.equal(before[n], after[n])}


@pytest.mark.parametrize("arch", ARCHS)
def test_one_step_changes_exactly_the_selected_layer(arch, tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs[arch])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = Trainer(tiny_config(tiny_model_dirs[arch], tmp_path / "run", layers="2"), model=model, tokenizer=tok).train(progress=False)
    changed = _changed(before, model)
    layer2 = {n for n in before if n.startswith("model.layers.2.")}
    assert changed == layer2, "exactly layer 2 must change; every other tensor must stay bit-identical"
    m = result.metrics[0]
    assert METRIC_KEYS <= set(m)
    assert m["update_norm"] > 0 and m["grad_norm"] > 0


def test_none_changes_nothing_and_all_changes_every_block(tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["qwen3"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "none", layers="none"), model=model, tokenizer=tok).train(progress=False)
    assert _changed(before, model) == set()

    model, tok = _load(tiny_model_dirs["qwen3"])
    Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "all", layers="all"), model=model, tokenizer=tok).train(progress=False)
    changed = _changed(before, model)
    for i in range(4):
        assert any(n.startswith(f"model.layers.{i}.") for n in changed), f"block {i} did not change"
    assert not any(n.startswith(f"model.{x}") for n in changed for x in ("embed_tokens", "norm."))


def test_saved_layer_reproduces_the_trained_models_logits(tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["llama"])
    run = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dirs["llama"], run, layers="1"), model=model, tokenizer=tok).train(progress=False)
    from safetensors.torch import load_file

    saved = load_file(str(run / "trained.safetensors"))
    assert set(saved) == {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    fresh, _ = _load(tiny_model_dirs["llama"])
    ids = torch.tensor([tok("What is 3 + 4?")["input_ids"]])
    with torch.no_grad():
        assert not torch.equal(fresh(ids).logits, model(ids).logits)
        ckpt.load_trained(fresh, run / "trained.safetensors")
        assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_equal_rewards_skip_the_optimizer_step_without_error(tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["qwen2"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # no extra reward: a random tiny model never answers the math correctly, so every group is all-zero
    res = Trainer(tiny_config(tiny_model_dirs["qwen2"], tmp_path / "r", layers="0", reward_funcs=[]), model=model, tokenizer=tok).train(progress=False)
    m = res.metrics[0]
    assert m["no_signal_groups"] == 2 and m["optimizer_steps"] == 0 and m["update_norm"] == 0.0
    assert _changed(before, model) == set()


def test_weights_that_do_not_move_stop_the_run(tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["qwen3"])
    cfg = tiny_config(tiny_model_dirs["qwen3"], tmp_path / "r", layers="1", lr=1e-30)
    with pytest.raises(TrainingError, match="did not change"):
        Trainer(cfg, model=model, tokenizer=tok).train(progress=False)


@pytest.mark.parametrize("algo,extra", [("drgrpo", {}), ("grpo", {"beta": 0.1, "num_iterations": 2, "mini_batch_size": 4})])
def test_algorithms_and_ppo_epochs_run_and_report(algo, extra, tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["qwen3"])
    res = Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / algo, layers="1-2", algo=algo, steps=2, **extra),
                  model=model, tokenizer=tok).train(progress=False)
    assert [m["step"] for m in res.metrics] == [1, 2]
    if extra:
        assert res.metrics[0]["optimizer_steps"] == 4  # 2 iterations x 2 mini-batches
        assert res.metrics[1]["kl"] > 0


def test_resume_is_exact(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    straight = Trainer(tiny_config(d, tmp_path / "a", layers="1", steps=4, save_every=2)).train(progress=False)
    Trainer(tiny_config(d, tmp_path / "b", layers="1", steps=2, save_every=2)).train(progress=False)
    resumed = Trainer(tiny_config(d, tmp_path / "b", layers="1", steps=4, save_every=2), resume=True).train(progress=False)

    def strip(ms):
        # the shorter run evaluates at its last step; the uninterrupted one does not
        return [{k: v for k, v in m.items() if not k.startswith(("time/", "eval/"))} for m in ms]

    assert strip(resumed.metrics) == strip(straight.metrics)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a/trained.safetensors")), load_file(str(tmp_path / "b/trained.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_dir_needs_resume_and_resume_checks_options(tiny_model_dirs, tmp_path):
    d = tiny_model_dirs["qwen3"]
    Trainer(tiny_config(d, tmp_path / "r", layers="1")).train(progress=False)
    with pytest.raises(UserError, match="--resume"):
        Trainer(tiny_config(d, tmp_path / "r", layers="1"))
    with pytest.raises(UserError, match="layers"):
        Trainer(tiny_config(d, tmp_path / "r", layers="2"), resume=True)
    stored = json.loads((tmp_path / "r/config.json").read_text())
    assert stored["selection"]["layer_indices"] == [1] and stored["selection"]["num_trainable"] > 0


def test_out_of_range_layer_names_the_range(tiny_model_dirs, tmp_path):
    with pytest.raises(UserError, match=r"0\.\.3"):
        Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "r", layers="7"))


def test_report_to_tensorboard_writes_event_files(tiny_model_dirs, tmp_path):
    model, tok = _load(tiny_model_dirs["qwen3"])
    Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "r", layers="1", report_to=["tensorboard"]),
            model=model, tokenizer=tok).train(progress=False)
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))


def test_python_api_train_and_evaluate(tiny_model_dirs, tmp_path):
    import onelayer

    cfg = tiny_config(tiny_model_dirs["qwen2"], tmp_path / "api", layers="middle")
    result = onelayer.train(cfg.to_dict(), progress=False)
    assert result.selection.layer_indices == [2]
    res = onelayer.evaluate(run=str(tmp_path / "api"), out=str(tmp_path / "e.json"))
    assert res["accuracy"] == result.final_eval["accuracy"]
    assert json.loads((tmp_path / "e.json").read_text())["num_items"] == 4


def test_reward_function_returning_the_wrong_count_is_a_user_error(tiny_model_dirs, tmp_path):
    cfg = tiny_config(tiny_model_dirs["qwen3"], tmp_path / "r", layers="1", reward_funcs=["support_rewards:wrong_count"])
    with pytest.raises(UserError, match="returned 1 values for 8 completions"):
        Trainer(cfg).train(progress=False)
    with pytest.raises(UserError, match="cannot import reward function"):
        Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "r2", layers="1", reward_funcs=["nope_mod:fn"]))


def test_reusing_lower_block_outputs_matches_recomputing_them(tiny_model_dirs, tmp_path):
    results = {}
    for reuse in (True, False):
        model, tok = _load(tiny_model_dirs["qwen3"])
        cfg = tiny_config(tiny_model_dirs["qwen3"], tmp_path / str(reuse), layers="2", steps=2, beta=0.05,
                          num_iterations=2, reuse_lower_hidden=reuse)
        trainer = Trainer(cfg, model=model, tokenizer=tok)
        assert (trainer.lower is not None) == reuse
        results[reuse] = (trainer.train(progress=False).metrics, {n: p.detach().clone() for n, p in model.named_parameters()})
    (m_a, w_a), (m_b, w_b) = results[True], results[False]
    for a, b in zip(m_a, m_b):
        for k in ("reward", "kl", "loss", "update_norm", "clip_fraction"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-7), k
    # The reused states come from the sampler (a left-padded prefill), the recomputed ones from a right-padded
    # forward: equal up to fp32 rounding. AdamW's step lr * m / (sqrt(v) + eps) turns an entry whose gradient is
    # rounding noise into a move of up to lr, so such entries may differ by 2 lr per optimizer step (4 here);
    # every other entry agrees to 1e-6.
    lr, opt_steps = 1e-3, 2 * 2
    for n in w_a:
        diff = (w_a[n] - w_b[n]).abs()
        assert float(diff.max()) <= 2 * lr * opt_steps, n
        assert float((diff > 1e-6).float().mean()) <= 0.01, n


def test_a_mini_batch_without_signal_skips_its_step_instead_of_tripping_the_guard(tiny_model_dirs, tmp_path):
    import numpy as np

    from onelayer.agents.trajectory import Step, Trajectory

    model, tok = _load(tiny_model_dirs["qwen3"])
    trainer = Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "a", layers="1", mini_batch_size=4),
                      model=model, tokenizer=tok)
    prompt = trainer.prompts.encode("What is 1 + 1?")
    trajs = []
    for i in range(8):
        t = Trajectory(task_id=i // 4, group=i // 4, sample=i % 4)
        t.steps.append(Step(prompt, [100 + i, 200 + i, 2], [0.0] * 3, "x", 0.0, None))
        trajs.append(t)
    # mini-batches interleave rows (0,2,4,6) and (1,3,5,7): the first has no signal at all
    adv = [np.array([0.0 if i % 2 == 0 else (1.0 if i < 4 else -1.0)]) for i in range(8)]
    stats = trainer.update(trajs, adv)
    assert stats["optimizer_steps"] == 1 and stats["update_norm"] > 0


def test_report_to_wandb_offline_writes_a_local_run(tiny_model_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model, tok = _load(tiny_model_dirs["qwen3"])
    Trainer(tiny_config(tiny_model_dirs["qwen3"], tmp_path / "r", layers="1", report_to=["wandb"]),
            model=model, tokenizer=tok).train(progress=False)
    assert list((tmp_path / "r" / "wandb").glob("offline-run-*"))
