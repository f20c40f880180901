"""Advantage estimators: pure functions over rewards and group ids, selected by name.

Conventions (MISSION.md): ``std`` is the unbiased sample standard deviation
(N-1), ``eps = 1e-6`` is added to it, and a group of one, or of all-equal
rewards, gives advantage 0.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np

EPS = 1e-6


def _group_indices(group_ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    groups: dict[Hashable, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    return groups


def grpo_advantages(rewards: Sequence[float], group_ids: Sequence[Hashable], eps: float = EPS) -> np.ndarray:
    """GRPO: ``A_i = (R_i - mean(R_group)) / (std(R_group) + eps)``, one value per rollout."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(r) != len(group_ids):
        raise ValueError(f"{len(r)} rewards but {len(group_ids)} group ids")
    adv = np.zeros_like(r)
    for idx in _group_indices(group_ids).values():
        g = r[idx]
        if len(g) < 2 or np.all(g == g[0]):
            continue
        adv[idx] = (g - g.mean()) / (g.std(ddof=1) + eps)
    return adv


def drgrpo_advantages(rewards: Sequence[float], group_ids: Sequence[Hashable], eps: float = EPS) -> np.ndarray:
    """Dr. GRPO: ``A_i = R_i - mean(R_group)`` (no std division)."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(r) != len(group_ids):
        raise ValueError(f"{len(r)} rewards but {len(group_ids)} group ids")
    adv = np.zeros_like(r)
    for idx in _group_indices(group_ids).values():
        g = r[idx]
        if len(g) < 2 or np.all(g == g[0]):
            continue
        adv[idx] = g - g.mean()
    return adv


def no_signal_groups(rewards: Sequence[float], group_ids: Sequence[Hashable]) -> int:
    """How many groups have all-equal rewards (and so carry no learning signal)."""
    r = np.asarray(rewards, dtype=np.float64)
    return sum(1 for idx in _group_indices(group_ids).values() if np.all(r[idx] == r[idx][0]))


# Outcome-level estimators: one advantage per trajectory from its return.
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
}

# Default loss aggregation per algorithm (verl's loss_agg_mode names).
DEFAULT_LOSS_AGG = {
    "grpo": "token-mean",
    "drgrpo": "seq-mean-token-sum-norm",
}
