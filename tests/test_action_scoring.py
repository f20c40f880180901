"""The ``score`` action format: a softmax over the model's likelihood of each admissible action, trained with PPO."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny_models import ARCHS, build_tiny

from onelayer.agents.engine import HFEngine, SamplingParams
from onelayer.agents.prompts import PromptBuilder
from onelayer.agents.rollout import EpisodeSpec, collect
from onelayer.agents.scoring import action_log_probs, candidate_token_logprobs, choose_actions
from onelayer.errors import UserError
from onelayer.training.config import TrainConfig
from onelayer.training.trainer import Trainer


def _separate_logprobs(model, prompt, cand):
    """Log-probs of ``cand``'s tokens from a plain forward over ``prompt + cand``."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + cand]), use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[len(prompt) - 1 + j, t] for j, t in enumerate(cand)])


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_candidates_score_as_separate_forwards_would(arch, tokenizer):
    model = build_tiny(arch, tokenizer)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22]]  # different lengths: the shorter row is padded
    cands = [[[30, 31], [32, 33, 34, 35], [36]], [[40], [41, 42, 43]]]
    with torch.no_grad():
        packed = candidate_token_logprobs(model, prompts, cands, pad_id=2)
    for p, row, got in zip(prompts, cands, packed):
        assert len(got) == len(row)
        for c, lp in zip(row, got):
            torch.testing.assert_close(lp, _separate_logprobs(model, p, c), atol=2e-5, rtol=0)


def test_action_log_probs_are_a_softmax_over_mean_or_summed_token_scores(tokenizer):
    model = build_tiny("llama", tokenizer)
    prompt, cands = [5, 6, 7], [[30], [31, 32, 33, 34], [35, 36]]
    with torch.no_grad():
        tok = candidate_token_logprobs(model, [prompt], [cands], pad_id=2)[0]
        for norm, score in (("mean", [t.mean() for t in tok]), ("sum", [t.sum() for t in tok])):
            for temp in (1.0, 2.0):
                lp = action_log_probs(model, [prompt], [cands], pad_id=2, norm=norm, temperature=temp)[0]
                torch.testing.assert_close(lp, torch.log_softmax(torch.stack(score) / temp, -1))
                assert abs(float(torch.logsumexp(lp, 0))) < 1e-6
    with pytest.raises(ValueError, match="unknown score norm"):
        action_log_probs(model, [prompt], [cands], pad_id=2, norm="max")
    with pytest.raises(ValueError, match="at least one candidate"):
        action_log_probs(model, [prompt], [[]], pad_id=2)


def test_choose_actions_takes_the_argmax_greedy_and_draws_in_proportion_when_sampling():
    lp = [math.log(p) for p in (0.2, 0.7, 0.1)]
    assert choose_actions([lp, lp[::-1]], 0.0, seed=0) == [1, 1]
    assert choose_actions([lp] * 50, 1.0, seed=3) == choose_actions([lp] * 50, 1.0, seed=3)
    draws = np.array(choose_actions([lp] * 4000, 1.0, seed=1))
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.2, 0.7, 0.1], atol=0.03)


