"""The rollout engine's sampling log-probs beside the trainer's, one update at a time.

PPO's ratio needs the sampling policy's log-probs. The trainer recomputes them; the
engine reported its own while sampling (other kernels, other precision). During an
update the trainer's values of each row are noted while the weights are still the
sampling policy's (before the first optimizer step), the two are compared every step
(metrics ``logprob_mismatch_*``), and with ``use_engine_logprobs`` the engine's values
stand in as the old log-probs when they agree within the tolerance.
"""

from __future__ import annotations

import sys

import torch

from onelayer.training.logprob_check import LogprobMismatch, logprob_mismatch, place_response_values
from onelayer.training.rows import Row


class EngineLogprobs:
    """Trainer vs engine log-probs of the rows of the current update."""

    def __init__(self, tolerance: float, scoring: bool):
        self.tolerance, self.scoring = tolerance, scoring
        self._pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row -> (trainer, engine) log-probs
        self._warned = False  # the fallback warning is printed once per run

    def start(self) -> None:
        """A new update: forget the previous batch's pairs."""
        self._pairs = {}

    def note(self, rows: list[Row], idx: list[int], lp: torch.Tensor) -> None:
        """Keep the trainer's log-probs ``lp`` of rows ``idx`` (sampling policy) beside the engine's, once per row."""
        for j, i in enumerate(idx):
            r = rows[i]
            n = 1 if self.scoring else len(r.response_ids)  # score format: one value, log pi(a | s)
            if i in self._pairs or not r.engine_logprobs or len(r.engine_logprobs) != n:
                continue
            p = 0 if self.scoring else len(r.prompt_ids)
            self._pairs[i] = (lp[j, p : p + n].detach().float(),
                              torch.tensor(r.engine_logprobs, dtype=torch.float32, device=lp.device))

    def mismatch(self) -> LogprobMismatch:
        """Engine vs trainer log-probs over every response token noted in this update."""
        if not self._pairs:
            return logprob_mismatch(torch.zeros(0), torch.zeros(0), torch.zeros(0), self.tolerance)
        trainer, engine = (torch.cat(x) for x in zip(*self._pairs.values()))
        return logprob_mismatch(trainer, engine, torch.ones_like(trainer), self.tolerance)

    def old_logprobs(self, rows: list[Row], trainer_lp: list[torch.Tensor], stats: dict) -> list[torch.Tensor]:
        """The engine's log-probs as PPO's old ones when every row's match the trainer's within tolerance, else the trainer's.

        Sets ``stats["engine_logprobs_used"]`` (1.0 or 0.0).
        """
        m = self.mismatch()
        usable = m.tokens > 0 and m.mean <= m.tolerance and len(self._pairs) == sum(not r.padding for r in rows)
        stats["engine_logprobs_used"] = float(usable)
        if not usable:
            if not self._warned:
                print(f"use_engine_logprobs: the engine's log-probs differ from the trainer's by {m.mean:.4f} per token "
                      f"(max {m.max:.4f}, tolerance {m.tolerance}): using the trainer's (metric engine_logprobs_used)",
                      file=sys.stderr)
                self._warned = True
            return trainer_lp
        if self.scoring:
            return [torch.tensor(r.engine_logprobs, dtype=torch.float32, device=o.device) for r, o in zip(rows, trainer_lp)]
        return [place_response_values([len(r.prompt_ids)], [r.engine_logprobs], o.shape[0], o.device)[0]
                for r, o in zip(rows, trainer_lp)]
