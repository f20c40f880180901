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


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_the_in_place_kv_cache_gives_the_same_tokens_logprobs_and_captured_states(arch, tokenizer, monkeypatch):
    # 70 new tokens: the buffers grow twice (KV_GROWTH 32); shared prompts, rows finishing early and compaction
    import onelayer.agents.engine as engine_mod

    model = build_tiny(arch, tokenizer, seed=5)
    builder = PromptBuilder.for_domain(tokenizer, "math")
    prompts = [builder.encode(q) for q in ["What is 2 + 2?", "x", "Name a colour, any colour."]] * 3
    made = []
    real = engine_mod.roomy_cache
    monkeypatch.setattr(engine_mod, "roomy_cache", lambda n: made.append(n) or real(n))
    out = {}
    for roomy in (True, False):
        engine = HFEngine(model, tokenizer, max_batch_size=8, compact_fraction=0.1, roomy_cache=roomy)
        engine.capture_block = 2
        for temp in (0.0, 1.0):
            gens = engine.generate(prompts, SamplingParams(max_new_tokens=70, temperature=temp, seed=4))
            out[roomy, temp] = [(g.token_ids, g.logprobs, g.finish_reason, g.hidden) for g in gens]
    assert made and len(made) == 4  # 2 micro-batches x 2 temperatures used the in-place cache; the rest did not
    for temp in (0.0, 1.0):
        for a, b in zip(out[True, temp], out[False, temp]):
            assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
            assert torch.equal(a[3], b[3])
    assert max(len(t[0]) for t in out[True, 1.0]) > 64 or max(len(t[0]) for t in out[True, 0.0]) > 64


def test_the_in_place_kv_layer_grows_selects_rows_and_survives_outside_edits():
    from onelayer.agents.engine import KV_GROWTH, roomy_cache

    cache = roomy_cache(100)
    k = torch.randn(3, 2, 5, 4)
    v = torch.randn(3, 2, 5, 4)
    keys, vals = cache.update(k, v, 0)
    assert torch.equal(keys, k) and torch.equal(vals, v)
    layer = cache.layers[0]
    assert layer._kbuf.shape[2] == 5 + KV_GROWTH and cache.get_seq_length() == 5
    steps = [torch.randn(3, 2, 1, 4) for _ in range(KV_GROWTH + 3)]
    for s in steps:
        keys, _ = cache.update(s, s, 0)
    want = torch.cat([k, *steps], dim=2)
    assert torch.equal(keys, want) and cache.get_seq_length() == want.shape[2]
    cache.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(cache.layers[0].keys, want[[2, 0]])
    nxt = torch.randn(2, 2, 1, 4)
    keys, _ = cache.update(nxt, nxt, 0)
    assert torch.equal(keys, torch.cat([want[[2, 0]], nxt], dim=2))
    layer.keys, layer.values = layer.keys[..., :3, :], layer.values[..., :3, :]  # a crop from outside
    keys, _ = cache.update(nxt, nxt, 0)
    assert torch.equal(keys, torch.cat([want[[2, 0], :, :3], nxt], dim=2))
    big = roomy_cache(6)
    big.update(k, v, 0)
    assert big.layers[0]._kbuf.shape[2] == 6  # room capped at max_length
    keys, _ = big.update(torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), 0)
    assert keys.shape[2] == 9  # past the cap: it still grows
