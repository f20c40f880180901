"""The PPO-clip update of the selected parameters on one sampled batch, as one function.

For every PPO epoch (``num_iterations``) and every mini-batch of rows::

    r_t   = exp(log pi(a_t | s_t) - log pi_old(a_t | s_t))
    L_t   = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)  [+ beta * KL_k3(pi || pi_ref)_t]
    L     = aggregate(L_t over the mini-batch's response tokens, loss_agg)

backward micro-batch by micro-batch (gradient accumulation), clip the gradient norm,
one optimizer step, and check that the selected weights moved.

Everything that is not the algorithm comes in as an argument: how log-probs are
computed (``RowLogprobs``: chunked head, cached lower blocks, scored actions), the
engine's log-probs (``EngineLogprobs``), and what FSDP changes (``SingleProcess`` /
``FSDPHooks``: padded rows, batch-wide denominators and sums, global norms).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from onelayer.errors import TrainingError
from onelayer.training.config import TrainConfig
from onelayer.training.engine_logprobs import EngineLogprobs
from onelayer.training.fsdp_hooks import SingleProcess
from onelayer.training.losses import agg_norm, aggregate, kl_k3, ppo_clip_token_loss
from onelayer.training.rows import Row, RowLogprobs


def ppo_update(logprobs: RowLogprobs, rows: list[Row], config: TrainConfig, optimizer: torch.optim.Optimizer | None,
               params: list[torch.Tensor], *, engine: EngineLogprobs, ref_values: list[torch.Tensor] | None = None,
               ranks: SingleProcess | None = None, selection: str = "the selection") -> dict:
    """One PPO-clip update on ``rows``; returns the step's update metrics.

    ``params`` are the trained tensors (the optimizer's), ``ref_values`` their initial values
    (the reference policy for KL; None: no KL at all), ``selection`` names them in errors.
    Metrics: loss, kl, entropy, clip_fraction, grad_norm, update_norm, optimizer_steps, the
    engine log-prob mismatch and, with ``use_engine_logprobs``, engine_logprobs_used.
    """
    c, ranks = config, ranks or SingleProcess(None)
    rows = ranks.pad_rows(rows, logprobs.pad_id, logprobs.scoring)
    stats = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0, "update_norm": 0.0,
             "optimizer_steps": 0}
    if not rows:
        return stats
    mb = c.micro_batch_size
    logprobs.start(rows)
    engine.start()

    # Old-policy and reference log-probs on the whole batch, before any update (no grad);
    # the frozen lower blocks run here once and their output is reused by every later pass.
    old_lp = [None] * len(rows)
    ref_lp = [None] * len(rows) if ref_values is not None else None
    need_old = c.num_iterations > 1 or c.use_engine_logprobs  # else the first pass's own log-probs are the old ones
    if need_old or ref_values is not None:
        with torch.no_grad():
            for s in range(0, len(rows), mb):
                b = logprobs.batch(list(range(s, min(len(rows), s + mb))))
                logprobs.capture(b)
                if need_old:
                    lp, _ = logprobs(b)
                    old_lp[s : s + mb] = list(lp)
                    engine.note(rows, b.idx, lp)
                if ref_lp is not None:
                    with reference_weights(params, ref_values):
                        lp, _ = logprobs(b)
                    ref_lp[s : s + mb] = list(lp)
    if c.use_engine_logprobs:
        old_lp = engine.old_logprobs(rows, old_lp, stats)
    if _silent(rows, ranks) or optimizer is None:
        return _measure_only(logprobs, rows, ref_lp, c, stats, engine, ranks)

    n_mini = 1 if c.mini_batch_size is None else (c.num_tasks * c.num_generations) // c.mini_batch_size
    order = list(range(len(rows)))
    token_count = clip_count = kl_sum = ent_sum = loss_sum = 0.0
    grad_norms, update_sq = [], 0.0
    for _ in range(c.num_iterations):
        for m in range(n_mini):
            mini = order[m::n_mini] if n_mini > 1 else order
            mrows = [rows[i] for i in mini]
            # The aggregation denominators are the whole mini-batch's, whatever the micro-batching.
            mresp = logprobs.batch(mini).resp
            norm = agg_norm(mresp, c.resolved_loss_agg(), 1.0 if logprobs.scoring else c.max_new_tokens)
            norm = ranks.batch_norm(norm, mrows, mresp)
            optimizer.zero_grad(set_to_none=True)
            if c.beta == 0 and _silent(mrows, ranks):
                continue  # this mini-batch carries no signal: no optimizer step
            for s in range(0, len(mini), mb):
                idx = mini[s : s + mb]
                if not ranks.lockstep and c.beta == 0 and all(rows[i].advantage == 0.0 for i in idx):
                    continue  # contributes zero gradient; its tokens still count in `norm`
                b = logprobs.batch(idx)
                lp, ent = logprobs(b)
                if stats["optimizer_steps"] == 0:
                    engine.note(rows, idx, lp)  # still the sampling policy: compare with the engine
                old = _stack([old_lp[i] for i in idx], lp.shape[1]) if need_old else lp.detach()
                tok_loss, clipped = ppo_clip_token_loss(lp, old, b.adv, c.epsilon, c.epsilon_high)
                if ref_lp is not None:
                    kl = kl_k3(lp, _stack([ref_lp[i] for i in idx], lp.shape[1]))
                    if c.beta > 0:
                        tok_loss = tok_loss + c.beta * kl
                    kl_sum += float((kl.detach() * b.resp).sum())
                loss = aggregate(tok_loss, b.resp, norm)
                ranks.scale_loss(loss).backward()
                loss_sum += float(loss.detach())
                token_count += float(b.resp.sum())
                clip_count += float((clipped * b.resp).sum())
                ent_sum += float((ent * b.resp).sum())
            if c.max_grad_norm > 0:
                gn = torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            else:
                gn = ranks.grad_norm(params)
            grad_norms.append(ranks.item(gn))
            before = [p.detach().clone() for p in params]
            optimizer.step()
            stats["optimizer_steps"] += 1
            with torch.no_grad():
                sq = sum(float((ranks.local(p) - ranks.local(p0)).pow(2).sum()) for p, p0 in zip(params, before))
            sq = ranks.sum([sq])[0]
            update_sq += sq
            if sq == 0.0:
                raise TrainingError(
                    f"the selected weights ({selection}) did not change after an optimizer step "
                    "with nonzero advantages: training is not happening (check lr, the layer selection and "
                    "that the loss depends on the trained parameters)")
    loss_sum, token_count, clip_count, ent_sum, kl_sum = ranks.sum([loss_sum, token_count, clip_count, ent_sum, kl_sum])
    stats.update(loss=loss_sum / max(c.num_iterations, 1), grad_norm=float(np.mean(grad_norms)),
                 update_norm=update_sq ** 0.5, clip_fraction=clip_count / max(token_count, 1),
                 entropy=ent_sum / max(token_count, 1), kl=kl_sum / max(token_count, 1))
    stats.update(engine.mismatch().to_metrics())
    return stats


@contextlib.contextmanager
def reference_weights(params: list[torch.Tensor], ref_values: list[torch.Tensor]):
    """Temporarily put the initial values back into the trained tensors (the frozen reference policy)."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, r in zip(params, ref_values):
            p.copy_(r)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _silent(rows: list[Row], ranks: SingleProcess) -> bool:
    """No row has a nonzero advantage (under FSDP: on any rank)."""
    return not ranks.any(any(r.advantage != 0.0 for r in rows))


def _measure_only(logprobs: RowLogprobs, rows: list[Row], ref_lp: list | None, c: TrainConfig, stats: dict,
                  engine: EngineLogprobs, ranks: SingleProcess) -> dict:
    """No learning signal: skip the optimizer step, still report entropy and KL."""
    tokens = ent_sum = kl_sum = 0.0
    mb = c.micro_batch_size
    with torch.no_grad():
        for s in range(0, len(rows), mb):
            b = logprobs.batch(list(range(s, min(len(rows), s + mb))))
            lp, ent = logprobs(b)
            engine.note(rows, b.idx, lp)
            tokens += float(b.resp.sum())
            ent_sum += float((ent * b.resp).sum())
            if ref_lp is not None:
                kl_sum += float((kl_k3(lp, _stack(ref_lp[s : s + mb], lp.shape[1])) * b.resp).sum())
    tokens, ent_sum, kl_sum = ranks.sum([tokens, ent_sum, kl_sum])
    stats.update(entropy=ent_sum / max(tokens, 1), kl=kl_sum / max(tokens, 1))
    stats.update(engine.mismatch().to_metrics())
    return stats


def _stack(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """Stack right-padded per-row tensors computed in batches of other widths to ``width`` columns."""
    out = torch.zeros((len(rows), width), dtype=rows[0].dtype, device=rows[0].device)
    for i, r in enumerate(rows):
        n = min(width, r.shape[0])
        out[i, :n] = r[:n]
    return out
