"""The sampler's captured lower-block states equal a fresh forward's, so the update can skip the frozen blocks."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHS, build_tiny

from onelayer.agents.engine import HFEngine, SamplingParams
from onelayer.agents.models import find_decoder_blocks
from onelayer.training.logprobs import LowerStack


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


def _gradients(trainer, trajs, adv) -> dict[str, torch.Tensor]:
    """d(-sum adv * log pi) over the batch for the trained tensors, through the trainer's own log-prob path."""
    from onelayer.training.rows import RowLogprobs, rows_from

    rows = rows_from(trajs, adv)
    lp = RowLogprobs(trainer.model, trainer.engine.pad_id, scoring=False, temperature=trainer.config.temperature,
                     chunk_size=trainer.config.logprob_chunk_size, lower=trainer.lower)
    lp.start(rows)
    b = lp.batch(list(range(len(rows))))
    assert not lp.needs_capture(b.idx) or trainer.lower is None  # every row replays the sampler's states
    logp, _ = lp(b)
    trainer.model.zero_grad(set_to_none=True)
    (-(logp * b.adv * b.resp).sum()).backward()
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers", ["0", "2", "3", "2.mlp", "all"])
def test_the_sampler_states_path_gives_the_plain_paths_gradients(arch, layers, tiny_model_dirs, tmp_path):
    """The update on the sampler's captured states = the update running every block (tiny Qwen3/Qwen2/Llama)."""
    from onelayer.training.config import TrainConfig
    from onelayer.training.trainer import Trainer

    def trainer(reuse: bool, out: str):
        cfg = TrainConfig(model=str(tiny_model_dirs[arch]), out=str(tmp_path / out), steps=1, num_tasks=2,
                          num_generations=4, max_new_tokens=6, eval_every=0, lr=1e-3, seed=0, layers=layers,
                          reward_funcs=["support_rewards:length_reward"], reuse_lower_hidden=reuse)
        return Trainer(cfg)

    cached, plain = trainer(True, "cached"), trainer(False, "plain")
    assert (cached.lower is not None) == (layers in ("2", "3", "2.mlp")) and plain.lower is None
    got, want = cached.sample(1), plain.sample(1)
    assert [s.response_ids for t in got for s in t.steps] == [s.response_ids for t in want for s in t.steps]
    steps = [s for t in got for s in t.steps]
    assert all((s.lower_hidden is not None) == (cached.lower is not None) for s in steps)
    adv_got, adv_want = cached.advantages(got)[0], plain.advantages(want)[0]
    g_cached, g_plain = _gradients(cached, got, adv_got), _gradients(plain, want, adv_want)
    assert g_cached.keys() == g_plain.keys() and g_cached
    for n in g_plain:
        scale = float(g_plain[n].abs().max())
        assert scale > 0, n
        torch.testing.assert_close(g_cached[n], g_plain[n], rtol=0, atol=1e-4 * scale, msg=n)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers", ["1", "3", "2.mlp"])
def test_score_format_rows_replay_the_samplers_states_with_the_plain_paths_gradients(arch, layers, tiny_model_dirs,
                                                                                      tmp_path):
    """Score format: the engine keeps the states entering the lowest trained block over each packed scoring row
    (prompt and every candidate) while it samples; the update replays them with the plain path's gradients."""
    from onelayer.training.config import TrainConfig
    from onelayer.training.rows import RowLogprobs, rows_from
    from onelayer.training.trainer import Trainer

    def trainer(reuse: bool, out: str):
        return Trainer(TrainConfig(model=str(tiny_model_dirs[arch]), env="onelayer/GuessNumber-v0",
                                   action_format="score", layers=layers, algo="gigpo", steps=1, num_tasks=2,
                                   num_generations=3, max_turns=3, eval_size=0, lr=1e-2, out=str(tmp_path / out),
                                   kl_metric=False, reuse_lower_hidden=reuse))

    cached, plain = trainer(True, "cached"), trainer(False, "plain")
    got, want = cached.sample(1), plain.sample(1)
    steps = [s for t in got for s in t.steps]
    assert [s.choice for s in steps] == [s.choice for t in want for s in t.steps]  # capture changes nothing sampled
    assert all(s.lower_hidden is not None for s in steps)
    assert all(s.lower_hidden is None for t in want for s in t.steps)
    for s in steps:
        assert s.lower_hidden.shape[0] == len(s.prompt_ids) + sum(len(c) for c in s.candidates)

    def grads(tr, trajs):
        rows = rows_from(trajs, tr.advantages(trajs)[0])
        lp = RowLogprobs(tr.model, tr.engine.pad_id, scoring=True, temperature=1.0, chunk_size=5, lower=tr.lower)
        lp.start(rows)
        assert all(i in lp._row_hidden for i in range(len(rows))) == (tr.lower is not None)
        b = lp.batch(list(range(len(rows))))
        logp, _ = lp(b)
        tr.model.zero_grad(set_to_none=True)
        (-(logp * b.adv * b.resp).sum()).backward()
        return logp.detach(), {n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}

    lp_c, g_c = grads(cached, got)
    lp_p, g_p = grads(plain, want)
    torch.testing.assert_close(lp_c, lp_p, rtol=0, atol=1e-5)
    assert g_c.keys() == g_p.keys() and g_p
    for n in g_p:
        scale = float(g_p[n].abs().max())
        assert scale > 0, n
        torch.testing.assert_close(g_c[n], g_p[n], rtol=0, atol=1e-4 * scale, msg=n)
