"""Packing a group's responses after one copy of their prompt (``share_prompts``) gives the unpacked path's
log-probs and gradients: a response attends to exactly the tokens it would in its own row."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import ARCHS


def _trainer(tiny_model_dirs, tmp_path, arch: str, layers: str, out: str, **kw):
    from onelayer.training.config import TrainConfig
    from onelayer.training.trainer import Trainer

    cfg = TrainConfig(model=str(tiny_model_dirs[arch]), out=str(tmp_path / out), steps=1, num_tasks=2,
                      num_generations=4, max_new_tokens=6, eval_every=0, lr=1e-3, seed=0, layers=layers,
                      reward_funcs=["support_rewards:length_reward"], **kw)
    return Trainer(cfg)


def _logprobs_and_grads(trainer, rows, share: bool, micro: int | None = None):
    from onelayer.training.rows import RowLogprobs

    lp = RowLogprobs(trainer.model, trainer.engine.pad_id, scoring=False, temperature=trainer.config.temperature,
                     chunk_size=3, lower=trainer.lower, share_prompts=share)  # chunk 3: several LM-head chunks
    assert lp.share_prompts == share
    lp.start(rows)
    trainer.model.zero_grad(set_to_none=True)
    out = []
    step = micro or len(rows)
    for s in range(0, len(rows), step):
        b = lp.batch(list(range(s, min(len(rows), s + step))))
        logp, ent = lp(b)
        (-(logp * b.adv * b.resp).sum()).backward()
        out.append((logp.detach(), ent, b.resp))
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return out, grads


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers", ["0", "2", "3", "2.mlp", "all"])
def test_packed_prompts_give_the_unpacked_log_probs_and_gradients(arch, layers, tiny_model_dirs, tmp_path):
    from onelayer.training.rows import pack_rows, rows_from

    trainer = _trainer(tiny_model_dirs, tmp_path, arch, layers, "run")
    trajs = trainer.sample(1)
    rows = rows_from(trajs, trainer.advantages(trajs)[0])
    assert any(r.advantage != 0 for r in rows)
    # two groups of four samples: packed, the micro-batch holds two prompts, not eight rows
    assert pack_rows(rows, trainer.engine.pad_id).ids.shape[0] == 2 and len(rows) == 8
    for micro in (None, 3):  # 3: groups split across micro-batches
        got, g_packed = _logprobs_and_grads(trainer, rows, True, micro)
        want, g_plain = _logprobs_and_grads(trainer, rows, False, micro)
        for (lp_a, ent_a, resp), (lp_b, ent_b, _) in zip(got, want):
            assert int(resp.sum()) > 0
            torch.testing.assert_close(lp_a * resp[:, :], lp_b * resp, rtol=0, atol=1e-5)
            torch.testing.assert_close(ent_a * resp, ent_b * resp, rtol=0, atol=1e-5)
        assert g_packed.keys() == g_plain.keys() and g_plain
        for n in g_plain:
            scale = float(g_plain[n].abs().max())
            assert scale > 0, n
            torch.testing.assert_close(g_packed[n], g_plain[n], rtol=0, atol=1e-4 * scale, msg=n)


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_capture_equals_the_samplers_states(arch, tiny_model_dirs, tmp_path):
    """Rows without the sampler's states: the packed capture of the frozen blocks stores the same per-row states."""
    from onelayer.training.rows import RowLogprobs, rows_from

    trainer = _trainer(tiny_model_dirs, tmp_path, arch, "2", "run")
    trajs = trainer.sample(1)
    rows = rows_from(trajs, trainer.advantages(trajs)[0])
    assert all(r.lower_hidden is not None for r in rows)
    bare = [dataclasses.replace(r, lower_hidden=None) for r in rows]
    lp = RowLogprobs(trainer.model, trainer.engine.pad_id, scoring=False, temperature=1.0, chunk_size=64,
                     lower=trainer.lower, share_prompts=True)
    lp.start(bare)
    b = lp.batch(list(range(len(bare))))
    assert lp.needs_capture(b.idx)
    lp.capture(b)
    assert not lp.needs_capture(b.idx)
    for i, r in enumerate(rows):
        torch.testing.assert_close(lp._row_hidden[i], r.lower_hidden, rtol=1e-4, atol=1e-5)


def test_packing_is_off_where_the_attention_takes_no_block_mask(tiny_model_dirs, tmp_path):
    from onelayer.training.rows import RowLogprobs

    trainer = _trainer(tiny_model_dirs, tmp_path, "llama", "2", "run")
    assert RowLogprobs(trainer.model, 0, scoring=False, temperature=1.0, chunk_size=8, share_prompts=True).share_prompts
    trainer.model.config._attn_implementation = "eager"
    assert not RowLogprobs(trainer.model, 0, scoring=False, temperature=1.0, chunk_size=8,
                           share_prompts=True).share_prompts
    trainer.model.config._attn_implementation = "sdpa"
    assert not RowLogprobs(trainer.model, 0, scoring=True, temperature=1.0, chunk_size=8,
                           share_prompts=True).share_prompts