class CountingScorer:
    """The real HF engine, counting its score_actions calls and their batch sizes."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.pad_id = engine.pad_id

    def score_actions(self, prompts, candidates, **kw):
        self.calls.append(len(prompts))
        return self.engine.score_actions(prompts, candidates, **kw)


def test_score_collector_scores_every_episode_in_one_call_per_turn_and_only_takes_admissible_actions(tokenizer):
    model = build_tiny("qwen3", tokenizer)
    engine = CountingScorer(HFEngine(model, tokenizer))
    builder = PromptBuilder.for_domain(tokenizer, "agentic", action_format="score")
    b, g, turns = 2, 3, 4
    envs = [gym.make("onelayer/GuessNumber-v0") for _ in range(b * g)]
    specs = [EpisodeSpec(group=i, sample=k, seed=50 + i) for i in range(b) for k in range(g)]
    trajs = collect(engine, builder, envs, specs, SamplingParams(3, 1.0, 1.0, 0), max_turns=turns, parse_actions=True)
    assert engine.calls[0] == b * g and len(engine.calls) <= turns
    steps = [s for t in trajs for s in t.steps]
    assert sum(engine.calls) == len(steps)
    assert not any(s.invalid_action for s in steps)
    assert len({s.action for s in steps}) > 1  # sampled, not one fixed answer
    for s in steps[:6]:
        admissible = [str(i) for i in range(1, 9)]
        assert s.action == admissible[s.choice] and s.response_ids == s.candidates[s.choice]
        assert tokenizer.decode(s.prompt_ids).endswith("<action>")
        with torch.no_grad():
            lp = action_log_probs(model, [s.prompt_ids], [s.candidates], pad_id=engine.pad_id)[0]
        assert s.logprobs == pytest.approx([float(lp[s.choice])], abs=1e-5)
    greedy = collect(engine, builder, envs[:1], specs[:1], SamplingParams(3, 0.0, 1.0, 0), max_turns=1,
                     parse_actions=True)[0].steps[0]
    with torch.no_grad():
        lp = action_log_probs(model, [greedy.prompt_ids], [greedy.candidates], pad_id=engine.pad_id)[0]
    assert greedy.choice == int(torch.argmax(lp))


class GenerateOnly:
    """An engine that can only generate (as vLLM or llama.cpp here)."""

    def __init__(self, model=None, tokenizer=None, **options):
        self.pad_id = 0

    def generate(self, prompts, params):
        raise AssertionError("not called")

    def sync_weights(self, named_tensors):
        pass


def test_score_format_needs_a_scoring_engine_and_an_agentic_env(tokenizer):
    builder = PromptBuilder.for_domain(tokenizer, "agentic", action_format="score")
    with pytest.raises(UserError, match="action_format score needs an engine that scores"):
        collect(GenerateOnly(), builder, [gym.make("onelayer/GuessNumber-v0")], [EpisodeSpec(0, 0, seed=1)],
                SamplingParams(3, 1.0, 1.0, 0), max_turns=1, parse_actions=True)
    with pytest.raises(UserError, match="action_format score needs an env where the model acts"):
        TrainConfig(env="onelayer/Math-v0", action_format="score").validate()
    assert builder.parse(" 3</action> trailing", ["1", "3"]).action == "3"
    assert not builder.parse("nine", ["1", "3"]).valid


def _trainer(tokenizer, tiny_model_dirs, tmp_path, **kw):
    cfg = dict(model=str(tiny_model_dirs["qwen3"]), env="onelayer/GuessNumber-v0", action_format="score",
               layers="1", algo="gigpo", steps=2, num_tasks=2, num_generations=3, max_turns=3, eval_size=2,
               eval_every=0, lr=1e-2, out=str(tmp_path / "run"), kl_metric=False)
    return Trainer(TrainConfig(**{**cfg, **kw}))


def test_a_positive_advantage_raises_the_chosen_actions_normalised_probability(tokenizer, tiny_model_dirs, tmp_path):
    trainer = _trainer(tokenizer, tiny_model_dirs, tmp_path)
    trajs = trainer.sample(0)
    step = trajs[0].steps[0]
    adv = [np.zeros(t.length) for t in trajs]
    adv[0][0] = 1.0  # only this step carries a signal

    def log_pi():
        with torch.no_grad():
            return action_log_probs(trainer.model, [step.prompt_ids], [step.candidates], trainer.engine.pad_id)[0]

    before = log_pi()
    assert float(before[step.choice]) == pytest.approx(step.logprobs[0], abs=1e-5)  # rollout = trainer's pi
    block = [n for n, _ in trainer.model.named_parameters() if ".layers.1." in n][0]
    other = [n for n, _ in trainer.model.named_parameters() if ".layers.2." in n][0]
    params = dict(trainer.model.named_parameters())
    saved = {n: params[n].detach().clone() for n in (block, other)}
    stats = trainer.update(trajs, adv)
    after = log_pi()
    assert float(after[step.choice]) > float(before[step.choice])
    assert abs(float(torch.logsumexp(after, 0))) < 1e-5
    assert stats["optimizer_steps"] == 1 and stats["entropy"] > 0
    assert stats["logprob_mismatch_tokens"] > 0 and stats["logprob_mismatch_max"] < 1e-4
    assert not torch.equal(params[block], saved[block]) and torch.equal(params[other], saved[other])


def test_score_format_trains_resumes_and_evaluates_greedy(tokenizer, tiny_model_dirs, tmp_path):
    res = _trainer(tokenizer, tiny_model_dirs, tmp_path, eval_every=2).train(progress=False)
    last = res.metrics[-1]
    assert last["step"] == 2 and last["invalid_action_rate"] == 0 and "eval/success_rate" in last
    assert 0 < last["entropy"] <= math.log(8) + 1e-6  # the entropy over 8 admissible actions
    from onelayer.agents.engine import register_engine

    register_engine("generate-only", "test_action_scoring:GenerateOnly")
    with pytest.raises(UserError, match="action_format score needs an engine that scores"):
        _trainer(tokenizer, tiny_model_dirs, tmp_path / "b", engine="generate-only")
