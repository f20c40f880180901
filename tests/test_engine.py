"""The HF rollout engine: same tokens as transformers' generate, correct log-probs, seeded, stops at EOS."""

import pytest
import torch
from tiny_models import build_tiny

from onelayer.agents.engine import HFEngine, SamplingParams
from onelayer.agents.prompts import PromptBuilder


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = build_tiny("qwen3", tokenizer, seed=3)
    builder = PromptBuilder.for_domain(tokenizer, "math")
    prompts = [builder.encode(q) for q in ["What is 2 + 2?", "What is 13 + 29?", "Name a colour.", "x"]]
    return model, HFEngine(model, tokenizer, max_batch_size=8), prompts


def test_greedy_matches_transformers_generate(setup):
    model, engine, prompts = setup
    ours = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0))
    for p, g in zip(prompts, ours):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=2)[0, len(p):].tolist()
        assert g.token_ids == ref


def test_batched_equals_one_by_one_and_micro_batches(setup, tokenizer):
    model, engine, prompts = setup
    params = SamplingParams(max_new_tokens=10, temperature=0)
    batched = [g.token_ids for g in engine.generate(prompts, params)]
    single = [engine.generate([p], params)[0].token_ids for p in prompts]
    small = [g.token_ids for g in HFEngine(model, tokenizer, max_batch_size=2).generate(prompts, params)]
    assert batched == single == small


def test_logprobs_are_those_of_the_tempered_model(setup):
    model, engine, prompts = setup
    gens = engine.generate(prompts[:2], SamplingParams(max_new_tokens=8, temperature=0.7, seed=1))
    for p, g in zip(prompts, gens):
        seq = torch.tensor([p + g.token_ids])
        with torch.no_grad():
            logits = model(seq).logits[0, len(p) - 1 : -1].float() / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(g.token_ids)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(g.logprobs), expected, atol=1e-4)


def test_sampling_is_seeded(setup):
    _, engine, prompts = setup
    a = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=5))
    b = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=5))
    c = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=6))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def _model_favouring(tokenizer, token_id: int):
    """A tiny model whose every next-token distribution peaks at ``token_id``."""
    model = build_tiny("llama", tokenizer, seed=0)
    head = torch.nn.Linear(64, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
    return model


def test_stops_at_eos_and_respects_max_new_tokens(tokenizer):
    gens = HFEngine(_model_favouring(tokenizer, 2), tokenizer).generate([[5, 6, 7], [8]], SamplingParams(max_new_tokens=9, temperature=0))
    assert all(g.token_ids == [2] and g.finish_reason == "stop" for g in gens)
    gens = HFEngine(_model_favouring(tokenizer, 100), tokenizer).generate([[5, 6, 7], [8]], SamplingParams(max_new_tokens=9, temperature=0))
    assert all(g.token_ids == [100] * 9 and g.finish_reason == "length" for g in gens)


def test_top_p_keeps_the_smallest_nucleus():
    from onelayer.agents.engine import _top_p_filter

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = _top_p_filter(probs, 0.7)
    assert kept.tolist()[0] == pytest.approx([0.5, 0.3, 0.0, 0.0])


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampled_tokens_and_logprobs_are_the_inverse_cdf_draw_of_the_tempered_softmax(temperature, top_p):
    """sample_tokens (row chunks, in-place temporaries) against the plain expression over the whole block, bit for
    bit: 40 rows are two full chunks and a partial one."""
    from onelayer.agents.engine import SAMPLE_CHUNK_ROWS, _top_p_filter, sample_tokens

    assert 40 > 2 * SAMPLE_CHUNK_ROWS
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4096, generator=gen) * 4
    u = torch.rand(40, generator=gen, dtype=torch.float64)
    nxt, lp = sample_tokens(logits, SamplingParams(8, temperature, top_p, 0), u)
    if temperature <= 0:
        ref_lp = torch.log_softmax(logits, -1)
        ref = logits.argmax(-1)
    else:
        ref_lp = torch.log_softmax(logits / temperature, -1)
        cdf = _top_p_filter(ref_lp.exp(), top_p).double().cumsum(-1)
        ref = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(-1).clamp(max=4095)
    assert nxt.shape == (40,) and torch.equal(nxt, ref)
    assert torch.equal(lp, ref_lp.gather(-1, ref[:, None]).squeeze(-1))
