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


def _normalise(values: np.ndarray, mode: str, eps: float) -> np.ndarray:
    """Centre a group; divide by (unbiased std + eps) in ``mean_std_norm``. Singletons / all-equal -> 0."""
    if len(values) < 2 or np.all(values == values[0]):
        return np.zeros_like(values)
    centred = values - values.mean()
    if mode == "mean_std_norm":
        return centred / (values.std(ddof=1) + eps)
    if mode == "mean_norm":
        return centred
    raise ValueError(f"unknown GiGPO mode {mode!r}: use 'mean_norm' or 'mean_std_norm'")


def discounted_returns(rewards: Sequence[float], gamma: float) -> np.ndarray:
    """``R_t = sum_{k>=t} gamma^(k-t) r_k`` for one episode's step rewards."""
    out = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def _similarity_keys(anchors: list, threshold: float) -> list[int]:
    """Cluster anchors greedily: a step joins the first cluster whose representative is similar enough."""
    import difflib

    reps: list[str] = []
    keys = []
    for a in anchors:
        text = str(a)
        for k, rep in enumerate(reps):
            if text == rep or difflib.SequenceMatcher(None, text, rep).ratio() >= threshold:
                keys.append(k)
                break
        else:
            reps.append(text)
            keys.append(len(reps) - 1)
    return keys


def gigpo_advantages(
    task_ids: Sequence[Hashable], episode_ids: Sequence[Hashable], anchors: Sequence[Hashable],
    rewards: Sequence[float], *, gamma: float = 0.95, omega: float = 1.0, mode: str = "mean_std_norm",
    similarity_threshold: float | None = None, episode_stats: str = "trajectory", eps: float = EPS,
    return_parts: bool = False,
):
    """GiGPO advantages (Feng et al. 2025), one per environment step.

    Inputs are flat per-step sequences in time order within each episode:
    ``task_ids`` (the group), ``episode_ids`` (the trajectory), ``anchors``
    (hashable state keys), ``rewards`` (the step's reward, penalties included).

    - episode level: ``A^E = (R(tau) - mean_j R(tau_j)) / F_norm`` over the trajectories of a
      task, ``R(tau)`` the undiscounted sum of its step rewards; ``episode_stats="trajectory"``
      uses one return per trajectory (the paper's equation), ``"step"`` pools every step row
      (verl-agent's code, which weights long episodes more);
    - step level: steps of one task with equal anchors (or, with ``similarity_threshold``,
      ``difflib`` ratio >= threshold) form a step group, repeated visits included; each
      member's discounted return ``R_t`` is normalised within the group to give ``A^S``;
    - ``A = A^E + omega * A^S``. ``F_norm`` is the unbiased std + eps (``mean_std_norm``) or
      1 (``mean_norm``); singleton or all-equal groups give 0.

    Returns a numpy array (and, with ``return_parts``, also ``A^E``, ``A^S`` and the step-group key of each step).
    """
    n = len(rewards)
    if not (len(task_ids) == len(episode_ids) == len(anchors) == n):
        raise ValueError(f"task_ids, episode_ids, anchors and rewards must have one entry per step; got "
                         f"{len(task_ids)}, {len(episode_ids)}, {len(anchors)}, {n}")
    if episode_stats not in ("trajectory", "step"):
        raise ValueError(f"episode_stats must be 'trajectory' or 'step', got {episode_stats!r}")
    r = np.asarray(rewards, dtype=np.float64)
    by_episode = _group_indices(episode_ids)
    episode_return = {e: r[idx].sum() for e, idx in by_episode.items()}
    step_return = np.zeros(n)
    for idx in by_episode.values():
        step_return[idx] = discounted_returns(r[idx], gamma)

    adv_e = np.zeros(n)
    adv_s = np.zeros(n)
    group_key: list = [None] * n
    for task, idx in _group_indices(task_ids).items():
        episodes = list(dict.fromkeys(episode_ids[i] for i in idx))
        if episode_stats == "trajectory":
            norm = dict(zip(episodes, _normalise(np.array([episode_return[e] for e in episodes]), mode, eps)))
            for i in idx:
                adv_e[i] = norm[episode_ids[i]]
        else:
            adv_e[idx] = _normalise(np.array([episode_return[episode_ids[i]] for i in idx]), mode, eps)
        keys = (_similarity_keys([anchors[i] for i in idx], similarity_threshold)
                if similarity_threshold is not None else [anchors[i] for i in idx])
        for i, k in zip(idx, keys):
            group_key[i] = (task, k)
    for idx in _group_indices(group_key).values():
        adv_s[idx] = _normalise(step_return[idx], mode, eps)
    adv = adv_e + omega * adv_s
    if return_parts:
        return adv, adv_e, adv_s, group_key
    return adv


