"""Fast rollout paths compute what the plain paths compute.

* HFEngine's group prefix sharing and lazy dropping of finished rows give the same
  greedy tokens and log-probs as the plain path and as ``model.generate``, and the
  same sampled tokens for the same seed.
* The inverse-CDF sampler draws from the tempered, top-p-truncated distribution.
* The llama.cpp engine on an fp32 GGUF of a tiny model (exact attention, fp32 KV
  cache) gives the HF engine's greedy tokens with log-probs within 1e-4 nats; its
  default numerics (f16 flash attention and KV cache) stay within 0.02 nats;
  ``sync_weights`` makes it follow the trained weights. A KV cache moved between two
  contexts continues exactly; rows that stop early leave the live ones in consecutive
  sequences (one llama.cpp micro-batch) with the HF engine's tokens; the bf16 prefill
  of a small batch keeps it within the bf16 tolerance.
* The rollout collector gives the same trajectories whether ALFWorld envs are
  stepped one by one in this process or by ``ALFWorldVecEnv`` workers.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from onelayer.agents.engine import HFEngine, SamplingParams, group_prompts, sample_tokens
from onelayer.agents.prompts import PromptBuilder


@pytest.fixture(scope="module")
def grouped_prompts(tokenizer):
    """Three tasks of different prompt lengths, each repeated as a GRPO group, interleaved with a single prompt."""
    builder = PromptBuilder.for_domain(tokenizer, "math")
    tasks = [builder.encode(q) for q in ["What is 2 + 2?", "What is 13 + 29 + 4 - 7?", "Name a colour."]]
    return [p for p in tasks for _ in range(4)] + [builder.encode("x")]


def _plain(model, tokenizer, **kw):
    return HFEngine(model, tokenizer, share_prefix=False, compact_fraction=0.0, **kw)


def test_group_prompts_finds_each_distinct_prompt_once():
    uniq, owner = group_prompts([[1, 2], [3], [1, 2], [1, 2], [3], [4]])
    assert uniq == [[1, 2], [3], [4]]
    assert owner == [0, 1, 0, 0, 1, 2]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_prefix_sharing_gives_the_plain_paths_greedy_tokens_and_logprobs(arch, tokenizer, grouped_prompts):
    model = build_tiny(arch, tokenizer, seed=3)
    params = SamplingParams(max_new_tokens=12, temperature=0)
    fast = HFEngine(model, tokenizer).generate(grouped_prompts, params)
    plain = _plain(model, tokenizer).generate(grouped_prompts, params)
    for p, f, q in zip(grouped_prompts, fast, plain):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=2)[0, len(p):].tolist()
        assert f.token_ids == q.token_ids == ref
        assert f.finish_reason == q.finish_reason
        assert torch.allclose(torch.tensor(f.logprobs), torch.tensor(q.logprobs), atol=1e-5)


def test_fast_and_plain_paths_sample_the_same_tokens_for_the_same_seed(tokenizer, grouped_prompts):
    model = build_tiny("qwen3", tokenizer, seed=3)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=11)
    fast = HFEngine(model, tokenizer, max_batch_size=8).generate(grouped_prompts, params)
    plain = _plain(model, tokenizer, max_batch_size=8).generate(grouped_prompts, params)
    assert [g.token_ids for g in fast] == [g.token_ids for g in plain]
    assert len({tuple(g.token_ids) for g in fast[:4]}) > 1  # a group's samples differ from each other
    for f, q in zip(fast, plain):
        assert torch.allclose(torch.tensor(f.logprobs), torch.tensor(q.logprobs), atol=1e-5)


def test_finished_rows_stay_finished_while_the_cache_keeps_them(tokenizer, grouped_prompts):
    """With lazy compaction dead rows still run; their outputs must not grow past EOS."""
    model = build_tiny("llama", tokenizer, seed=0)
    lazy = HFEngine(model, tokenizer, compact_fraction=1.0)  # never compact before every row is done
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=2)
    a, b = lazy.generate(grouped_prompts, params), _plain(model, tokenizer).generate(grouped_prompts, params)
    assert [(g.token_ids, g.finish_reason) for g in a] == [(g.token_ids, g.finish_reason) for g in b]
    for g in a:
        assert (g.finish_reason == "stop") == (g.token_ids[-1] in lazy.eos_ids)
        assert all(t not in lazy.eos_ids for t in g.token_ids[:-1])


def test_inverse_cdf_sampler_follows_the_tempered_top_p_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -8.0]]).repeat(40000, 1)
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(40000, generator=gen, dtype=torch.float64)
    tokens, lp = sample_tokens(logits, SamplingParams(temperature=0.7, top_p=1.0), u)
    probs = torch.softmax(logits[0] / 0.7, -1)
    freq = torch.bincount(tokens, minlength=5).double() / 40000
    assert torch.allclose(freq, probs.double(), atol=0.01)
    assert torch.allclose(lp, torch.log(probs)[tokens], atol=1e-5)
    tokens, _ = sample_tokens(logits, SamplingParams(temperature=1.0, top_p=0.7), u)
    assert set(tokens.tolist()) == {0, 1}  # the smallest nucleus reaching 0.7: tokens 0 (0.64) and 1 (0.24)


def test_sampler_never_picks_a_zero_probability_token():
    logits = torch.full((1000, 50), -1e9)
    logits[:, 7] = 0.0
    tokens, _ = sample_tokens(logits, SamplingParams(temperature=1.0), torch.rand(1000, dtype=torch.float64))
    assert tokens.eq(7).all()


# ------------------------------------------------------------------ llama.cpp
llama_cpp = pytest.importorskip("llama_cpp")


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


# ------------------------------------------------------------------ env pool
def test_collector_gives_the_same_trajectories_with_alfworld_workers(tokenizer, tmp_path):
    pytest.importorskip("alfworld")
    from onelayer.agents.rollout import EpisodeSpec, collect
    from onelayer.envs.alfworld_env import ALFWorldEnv
    from onelayer.envs.alfworld_gen import generate_games
    from onelayer.envs.alfworld_vec import ALFWorldVecEnv

    games = tmp_path / "games"
    generate_games(games, 3, seed=1)
    engine = HFEngine(build_tiny("qwen3", tokenizer, seed=1), tokenizer)
    builder = PromptBuilder.for_domain(tokenizer, "agentic", history_length=1)
    specs = [EpisodeSpec(group=g, sample=k, seed=40 + g) for g in range(3) for k in range(2)]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=9)
    kw = {"data_path": str(games)}

    def run(envs):
        trajs = collect(engine, builder, envs, specs, params, max_turns=3, parse_actions=True, invalid_action_penalty=0.1)
        return [(t.task_id, t.truncation_reason, t.success, [(s.prompt_ids, s.response_ids, s.action, s.reward, s.anchor)
                                                            for s in t.steps]) for t in trajs]

    serial = run([ALFWorldEnv(**kw) for _ in specs])
    with ALFWorldVecEnv(num_envs=len(specs), num_workers=2, env_kwargs=kw) as vec:
        pooled = run(vec)
    assert pooled == serial
    assert all(len(t[3]) == 3 for t in serial)
