"""lora-matched: LoRA adapters on every block with the rank that matches a layer selection's size."""

import json

import pytest
import torch
from test_trainer import _load, tiny_config
from tiny_models import build_tiny

from onelayer.errors import UserError
from onelayer.training.config import TrainConfig
from onelayer.training.layers import select_parameters
from onelayer.training.lora import attach_lora, matched_rank, params_per_rank, plan_lora, strip_lora
from onelayer.training.trainer import Trainer

# The tiny Qwen3 (conftest): hidden 64, 4 query heads and 2 KV heads of 16, MLP 128, so one block's
# linear maps (in + out) are q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64.
PER_RANK_PER_BLOCK = 128 + 96 + 96 + 128 + 192 + 192 + 192


def test_matched_rank_is_the_closest_parameter_count(tokenizer):
    model = build_tiny("qwen3", tokenizer)
    assert params_per_rank(model, "all") == 4 * PER_RANK_PER_BLOCK
    block = select_parameters(model, "2").num_trainable  # 37,024: the linear weights plus four norms
    m = matched_rank(model, "2")
    assert m.rank == round(block / (4 * PER_RANK_PER_BLOCK)) == 9
    assert m.lora_params == 9 * 4 * PER_RANK_PER_BLOCK and m.target_params == block
    assert abs(m.lora_params - block) <= 4 * PER_RANK_PER_BLOCK / 2
    assert matched_rank(model, "1-2").rank == 18
    assert matched_rank(model, "2.attn").rank == 3  # 12,320 attention parameters / 4,096 per rank
    assert matched_rank(model, r"re:layers\.2\.self_attn\.q_norm").rank == 1  # 16 parameters: never below 1


def test_attached_adapters_are_the_planned_size(tokenizer):
    model = build_tiny("qwen3", tokenizer)
    plan = plan_lora(model, "0,1,2,3", matched_to="2")
    attach_lora(model, plan)
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert adapters == plan.num_params == 9 * 4 * PER_RANK_PER_BLOCK
    assert plan.alpha == 18.0 and len(plan.target_modules) == 4 * 7


def test_stripped_adapters_leave_the_plain_model_ready_for_the_next_job(tokenizer):
    """A sweep's shared model after a LoRA job: adapters out, base weights load, another LoRA job attaches."""
    model = build_tiny("qwen3", tokenizer)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = model(ids).logits
    plan = plan_lora(model, "all", matched_to="2")
    for _ in range(2):
        attach_lora(model, plan)
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if ".lora_B." in n).add_(1.0)  # a trained adapter
        assert strip_lora(model) == len(plan.target_modules)
        assert model.state_dict().keys() == base.keys()
        model.load_state_dict(base)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, want)
    assert strip_lora(model) == 0


def test_lora_run_trains_only_adapters_and_evaluates_through_the_run(tiny_model_dirs, tmp_path):
    from safetensors.torch import load_file

    from onelayer.benchmarks.evaluate import evaluate, load_run_model

    d = tiny_model_dirs["qwen3"]
    run = tmp_path / "run"
    model, tok = _load(d)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    result = Trainer(tiny_config(d, run, layers="all", lora_matched_to="2"), model=model, tokenizer=tok).train(progress=False)
    assert result.metrics[0]["update_norm"] > 0

    state = model.state_dict()
    changed = {n for n in state if n in base and not torch.equal(base[n], state[n])}
    assert changed == set(), "base weights must not move"
    saved = load_file(str(run / "trained.safetensors"))
    assert saved and all(".lora_A." in n or ".lora_B." in n for n in saved)
    assert any(".lora_B." in n and s.abs().sum() > 0 for n, s in saved.items())  # B starts at 0: it trained
    stored = json.loads((run / "config.json").read_text())
    assert stored["lora"]["rank"] == 9 and stored["lora"]["matched_to"] == "2"
    assert stored["selection"]["num_trainable"] == stored["lora"]["num_params"] == 9 * 4 * PER_RANK_PER_BLOCK

    merged, _, _ = load_run_model(run, device="cpu")
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([tok("What is 3 + 4?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-4)
    res = evaluate(run=str(run), num_items=2)
    assert res["num_items"] == 2


@pytest.mark.parametrize("kw,match", [
    ({"lora_rank": 4, "lora_matched_to": "2"}, "not both"),
    ({"lora_rank": 0}, "lora_rank"),
    ({"lora_rank": 4, "also_train": ["lm_head"]}, "only the adapters"),
    ({"lora_rank": 4, "engine": "vllm"}, "hf engine"),
])
def test_bad_lora_options_are_user_errors(kw, match):
    with pytest.raises(UserError, match=match):
        TrainConfig(**kw).validate()
