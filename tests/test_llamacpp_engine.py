"""The llama.cpp rollout engine computes what the HF engine computes.

llama-cpp-python is a declared dependency, so a missing one fails these tests
rather than skipping them.

* On an fp32 GGUF of a tiny model (exact attention, fp32 KV cache) it gives the HF
  engine's greedy tokens with log-probs within 1e-4 nats; its default numerics (f16
  flash attention and KV cache) stay within 0.02 nats; ``sync_weights`` makes it
  follow the trained weights.
* A KV cache moved between two contexts continues exactly; rows that stop early
  leave the live ones in consecutive sequences (one llama.cpp micro-batch) with the
  HF engine's tokens; the bf16 prefill of a small batch keeps it within the bf16
  tolerance.
"""

from __future__ import annotations

import llama_cpp
import pytest
import torch
from tiny_models import build_tiny

from onelayer.agents.engine import HFEngine, SamplingParams


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    model = build_tiny("llama", tokenizer, seed=3)
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("model.layers.2."))  # "train" block 2
    return model


def _max_lp_diff(a, b):
    return max(abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs))


def _prefix_lp_diff(a, b):
    """Largest log-prob difference over each pair's common prefix of tokens (up to and including the first token)."""
    diffs = []
    for ga, gb in zip(a, b):
        for k, (ta, tb) in enumerate(zip(ga.token_ids, gb.token_ids)):
            if ta != tb:
                break
            diffs.append(abs(ga.logprobs[k] - gb.logprobs[k]))
    return max(diffs)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_llamacpp_exact_numerics_match_the_hf_engine(arch, tokenizer, grouped_prompts):
    from onelayer.agents.llamacpp_engine import LlamaCppEngine

    model = build_tiny(arch, tokenizer, seed=3)
    lc = LlamaCppEngine(model, tokenizer, kv_type="f32", flash_attn=False, weights="source")
    hf = HFEngine(model, tokenizer)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    a, b = hf.generate(grouped_prompts, greedy), lc.generate(grouped_prompts, greedy)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert _max_lp_diff(a, b) < 1e-4
    sampled = SamplingParams(max_new_tokens=10, temperature=1.0, seed=5)
    assert [g.token_ids for g in hf.generate(grouped_prompts, sampled)] == [g.token_ids for g in lc.generate(grouped_prompts, sampled)]
    lc.close()


def test_llamacpp_prefix_sharing_changes_nothing(tiny_llama, tokenizer, grouped_prompts):
    from onelayer.agents.llamacpp_engine import LlamaCppEngine

    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    shared = LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, weights="source")
    plain = LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, weights="source", share_prefix=False)
    a, b = shared.generate(grouped_prompts, params), plain.generate(grouped_prompts, params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert _max_lp_diff(a, b) < 1e-5
    small = LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, weights="source", max_batch_size=3)
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    assert [g.token_ids for g in small.generate(grouped_prompts, greedy)] == [g.token_ids for g in shared.generate(grouped_prompts, greedy)]
    for e in (shared, plain, small):
        e.close()


def test_llamacpp_default_numerics_stay_within_tolerance(tiny_llama, tokenizer, grouped_prompts):
    from onelayer.agents.llamacpp_engine import LlamaCppEngine

    lc = LlamaCppEngine(tiny_llama, tokenizer, weights="source")  # f16 KV cache, llama.cpp's flash attention choice
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    hf = HFEngine(tiny_llama, tokenizer).generate(grouped_prompts, greedy)
    assert _max_lp_diff(hf, lc.generate(grouped_prompts, greedy)) < 0.02
    lc.close()


