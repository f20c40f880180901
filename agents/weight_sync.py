"""What a weight sync sends to a rollout engine, and how HF names map onto vLLM's fused layout.

After an optimizer step only the trained tensors changed, so only they travel
(``trained_tensors``). vLLM keeps the attention input projections and the MLP
input projections of Llama / Qwen2 / Qwen3 fused::

    q_proj, k_proj, v_proj  ->  qkv_proj      rows [q | k | v], shard ids "q", "k", "v"
    gate_proj, up_proj      ->  gate_up_proj  rows [gate | up],  shard ids 0, 1
    everything else         ->  the same name

vLLM's ``load_weights`` takes HF names and applies this mapping itself (each
shard's weight loader writes its rows of the fused tensor); ``vllm_target``
mirrors it so the engine can check which vLLM parameters a sync must touch,
and ``fuse_for_vllm`` builds the fused tensors so tests can check shapes
against the model config. Pure functions, no vLLM needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

# (fused vLLM name, HF name, shard id), in vLLM's row order within each fused tensor.
STACKED_PARAMS: tuple[tuple[str, str, str | int], ...] = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)
# HF architectures whose vLLM implementation uses exactly STACKED_PARAMS and HF names otherwise.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclass(frozen=True)
class VLLMTarget:
    """Where an HF tensor lands in vLLM: a parameter name and, for fused parameters, the shard id."""

    name: str
    shard: str | int | None = None


def vllm_target(hf_name: str) -> VLLMTarget:
    """The vLLM parameter (and shard) that the HF tensor ``hf_name`` is loaded into."""
    parts = hf_name.split(".")
    for fused, hf, shard in STACKED_PARAMS:
        if hf in parts:
            return VLLMTarget(".".join(fused if p == hf else p for p in parts), shard)
    return VLLMTarget(hf_name)


def vllm_param_names(hf_names: Iterable[str]) -> set[str]:
    """The vLLM parameter names a load of ``hf_names`` writes (what vLLM's ``load_weights`` reports as loaded)."""
    return {vllm_target(n).name for n in hf_names}


def trained_tensors(model: torch.nn.Module, param_names: Iterable[str]) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for exactly the named parameters, by their HF ``state_dict`` names, detached.

    The tensors share storage with the model (no copy): this is what a sync sends after a step.
    Raises ``KeyError`` for a name the model does not have.
    """
    params = dict(model.named_parameters())
    out = []
    for n in param_names:
        if n not in params:
            raise KeyError(f"{type(model).__name__} has no parameter {n!r}")
        out.append((n, params[n].detach()))
    return out


def all_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter (tied weights once), detached: what a full sync would send."""
    return [(n, p.detach()) for n, p in model.named_parameters()]


def tensor_bytes(named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None) -> int:
    """Bytes of the tensors' data; with ``dtype``, as if cast to it (what travels to a bf16 engine)."""
    size = None if dtype is None else torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() * (size or t.element_size()) for _, t in named)


def fuse_for_vllm(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """HF tensors -> vLLM-named tensors, concatenating q/k/v and gate/up rows in vLLM's order.

    Every shard of a fused tensor must be present (a whole trained layer always
    has them); a partial group raises ``ValueError`` naming the missing shards.
    """
    groups: dict[str, dict[str | int, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in named:
        target = vllm_target(name)
        if target.shard is None:
            out[target.name] = t
        else:
            groups.setdefault(target.name, {})[target.shard] = t
    for fused_name, shards in groups.items():
        fused = next(f for f, _, _ in STACKED_PARAMS if f in fused_name.split("."))
        order = [s for f, _, s in STACKED_PARAMS if f == fused]
        missing = [s for s in order if s not in shards]
        if missing:
            raise ValueError(f"{fused_name}: shards {missing} missing; a fused tensor needs all of {order}")
        out[fused_name] = torch.cat([shards[s] for s in order], dim=0)
    return out


def head_dim(config) -> int:
    """Attention head size: ``config.head_dim`` when set (Qwen3), else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def fused_shapes(config) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer's fused vLLM tensors (tensor parallel 1) from an HF config."""
    hd, kv = head_dim(config), getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    qkv_rows = (config.num_attention_heads + 2 * kv) * hd
    shapes = {"qkv_proj.weight": (qkv_rows, config.hidden_size),
              "gate_up_proj.weight": (2 * config.intermediate_size, config.hidden_size)}
    if getattr(config, "attention_bias", False) or getattr(config, "model_type", "") == "qwen2":
        shapes["qkv_proj.bias"] = (qkv_rows,)
    return shapes


def layer_and_model_bytes(config, dtype: torch.dtype = torch.bfloat16, layer: int | None = None) -> dict:
    """Bytes of one decoder layer and of the whole model, computed from ``config`` (no weights needed).

    Builds the model on the meta device, so sizes are exact for any architecture
    transformers knows. ``layer`` defaults to the middle one.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    from onelayer.agents.models import find_decoder_blocks

    path, blocks = find_decoder_blocks(model)
    layer = len(blocks) // 2 if layer is None else layer
    prefix = f"{path}.{layer}."
    named = all_tensors(model)
    one = [(n, t) for n, t in named if n.startswith(prefix)]
    return {"layer": layer, "num_layers": len(blocks), "dtype": str(dtype).replace("torch.", ""),
            "layer_params": sum(t.numel() for _, t in one), "model_params": sum(t.numel() for _, t in named),
            "layer_bytes": tensor_bytes(one, dtype), "model_bytes": tensor_bytes(named, dtype)}
