"""A bf16 model trains its selected layer in fp32 (weights and AdamW state); checkpointing changes memory, not results."""

import torch
from tiny_models import build_tiny

from onelayer.training.config import TrainConfig
from onelayer.training.memory import checkpoint_blocks, keep_fp32_master
from onelayer.training.trainer import Trainer


def _config(model_dir, out, **kw):
    base = dict(model=str(model_dir), out=str(out), steps=1, num_tasks=2, num_generations=4, max_new_tokens=6,
                eval_size=4, eval_every=0, reward_funcs=["support_rewards:length_reward"], lr=1e-3,
                micro_batch_size=3, seed=0, layers="2")
    base.update(kw)
    return TrainConfig(**base)


def test_bf16_model_trains_an_fp32_layer_with_fp32_optimizer_state(tiny_model_dirs, tokenizer, tmp_path):
    model = build_tiny("qwen3", tokenizer).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(_config(tiny_model_dirs["qwen3"], tmp_path / "run"), model=model, tokenizer=tokenizer)
    metrics = trainer.train(progress=False).metrics[0]
    assert metrics["update_norm"] > 0 and metrics["optimizer_steps"] >= 1
    for name, p in model.named_parameters():
        trained = name.startswith("model.layers.2.")
        assert p.dtype == (torch.float32 if trained else torch.bfloat16), name
        if not trained:
            assert torch.equal(p, before[name]), f"{name} is frozen and must stay bit-identical"
    changed = [n for n, p in model.named_parameters() if n.startswith("model.layers.2.") and
               not torch.equal(p.to(torch.bfloat16), before[n])]
    assert changed, "the trained layer moved"
    states = [trainer.optimizer.state[p] for p in trainer.params]
    assert states and all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32
                          for s in states)


def test_without_fp32_master_weights_the_layer_stays_bf16(tiny_model_dirs, tokenizer, tmp_path):
    model = build_tiny("llama", tokenizer).to(torch.bfloat16)
    Trainer(_config(tiny_model_dirs["llama"], tmp_path / "run", fp32_master_weights=False), model=model,
            tokenizer=tokenizer).train(progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_fp32_layer_inside_a_bf16_model_runs_forward_and_backward(tokenizer):
    model = build_tiny("qwen2", tokenizer).to(torch.bfloat16)
    params = [p for n, p in model.named_parameters() if n.startswith("model.layers.1.")]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    keep_fp32_master(model, params)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16  # the rest of the model still computes in bf16
    logits.float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dirs, tokenizer, tmp_path):
    results = []
    for gc in (False, True):
        model = build_tiny("qwen3", tokenizer)
        Trainer(_config(tiny_model_dirs["qwen3"], tmp_path / f"gc{gc}", layers="1", gradient_checkpointing=gc),
                model=model, tokenizer=tokenizer).train(progress=False)
        results.append({n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("model.layers.1.")})
        if gc:
            assert all(getattr(b, "_onelayer_checkpointed", False) == (i >= 1) for i, b in enumerate(model.model.layers))
    for n in results[0]:
        torch.testing.assert_close(results[0][n], results[1][n], rtol=1e-5, atol=1e-6)


def test_checkpointed_blocks_recompute_instead_of_storing(tokenizer):
    model = build_tiny("llama", tokenizer)
    calls = []
    for i, b in enumerate(model.model.layers):  # count the blocks' MLP forwards, recomputations included
        def counted(*args, _i=i, _forward=b.mlp.forward, **kwargs):
            calls.append(_i)
            return _forward(*args, **kwargs)

        b.mlp.forward = counted
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("model.layers.1."))
    checkpoint_blocks(model.model.layers, 1)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    loss = model(input_ids=ids, use_cache=False).logits.sum()
    assert calls == [0, 1, 2, 3]
    loss.backward()
    assert sorted(calls[4:]) == [1, 2, 3], "blocks 1.. run again during backward; block 0 does not"