def test_llamacpp_bf16_copy_serves_large_batches_within_tolerance(tiny_llama, tokenizer, grouped_prompts):
    """weights=auto routes a micro-batch of >= bf16_from_batch sequences to the bf16 copy, smaller ones to the exact copy."""
    from onelayer.agents.llamacpp_engine import LlamaCppEngine

    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    auto = LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, bf16_from_batch=len(grouped_prompts),
                          bf16_prefill=False)
    bf16 = LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, weights="bf16")
    exact = LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, weights="source")
    big, small = auto.generate(grouped_prompts, greedy), auto.generate(grouped_prompts[:-1], greedy)
    assert _max_lp_diff(big, bf16.generate(grouped_prompts, greedy)) < 1e-6
    assert _max_lp_diff(small, exact.generate(grouped_prompts[:-1], greedy)) < 1e-6
    hf = HFEngine(tiny_llama, tokenizer).generate(grouped_prompts, greedy)
    assert _prefix_lp_diff(hf, big) < 0.05  # rounding the weights to bf16 may flip a near-tie, nothing more
    # bf16 prefill (the default): a small batch's prompts go through the bf16 copy, its tokens through the exact one.
    auto.bf16_prefill = True
    mixed = auto.generate(grouped_prompts[:-1], greedy)
    first_bf16 = bf16.generate(grouped_prompts[:-1], SamplingParams(max_new_tokens=1, temperature=0))
    assert max(abs(m.logprobs[0] - b.logprobs[0]) for m, b in zip(mixed, first_bf16)) < 1e-6  # the bf16 prefill's logits
    assert _max_lp_diff(mixed, small) > 0  # the exact copy's prefill was not used
    assert _prefix_lp_diff(hf, mixed) < 0.05
    for e in (auto, bf16, exact):
        e.close()


def test_llamacpp_moves_a_prefilled_sequence_between_contexts_exactly(tiny_llama, tokenizer, grouped_prompts):
    """The KV cache of a prompt prefilled in one context, moved to another sequence of another context, continues
    exactly as a prefill in that context does."""
    from onelayer.agents.llamacpp_engine import LlamaCppEngine

    a, b = (LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, weights="source") for _ in range(2))
    prompt, nxt = grouped_prompts[4], 11
    ca, cb = a._context(a._variants["source"], 4, 256), b._context(b._variants["source"], 4, 256)
    batch = llama_cpp.llama_batch_init(a._cap, 0, 1)
    try:
        a._decode(ca, batch, [(t, j, 0, False) for j, t in enumerate(prompt)])
        a._move_sequences(ca, cb, [(0, 2)])
        b._decode(cb, batch, [(nxt, len(prompt), 2, True)])
        moved = b._logits(cb, 1).clone()
        b._decode(cb, batch, [(t, j, 3, False) for j, t in enumerate(prompt)])
        b._decode(cb, batch, [(nxt, len(prompt), 3, True)])
        assert torch.equal(moved, b._logits(cb, 1))
    finally:
        llama_cpp.llama_batch_free(batch)
    a.close()
    b.close()


def test_llamacpp_keeps_live_rows_in_consecutive_sequences_as_rows_finish(tiny_llama, tokenizer, grouped_prompts):
    """Rows that stop early free their sequences and the live ones move down, so every decode step sends sequences
    0..k-1 (one llama.cpp micro-batch); the tokens stay the HF engine's, row by row."""
    from onelayer.agents.llamacpp_engine import LlamaCppEngine

    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=4)
    hf = HFEngine(tiny_llama, tokenizer)
    common = torch.tensor([t for g in hf.generate(grouped_prompts, params) for t in g.token_ids]).bincount().topk(12).indices
    lc = LlamaCppEngine(tiny_llama, tokenizer, kv_type="f32", flash_attn=False, weights="source")
    hf.eos_ids = lc.eos_ids = sorted({*hf.eos_ids, *common.tolist()})  # frequent tokens end rows at different steps
    steps = []
    decode = lc._decode
    lc._decode = lambda ctx, batch, toks: (steps.append([e[2] for e in toks]), decode(ctx, batch, toks))
    a, b = hf.generate(grouped_prompts, params), lc.generate(grouped_prompts, params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.finish_reason for g in a] == [g.finish_reason for g in b]
    assert _max_lp_diff(a, b) < 1e-4
    lengths = {len(g.token_ids) for g in b}
    assert len(lengths) >= 4 and "stop" in {g.finish_reason for g in b}  # rows did finish at different steps
    decodes = steps[1:]  # after the one prefill call
    assert all(s == list(range(len(s))) for s in decodes) and min(map(len, decodes)) < len(grouped_prompts)
    lc.close()


