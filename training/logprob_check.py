"""Do the rollout engine's sampling log-probs agree with the trainer's on the same tokens?

An engine (vLLM: other kernels, bf16, fused layers) reports the log-prob of each
token it sampled; the trainer recomputes it with its own forward pass. PPO's
ratio ``exp(logp_new - logp_old)`` is only right when ``logp_old`` is the
sampling policy's, so the engine's values may stand in for the trainer's only
when the two agree within a tolerance. These statistics say how far apart they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogprobMismatch:
    """``|engine - trainer|`` over the compared response tokens."""

    mean: float  # mean absolute difference
    max: float  # largest absolute difference
    frac_over: float  # fraction of tokens whose difference exceeds the tolerance
    tokens: int  # tokens compared
    tolerance: float

    @property
    def within_tolerance(self) -> bool:
        """Every compared token within the tolerance (vacuously true with no tokens)."""
        return self.max <= self.tolerance

    def to_metrics(self) -> dict[str, float]:
        """Flat metrics for metrics.jsonl."""
        return {"logprob_mismatch_mean": self.mean, "logprob_mismatch_max": self.max,
                "logprob_mismatch_frac": self.frac_over, "logprob_mismatch_tokens": self.tokens}


def logprob_mismatch(trainer: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor,
                     tolerance: float) -> LogprobMismatch:
    """Compare two (batch, T) log-prob tensors at the positions where ``mask`` is nonzero."""
    if trainer.shape != engine.shape or trainer.shape != mask.shape:
        raise ValueError(f"shapes differ: trainer {tuple(trainer.shape)}, engine {tuple(engine.shape)}, "
                         f"mask {tuple(mask.shape)}")
    m = mask.bool()
    diff = (trainer.detach().float() - engine.detach().float().to(trainer.device)).abs()[m.to(trainer.device)]
    n = int(diff.numel())
    if n == 0:
        return LogprobMismatch(0.0, 0.0, 0.0, 0, tolerance)
    return LogprobMismatch(float(diff.mean()), float(diff.max()), float((diff > tolerance).float().mean()), n,
                           tolerance)


def place_response_values(prompt_lengths: list[int], values: list[list[float]], width: int,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-row response values in the trainer's (batch, width) layout: token ``j`` of row ``i`` at ``len(prompt_i) + j``."""
    out = torch.zeros((len(values), width), dtype=torch.float32)
    for i, (p, v) in enumerate(zip(prompt_lengths, values)):
        n = max(0, min(len(v), width - p))
        if n:
            out[i, p : p + n] = torch.tensor(v[:n], dtype=torch.float32)
    return out.to(device)
