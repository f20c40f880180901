"""The sampler's captured lower-block states equal a fresh forward's, so the update can skip the frozen blocks."""

from __future__ import annotations

import pytest
import torch

from onelayer.agents.engine import HFEngine, SamplingParams
from onelayer.agents.models import find_decoder_blocks
from onelayer.training.logprobs import LowerStack
from conftest import ARCHS, build_tiny


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("block", [1, 3])
def test_captured_states_equal_the_input_of_the_block_in_a_plain_forward(arch, block, tokenizer, grouped_prompts):
    model = build_tiny(arch, tokenizer)
    # compact_fraction=0.1: finished rows leave the cache mid-generation, the bookkeeping the capture must follow
    engine = HFEngine(model, tokenizer, max_batch_size=8, compact_fraction=0.1)
    engine.eos_ids = list(range(0, len(tokenizer), 5))  # a random model stops early only if many tokens end it
    engine.capture_block = block
    gens = engine.generate(grouped_prompts, SamplingParams(max_new_tokens=12, temperature=1.0, seed=3))
    engine.capture_block = None
    plain = engine.generate(grouped_prompts, SamplingParams(max_new_tokens=12, temperature=1.0, seed=3))
    assert [g.token_ids for g in gens] == [g.token_ids for g in plain]  # capturing changes nothing sampled
    assert all(g.hidden is None for g in plain)
    assert len({len(g.token_ids) for g in gens}) > 2  # rows finished at different steps
    lower = LowerStack(model, find_decoder_blocks(model)[1], block)
    for p, g in zip(grouped_prompts, gens):
        seq = torch.tensor([p + g.token_ids])
        want = lower.capture(seq, torch.ones_like(seq))[0]
        assert g.hidden.shape == (len(p) + len(g.token_ids) - 1, want.shape[-1])
        torch.testing.assert_close(g.hidden, want[:-1], rtol=1e-4, atol=1e-5)


def test_capture_of_a_block_out_of_range_fails_loudly(tokenizer, grouped_prompts):
    model = build_tiny("llama", tokenizer)
    engine = HFEngine(model, tokenizer)
    engine.capture_block = 4  # the tiny model has blocks 0-3
    with pytest.raises(IndexError):
        engine.generate(grouped_prompts[:1], SamplingParams(max_new_tokens=2))
