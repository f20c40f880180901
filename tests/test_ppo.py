"""ppo_update is a plain function: a model's log-prob function, rows, a config and an optimizer in, metrics out."""

import pytest
import torch
from tiny_models import build_tiny

from onelayer.agents.models import find_decoder_blocks
from onelayer.training.config import TrainConfig
from onelayer.training.engine_logprobs import EngineLogprobs
from onelayer.training.logprobs import LowerStack
from onelayer.training.ppo import ppo_update
from onelayer.training.rows import Row, RowLogprobs


def _setup(tokenizer, lower: bool, sgd: bool = False):
    """A tiny model whose block 2 alone trains, its optimizer, and the log-prob function over rows."""
    model = build_tiny("qwen3", tokenizer)
    for n, p in model.named_parameters():
        p.requires_grad_(".layers.2." in n)
    params = [p for p in model.parameters() if p.requires_grad]
    stack = LowerStack(model, find_decoder_blocks(model)[1], 2) if lower else None
    logprobs = RowLogprobs(model, tokenizer.eos_token_id, scoring=False, temperature=1.0, chunk_size=4, lower=stack)
    # SGD where updates are compared: Adam's first step is lr * sign(g), which turns reduction-order noise
    # in a near-zero gradient entry into a full step.
    opt = torch.optim.SGD(params, lr=0.1) if sgd else torch.optim.AdamW(params, lr=1e-3)
    return model, params, opt, logprobs


def _rows(tokenizer):
    prompt = tokenizer.encode("What is 2 + 2?")
    good, bad = tokenizer.encode(" 4"), tokenizer.encode(" five hundred")
    return [Row(prompt, good, 1.0), Row(prompt, bad, -1.0), Row(prompt + [11], bad, 0.0)]


def _sequence_logprobs(logprobs, rows):
    with torch.no_grad():
        logprobs.start(rows)
        b = logprobs.batch(list(range(len(rows))))
        lp, _ = logprobs(b)
        return (lp * b.resp).sum(-1)


def test_an_update_raises_the_positive_rows_logprob_and_lowers_the_negative_ones(tokenizer):
    model, params, opt, logprobs = _setup(tokenizer, lower=False)
    rows = _rows(tokenizer)
    before = _sequence_logprobs(logprobs, rows)
    config = TrainConfig(num_tasks=1, num_generations=3, micro_batch_size=2, kl_metric=False)
    stats = ppo_update(logprobs, rows, config, opt, params, engine=EngineLogprobs(0.02, scoring=False))
    after = _sequence_logprobs(logprobs, rows)
    assert stats["optimizer_steps"] == 1 and stats["update_norm"] > 0 and stats["grad_norm"] > 0
    assert after[0] > before[0] and after[1] < before[1]
    assert stats["kl"] == 0.0 and stats["logprob_mismatch_tokens"] == 0  # no reference, no engine values


def test_micro_batching_and_the_cached_lower_blocks_leave_the_update_unchanged(tokenizer):
    weights, metrics = [], []
    for micro, lower in ((3, False), (1, False), (1, True)):
        model, params, opt, logprobs = _setup(tokenizer, lower, sgd=True)
        config = TrainConfig(num_tasks=1, num_generations=3, micro_batch_size=micro, num_iterations=2, beta=0.1)
        stats = ppo_update(logprobs, _rows(tokenizer), config, opt, params, engine=EngineLogprobs(0.02, scoring=False),
                           ref_values=[p.detach().clone() for p in params])
        weights.append([p.detach().clone() for p in params])
        metrics.append(stats)
    assert metrics[0]["optimizer_steps"] == 2 and metrics[0]["kl"] > 0  # the second epoch has moved off the reference
    for w, m in zip(weights[1:], metrics[1:]):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(weights[0], w))
        for k in ("loss", "kl", "entropy", "grad_norm", "update_norm", "clip_fraction"):
            assert m[k] == pytest.approx(metrics[0][k], rel=1e-4, abs=1e-7), k


def test_a_batch_without_signal_takes_no_step_but_still_reports_entropy(tokenizer):
    model, params, opt, logprobs = _setup(tokenizer, lower=False)
    rows = [Row(r.prompt_ids, r.response_ids, 0.0) for r in _rows(tokenizer)]
    before = [p.detach().clone() for p in params]
    stats = ppo_update(logprobs, rows, TrainConfig(num_tasks=1, num_generations=3), opt, params,
                       engine=EngineLogprobs(0.02, scoring=False))
    assert stats["optimizer_steps"] == 0 and stats["entropy"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_the_engines_logprobs_stand_in_for_the_old_ones_only_within_tolerance(capsys):
    rows = [Row([5, 6], [7, 8], 1.0, engine_logprobs=[-1.0, -2.0]), Row([5], [9], -1.0, engine_logprobs=[-0.5])]
    trainer_lp = torch.tensor([[0.0, 0.0, -1.001, -2.0], [0.0, -0.5, 0.0, 0.0]])
    engine = EngineLogprobs(0.02, scoring=False)
    engine.note(rows, [0, 1], trainer_lp)
    stats = {}
    old = engine.old_logprobs(rows, list(trainer_lp), stats)
    assert stats["engine_logprobs_used"] == 1.0
    assert old[0].tolist() == [0.0, 0.0, -1.0, -2.0] and old[1].tolist() == [0.0, -0.5, 0.0, 0.0]
    assert engine.mismatch().tokens == 3 and engine.mismatch().max == pytest.approx(0.001, abs=1e-6)

    engine.start()
    engine.note(rows, [0, 1], trainer_lp - 1.0)  # an engine one nat off
    old = engine.old_logprobs(rows, list(trainer_lp - 1.0), stats)
    assert stats["engine_logprobs_used"] == 0.0 and torch.equal(old[0], trainer_lp[0] - 1.0)
    engine.old_logprobs(rows, list(trainer_lp - 1.0), stats)
    assert capsys.readouterr().err.count("use_engine_logprobs") == 1  # warned once per run
