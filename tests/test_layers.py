"""Layer specs resolve to exactly the intended parameters, with clear errors otherwise."""

import pytest
import torch
from tiny_models import build_tiny
from torch import nn

from onelayer.errors import UserError
from onelayer.training.layers import apply_selection, parse_layer_spec, select_parameters


@pytest.mark.parametrize("spec,expected", [
    ("15", [15]), ("-1", [29]), ("12,14,16", [12, 14, 16]), ("12-16", [12, 13, 14, 15, 16]),
    ("middle", [15]), ("all", list(range(30))), ("none", []), ("mid:4", [13, 14, 15, 16]), ("mid:5", [12, 13, 14, 15, 16]),
])
def test_specs_resolve_to_block_indices(spec, expected):
    assert parse_layer_spec(spec, 30)[0] == expected


def test_out_of_range_index_names_the_valid_range():
    with pytest.raises(UserError, match=r"out of range.*0\.\.29"):
        parse_layer_spec("30", 30)


@pytest.mark.parametrize("spec", ["fifteen", "3-1", "1,,2", "", "mid:x", "re:("])
def test_malformed_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        parse_layer_spec(spec, 30)


def test_single_block_selects_all_its_tensors_and_nothing_else(tokenizer):
    model = build_tiny("qwen3", tokenizer)
    sel = select_parameters(model, "2")
    assert sel.layer_indices == [2]
    assert sel.param_names and all(n.startswith("model.layers.2.") for n in sel.param_names)
    assert len(sel.param_names) == len([n for n, _ in model.named_parameters() if n.startswith("model.layers.2.")])
    assert "training layers 2 of 4" in sel.describe()


def test_sub_layer_targets_select_only_that_module(tokenizer):
    model = build_tiny("llama", tokenizer)
    mlp = select_parameters(model, "1.mlp").param_names
    attn = select_parameters(model, "1.attn").param_names
    assert mlp and all(n.startswith("model.layers.1.mlp.") for n in mlp)
    assert attn and all(n.startswith("model.layers.1.self_attn.") for n in attn)
    with pytest.raises(UserError, match="no sub-module 'moe'"):
        select_parameters(model, "1.moe")


def test_regex_and_also_train(tokenizer):
    model = build_tiny("qwen2", tokenizer)
    sel = select_parameters(model, r"re:layers\.[03]\.mlp\.down_proj")
    assert sorted(sel.param_names) == ["model.layers.0.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    sel = select_parameters(model, "none", also_train=["final_norm", "embeddings"])
    assert sorted(sel.param_names) == ["model.embed_tokens.weight", "model.norm.weight"]


def test_apply_selection_freezes_everything_else(tokenizer):
    model = build_tiny("qwen3", tokenizer)
    params = apply_selection(model, select_parameters(model, "1"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith("model.layers.1.") for n in trainable)
    assert len(params) == len(trainable)
    assert not model.get_input_embeddings().weight.requires_grad


def test_model_without_blocks_is_a_clear_error():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(UserError, match="NoBlocks"):
        select_parameters(NoBlocks(), "0")
    assert torch.is_tensor(next(NoBlocks().parameters()))
