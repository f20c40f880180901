"""Policy-gradient losses written out as tensors, named as in the papers.

Every function takes per-token tensors of shape (batch, tokens) plus a 0/1
``mask`` of response tokens, so the trainer can split a batch into
micro-batches and still aggregate exactly as if it were one batch: the
aggregation denominators are computed once for the whole batch and passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def ppo_clip_token_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
    epsilon_low: float = 0.2, epsilon_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip per token: ``-min(r A, clip(r, 1-eps_low, 1+eps_high) A)``, ``r = exp(logp - old)``.

    ``advantages`` is (batch, 1) or (batch, tokens). Returns (loss, clipped) per token.
    """
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Low-variance KL estimate per token (Schulman's k3): ``exp(ref - logp) - (ref - logp) - 1`` >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


@dataclass
class AggNorm:
    """Batch-level denominators for one aggregation mode."""

    mode: str
    total_tokens: float
    num_seqs: int
    constant: float  # Dr. GRPO's fixed length (max response tokens)


def agg_norm(mask: torch.Tensor, mode: str, constant: float) -> AggNorm:
    """Denominators of ``mode`` over a whole batch (mask: (batch, tokens))."""
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose from {', '.join(LOSS_AGG_MODES)}")
    return AggNorm(mode, float(mask.sum().clamp(min=1).item()), int(mask.shape[0]), float(constant))


def aggregate(token_values: torch.Tensor, mask: torch.Tensor, norm: AggNorm) -> torch.Tensor:
    """This micro-batch's share of the batch-level aggregate of ``token_values``.

    - ``token-mean``: sum over all tokens / tokens in the batch (verl default, TRL ``dapo``).
    - ``seq-mean-token-mean``: mean over tokens of each response, mean over responses (original GRPO).
    - ``seq-mean-token-sum-norm``: sum over tokens / (responses x constant) (Dr. GRPO).
    """
    mask = mask.to(token_values.dtype)
    if norm.mode == "token-mean":
        return (token_values * mask).sum() / norm.total_tokens
    if norm.mode == "seq-mean-token-mean":
        per_seq = (token_values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.sum() / norm.num_seqs
    if norm.mode == "seq-mean-token-sum-norm":
        return (token_values * mask).sum() / (norm.num_seqs * norm.constant)
    raise ValueError(f"unknown loss aggregation {norm.mode!r}")
