"""A weight sync sends exactly the trained tensors, under the names and fused layout vLLM loads."""

import pytest
import torch
from tiny_models import ARCHS, build_tiny, tiny_config

from onelayer.agents.weight_sync import (
    all_tensors,
    fuse_for_vllm,
    fused_shapes,
    head_dim,
    layer_and_model_bytes,
    tensor_bytes,
    trained_tensors,
    vllm_param_names,
    vllm_target,
)
from onelayer.training.layers import select_parameters


def test_q_k_v_and_gate_up_map_to_fused_shards_everything_else_one_to_one():
    p = "model.layers.15."
    t = vllm_target(p + "self_attn.q_proj.weight")
    assert (t.name, t.shard) == (p + "self_attn.qkv_proj.weight", "q")
    assert vllm_target(p + "self_attn.k_proj.weight").shard == "k"
    assert (vllm_target(p + "self_attn.v_proj.bias").name, vllm_target(p + "self_attn.v_proj.bias").shard) == \
        (p + "self_attn.qkv_proj.bias", "v")
    assert (vllm_target(p + "mlp.gate_proj.weight").name, vllm_target(p + "mlp.gate_proj.weight").shard) == \
        (p + "mlp.gate_up_proj.weight", 0)
    assert vllm_target(p + "mlp.up_proj.weight").shard == 1
    for same in ("self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
                 "post_attention_layernorm.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight"):
        assert vllm_target(p + same).name == p + same and vllm_target(p + same).shard is None
    assert vllm_target("model.embed_tokens.weight").name == "model.embed_tokens.weight"
    # q_norm / k_norm (Qwen3) contain "q_" / "k_" but are not the projections
    assert "qkv" not in vllm_target(p + "self_attn.q_norm.weight").name


@pytest.mark.parametrize("arch", ARCHS)
def test_trained_tensors_are_exactly_the_selected_layer_and_share_storage(arch, tokenizer):
    model = build_tiny(arch, tokenizer)
    sel = select_parameters(model, "2")
    sent = trained_tensors(model, sel.param_names)
    names = [n for n, _ in sent]
    assert names == [n for n, _ in model.named_parameters() if n.startswith("model.layers.2.")]
    assert set(names) <= set(model.state_dict())  # HF state-dict names
    params = dict(model.named_parameters())
    for n, t in sent:
        assert t.data_ptr() == params[n].data_ptr() and not t.requires_grad  # no copy, detached
    with pytest.raises(KeyError, match="no parameter"):
        trained_tensors(model, ["model.layers.9.mlp.up_proj.weight"])


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_tensors_match_the_configs_head_and_mlp_sizes(arch, tokenizer):
    model = build_tiny(arch, tokenizer)
    cfg = model.config
    sent = trained_tensors(model, select_parameters(model, "1").param_names)
    fused = fuse_for_vllm(sent)
    shapes = fused_shapes(cfg)
    p = "model.layers.1."
    hd = head_dim(cfg)
    assert fused[p + "self_attn.qkv_proj.weight"].shape == shapes["qkv_proj.weight"] == \
        ((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd, cfg.hidden_size)
    assert fused[p + "mlp.gate_up_proj.weight"].shape == shapes["gate_up_proj.weight"] == \
        (2 * cfg.intermediate_size, cfg.hidden_size)
    # vLLM's row order: [q | k | v] and [gate | up]
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    q_rows, kv_rows = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    qkv = fused[p + "self_attn.qkv_proj.weight"]
    assert torch.equal(qkv[:q_rows], attn.q_proj.weight)
    assert torch.equal(qkv[q_rows : q_rows + kv_rows], attn.k_proj.weight)
    assert torch.equal(qkv[q_rows + kv_rows :], attn.v_proj.weight)
    gu = fused[p + "mlp.gate_up_proj.weight"]
    assert torch.equal(gu[: cfg.intermediate_size], mlp.gate_proj.weight)
    assert torch.equal(gu[cfg.intermediate_size :], mlp.up_proj.weight)
    if arch == "qwen2":  # q/k/v biases fuse too
        assert fused[p + "self_attn.qkv_proj.bias"].shape == shapes["qkv_proj.bias"]
    if arch == "qwen3":
        assert p + "self_attn.q_norm.weight" in fused and p + "self_attn.k_norm.weight" in fused
    # what vLLM must report as loaded: the fused names, no HF projection names left
    assert set(fused) == vllm_param_names(n for n, _ in sent)
    hf_only = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
    assert not any(hf_only & set(n.split(".")) for n in fused)


def test_a_partial_fused_group_is_refused_by_name():
    w = torch.zeros(4, 4)
    with pytest.raises(ValueError, match=r"qkv_proj.weight: shards \['k', 'v'\] missing"):
        fuse_for_vllm([("model.layers.0.self_attn.q_proj.weight", w)])


def test_bytes_of_one_layer_vs_the_whole_model(tokenizer):
    model = build_tiny("qwen3", tokenizer)
    one = trained_tensors(model, select_parameters(model, "2").param_names)
    every = all_tensors(model)
    assert tensor_bytes(one) == 4 * sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.layers.2."))
    assert tensor_bytes(one, torch.bfloat16) * 2 == tensor_bytes(one)  # fp32 held, bf16 sent
    assert tensor_bytes(every) == 4 * sum(p.numel() for p in model.parameters())
    assert tensor_bytes(one) < tensor_bytes(every) / 4  # one of four layers, plus embeddings elsewhere


def test_computed_sizes_from_a_config_match_a_built_model(tokenizer):
    cfg = tiny_config("llama", len(tokenizer))
    got = layer_and_model_bytes(cfg, torch.float32, layer=1)
    model = build_tiny("llama", tokenizer)
    assert got["model_params"] == sum(p.numel() for p in model.parameters())
    assert got["layer_params"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.layers.1."))
    assert got["layer_bytes"] == 4 * got["layer_params"] and got["num_layers"] == 4