def test_llamacpp_sync_weights_follows_the_trained_layer(tiny_llama, tokenizer, grouped_prompts):
    from onelayer.agents.llamacpp_engine import LlamaCppEngine
    from onelayer.agents.weight_sync import trained_tensors

    model = build_tiny("llama", tokenizer, seed=3)
    model.load_state_dict(tiny_llama.state_dict())
    names = [n for n, p in tiny_llama.named_parameters() if p.requires_grad]
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    lc = LlamaCppEngine(model, tokenizer, kv_type="f32", flash_attn=False, weights="source")
    hf = HFEngine(model, tokenizer)
    both = LlamaCppEngine(model, tokenizer, kv_type="f32", flash_attn=False, bf16_from_batch=1)  # both copies, bf16 used
    assert set(names) <= set(lc.fp32)  # trained tensors are fp32 (here all are: the tiny model is not in the source GGUF)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    before = lc.generate(grouped_prompts, greedy)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    stale = lc.generate(grouped_prompts, greedy)
    assert _max_lp_diff(stale, before) < 1e-6  # nothing changes before the sync
    stats = lc.sync_weights(trained_tensors(model, names))
    assert stats.tensors == len(names) and stats.bytes == 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert not stats.reloaded
    a, b = hf.generate(grouped_prompts, greedy), lc.generate(grouped_prompts, greedy)
    assert [g.token_ids for g in a] == [g.token_ids for g in b] != [g.token_ids for g in before]
    assert _max_lp_diff(a, b) < 1e-4
    assert not both.sync_weights(trained_tensors(model, names)).reloaded  # trained tensors are fp32 in the bf16 copy too
    c = both.generate(grouped_prompts, greedy)
    assert _prefix_lp_diff(a, c) < 0.05  # bf16 weights: close to the HF model until a near-tie flips a token
    # A tensor without an in-place fp32 copy makes the engine rewrite its file and reload, then follow it too.
    name = "model.layers.0.mlp.up_proj.weight"
    del lc._variants["source"].views[name]
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(3.0)
    stats = lc.sync_weights([(name, model.model.layers[0].mlp.up_proj.weight)])
    assert stats.reloaded and name in lc._variants["source"].views
    a, b = hf.generate(grouped_prompts, greedy), lc.generate(grouped_prompts, greedy)
    assert [g.token_ids for g in a] == [g.token_ids for g in b] and _max_lp_diff(a, b) < 1e-4
    lc.close()
    both.close()


def test_llamacpp_engine_is_registered_and_reports_bad_names(tiny_llama, tokenizer):
    from onelayer.agents.engine import make_engine
    from onelayer.errors import UserError

    lc = make_engine("llamacpp", tiny_llama, tokenizer, max_batch_size=4)
    assert lc.pad_id == HFEngine(tiny_llama, tokenizer).pad_id
    with pytest.raises(UserError, match="cannot place tensor"):
        lc.sync_weights([("model.layers.0.adapter.weight", torch.zeros(2, 2))])
    lc.close()


def test_extra_buffer_types_are_off_on_a_cpu_with_amx():
    from onelayer.agents.llamacpp_engine import use_extra_buffers

    assert use_extra_buffers("CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | LLAMAFILE = 1 | REPACK = 1 |")
    assert not use_extra_buffers("CPU : AVX512 = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | REPACK = 1 |")


@pytest.mark.slow  # the default model's GGUF copies (~1 min on 2 cores)
def test_the_default_model_decodes_batches_on_both_copies():
    # On an AMX Xeon llama.cpp's AMX buffers crashed the process at batch 8 on the 4-bit copy: the engine must decode
    # every batch size the trainer sends on this machine, with the HF engine's log-probs within the 4-bit tolerance.
    from onelayer.agents.llamacpp_engine import LlamaCppEngine
    from onelayer.agents.models import load_model
    from onelayer.benchmarks.rollout import bench_prompts, logprob_mismatch

    model, tok, _ = load_model("smollm2-135m", "cpu")
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("model.layers.15."))
    engine = LlamaCppEngine(model, tok, max_batch_size=64)
    try:
        for batch in (1, 8, 16):  # 1 and 8 on the 4-bit copy, 16 on the bf16 one
            prompts = bench_prompts(tok, batch)
            gens = engine.generate(prompts, SamplingParams(24, 1.0, 1.0, batch))
            assert len(gens) == batch and all(g.token_ids for g in gens)
            with torch.no_grad():
                m = logprob_mismatch(model, prompts, gens)
            assert m["mean_abs"] < 0.05 and m["max_abs"] < 0.5, (batch, m)
    finally:
        engine.close()