def step_group_stats(group_keys: Sequence[Hashable]) -> dict:
    """How many anchor groups a batch formed and how large they are (GiGPO diagnostics)."""
    sizes = [len(v) for v in _group_indices(group_keys).values()]
    multi = [s for s in sizes if s > 1]
    return {"step_groups": len(sizes), "step_groups_multi": len(multi),
            "step_group_size_mean": float(np.mean(sizes)) if sizes else 0.0,
            "step_group_size_max": max(sizes) if sizes else 0,
            "steps_in_multi_groups": float(sum(multi) / max(sum(sizes), 1))}


# Outcome-level estimators: one advantage per trajectory from its return (GiGPO is per step, above).
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
}

# ------------------------------------------------------------------ the registry the trainer uses
BatchEstimator = Callable[..., "tuple[list[np.ndarray], dict]"]
"""``(trajs, config) -> (one per-step advantage array per trajectory, diagnostics)``."""
ESTIMATORS: dict[str, BatchEstimator] = {}


def register_adv_est(name: str) -> Callable[[BatchEstimator], BatchEstimator]:
    """Register a batch advantage estimator under ``name`` (verl's ``register_adv_est`` pattern).

    The function takes the batch's trajectories (``agents.trajectory.Trajectory``: ``group``,
    ``episode_return``, ``steps`` with ``reward`` and ``anchor``) and the run's TrainConfig, and
    returns one array of per-step advantages per trajectory plus a dict of diagnostics.
    """
    def wrap(fn: BatchEstimator) -> BatchEstimator:
        if name in ESTIMATORS and ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return wrap


def _outcome(estimator: Callable[..., np.ndarray]) -> BatchEstimator:
    """One advantage per trajectory from its return, broadcast to its steps (GRPO, Dr. GRPO)."""
    def batch(trajs, config) -> tuple[list[np.ndarray], dict]:
        adv = estimator([t.episode_return for t in trajs], [t.group for t in trajs])
        return [np.full(t.length, a) for t, a in zip(trajs, adv)], {}

    batch.__doc__ = estimator.__doc__
    return batch


@register_adv_est("gigpo")
def gigpo_batch(trajs, config) -> tuple[list[np.ndarray], dict]:
    """GiGPO on a batch: episode-level plus step-level (anchor group) advantages, per step.

    Anchors are the steps' observation keys, or the env's true-state keys with ``anchor="state"``.
    """
    c = config
    flat = [(t.group, e, (s.state_anchor if c.anchor == "state" and s.state_anchor is not None else s.anchor), s.reward)
            for e, t in enumerate(trajs) for s in t.steps]
    if not flat:
        return [np.zeros(0) for _ in trajs], {}
    groups, episodes, anchors, rewards = zip(*flat)
    adv, _, _, keys = gigpo_advantages(groups, episodes, anchors, rewards, gamma=c.gamma, omega=c.omega,
                                       mode=c.gigpo_mode, similarity_threshold=c.similarity_threshold,
                                       episode_stats=c.episode_stats, return_parts=True)
    out, pos = [], 0
    for t in trajs:
        out.append(np.asarray(adv[pos : pos + t.length]))
        pos += t.length
    return out, step_group_stats(keys)


register_adv_est("grpo")(_outcome(grpo_advantages))
register_adv_est("drgrpo")(_outcome(drgrpo_advantages))

ALGORITHMS = tuple(ESTIMATORS)

# Default loss aggregation per algorithm (verl's loss_agg_mode names).
DEFAULT_LOSS_AGG = {
    "gigpo": "token-mean",
    "grpo": "token-mean",
    "drgrpo": "seq-mean-token-sum-norm",
}
