"""Fast rollout paths compute what the plain paths compute.

* HFEngine's group prefix sharing and lazy dropping of finished rows give the same
  greedy tokens and log-probs as the plain path and as ``model.generate``, and the
  same sampled tokens for the same seed.
* The inverse-CDF sampler draws from the tempered, top-p-truncated distribution.
* The rollout collector gives the same trajectories whether ALFWorld envs are
  stepped one by one in this process or by ``ALFWorldVecEnv`` workers.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny

from onelayer.agents.engine import HFEngine, SamplingParams, group_prompts, sample_tokens
from onelayer.agents.prompts import PromptBuilder


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


# ------------------------------------------------------------------ env pool
def test_collector_gives_the_same_trajectories_with_alfworld_workers(tokenizer, tmp_path):
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


def test_rollout_bench_times_the_in_place_cache_next_to_the_concatenating_one(tokenizer):
    from onelayer.benchmarks.rollout import measure

    model = build_tiny("qwen3", tokenizer, seed=3)
    result = measure(model, tokenizer, [2, 8], ["hf", "hf-dynamic"], max_new_tokens=6, repeats=1)
    rows = {(r["engine"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(e, b) for e in ("generate", "hf", "hf-dynamic") for b in (2, 8)}
    for b in (2, 8):  # same seeds, same numbers: the same tokens come out of both caches
        assert rows["hf", b]["tokens"] == rows["hf-dynamic", b]["tokens"] > 0
        assert rows["hf", b]["tokens_per_s"] > 0 and rows["generate", b]["speedup_vs_generate"] == 1.0
