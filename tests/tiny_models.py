"""Tiny random-init Qwen3 / Qwen2 / Llama models for tests.

Tests import these from here, never from ``conftest``: pytest registers every folder's conftest.py under the
one module name ``conftest``, so a sub-folder's conftest (tests/real_vllm/) would shadow the top-level one.
"""

from __future__ import annotations

import torch

ARCHS = ("qwen3", "qwen2", "llama")


def tiny_config(arch: str, vocab_size: int, num_layers: int = 4):
    """A 4-layer, 64-wide config of the given family."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if arch == "qwen3":
        return Qwen3Config(head_dim=16, **common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(arch)


def build_tiny(arch: str, tokenizer, seed: int = 0, num_layers: int = 4):
    """A random-init tiny causal LM of ``arch`` in fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        tiny_config(arch, len(tokenizer), num_layers), dtype=torch.float32
    )
    return model.eval()
