"""Layer contribution and the statistics a layer sweep report needs (numpy only).

Layer contribution (MISSION.md; Zhang et al., arXiv 2607.01232):

    C_l = (S_l - S_base) / (S_full - S_base)

``S_base`` is the untrained model's score, ``S_full`` the score after
full-parameter RL, ``S_l`` the score after RL that updates only layer l.
C_l = 1: layer l alone recovers the whole gain; C_l > 1: it beats full
training; C_l < 0: it ends below the base model. When ``S_full - S_base`` is
near zero the ratio is meaningless, so these functions return ``None`` (and
say why) instead of a number.

Scores are on a 0-1 scale (accuracy, pass@1, success rate). For scores in
percent pass ``min_gain=1.0`` (one point) instead of the default 0.01.

The paper reports one seed per run; ``contribution_over_seeds`` adds a
paired bootstrap confidence interval over seeds, and ``spearman`` /
``kendall_tau`` / ``rank_correlation_matrix`` compare layer rankings across
domains. ``pearson`` tests whether a layer's weight-change norm predicts its
contribution (the paper says it does not).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Smallest |S_full - S_base| we divide by: one accuracy point on a 0-1 scale.
# A smaller gain is within evaluation noise for the suite sizes onelayer uses
# (a few hundred items), and dividing by it turns noise into huge ratios.
MIN_GAIN = 0.01

# A bootstrap CI is reported only if at most this fraction of resamples had a
# usable denominator dropped; more means the full-parameter gain itself is
# not reliably away from zero.
MAX_DROPPED_FRACTION = 0.05


def layer_contribution(
    s_layer: float, s_base: float, s_full: float, min_gain: float = MIN_GAIN
) -> float | None:
    """``C_l = (S_l - S_base) / (S_full - S_base)``; ``None`` when ``|S_full - S_base| < min_gain``.

    ``min_gain`` is on the scores' own scale (default 0.01 = one point on a 0-1
    scale). A negative full gain (full training hurt) still gives a ratio, but
    then C_l > 0 means layer l also hurt.
    """
    if min_gain <= 0:
        raise ValueError(
            f"min_gain must be > 0 (got {min_gain}); it guards the division by S_full - S_base"
        )
    gain_full = s_full - s_base
    if abs(gain_full) < min_gain:
        return None
    return float((s_layer - s_base) / gain_full)


@dataclass(frozen=True)
class ContributionEstimate:
    """Layer contribution over seeds: point estimate, percentile bootstrap CI, and why any part is missing."""

    mean: float | None
    """Contribution of the seed means, ``(mean S_l - mean S_base) / (mean S_full - mean S_base)``; None if undefined."""
    ci_low: float | None
    """Lower CI bound; None when undefined or with a single seed (no spread to resample)."""
    ci_high: float | None
    """Upper CI bound; None when undefined or with a single seed."""
    n_seeds: int
    """Number of paired seeds."""
    per_seed: tuple[float | None, ...]
    """``C_l`` of each seed on its own (None where that seed's full gain is below ``min_gain``)."""
    defined: bool
    """False when the full-parameter gain is too small to divide by; ``mean`` and the CI are then None."""
    reason: str = ""
    """Why ``mean`` or the CI is missing; empty when both are present."""
    ci_level: float = 0.95
    """Coverage the CI was computed for."""
    dropped_fraction: float = 0.0
    """Fraction of bootstrap resamples dropped because their full gain was below ``min_gain``."""


def _as_scores(values: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of scores (got shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf: {values!r}")
    return a


def _check_bootstrap_args(n_boot: int, ci: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (got {n_boot})")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95 (got {ci})")


def contribution_over_seeds(
    s_layer: Sequence[float],
    s_base: Sequence[float],
    s_full: Sequence[float],
    *,
    n_boot: int = 10000,
    ci: float = 0.95,
    seed: int = 0,
    min_gain: float = MIN_GAIN,
    max_dropped: float = MAX_DROPPED_FRACTION,
) -> ContributionEstimate:
    """Layer contribution over seeds with a paired percentile bootstrap CI.

    The three lists hold one score per seed, paired by index (seed i of the
    layer run, of the base evaluation and of the full run).

    Point estimate, the ratio of means (per-seed ratios explode when one seed's
    full gain is small; the ratio of means does not):

        C = (mean(S_l) - mean(S_base)) / (mean(S_full) - mean(S_base))

    CI: draw ``n_boot`` resamples of the seed indices with replacement (the
    same indices for all three lists), recompute C on each, take the
    ``(1-ci)/2`` and ``(1+ci)/2`` quantiles. A resample whose full gain is
    below ``min_gain`` in the direction of the observed gain (near zero or
    flipped sign) is dropped. Undefined (``defined=False``, a reason given)
    when the mean full gain is below ``min_gain``, or when more than
    ``max_dropped`` of the resamples were dropped.

    One seed: the point estimate is given, ``ci_low``/``ci_high`` are None and
    ``reason`` says so (a zero-width interval would claim a certainty one seed
    cannot give). Few seeds (2-4) give a percentile CI that is too narrow;
    treat it as a lower bound on the uncertainty. Deterministic given ``seed``.
    """
    _check_bootstrap_args(n_boot, ci)
    layer, base, full = (
        _as_scores(v, n) for v, n in ((s_layer, "s_layer"), (s_base, "s_base"), (s_full, "s_full"))
    )
    if not len(layer) == len(base) == len(full):
        raise ValueError(
            f"scores must be paired by seed: got {len(layer)} layer, {len(base)} base and {len(full)} full scores"
        )
    n = len(layer)
    per_seed = tuple(layer_contribution(lo, b, f, min_gain) for lo, b, f in zip(layer, base, full))

    gain_full = full.mean() - base.mean()
    point = layer_contribution(layer.mean(), base.mean(), full.mean(), min_gain)
    if point is None:
        return ContributionEstimate(
            None, None, None, n, per_seed, defined=False, ci_level=ci,
            reason=(
                f"full-parameter gain too small to divide by: mean(S_full) - mean(S_base) = {gain_full:.4g}, "
                f"|gain| < min_gain = {min_gain:g}"
            ),
        )
    if n == 1:
        return ContributionEstimate(point, None, None, 1, per_seed, defined=True, ci_level=ci,
                                    reason="one seed: no confidence interval")

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # row b = the seed indices of resample b
    gain_layer_b = layer[idx].mean(axis=1) - base[idx].mean(axis=1)
    gain_full_b = full[idx].mean(axis=1) - base[idx].mean(axis=1)
    keep = np.sign(gain_full) * gain_full_b >= min_gain
    dropped = 1.0 - keep.mean()
    if dropped > max_dropped:
        return ContributionEstimate(
            None, None, None, n, per_seed, defined=False, ci_level=ci, dropped_fraction=float(dropped),
            reason=(
                f"full-parameter gain too small to divide by: in {dropped:.1%} of bootstrap resamples "
                f"(limit {max_dropped:.0%}) mean(S_full) - mean(S_base) was below min_gain = {min_gain:g} "
                f"(observed gain {gain_full:.4g} over {n} seeds)"
            ),
        )
    c_b = gain_layer_b[keep] / gain_full_b[keep]
    low, high = np.quantile(c_b, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return ContributionEstimate(
        mean=point,
        ci_low=float(low),
        ci_high=float(high),
        n_seeds=n,
        per_seed=per_seed,
        defined=True,
        ci_level=ci,
        dropped_fraction=float(dropped),
    )


def bootstrap_mean_ci(
    values: Sequence[float], n_boot: int = 10000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile bootstrap CI (resampling values with replacement).

    With a single value the CI is not available: ``low`` and ``high`` are nan.
    Deterministic given ``seed``.
    """
    _check_bootstrap_args(n_boot, ci)
    x = _as_scores(values, "values")
    if len(x) == 1:
        return float(x[0]), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(x.mean()), float(low), float(high)


def _paired(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"x and y must be 1-D and of the same length (got shapes {a.shape} and {b.shape})"
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(
            "x and y must be finite; drop layers whose contribution is undefined (None) first"
        )
    return a, b


def paired_permutation_test(
    x: Sequence[float], y: Sequence[float], n_resamples: int = 100000, seed: int = 0
) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of ``mean(x - y) == 0``.

    Under the null each pair's difference is as likely to have either sign, so the
    p-value is the fraction of sign assignments whose mean difference is at least as far
    from 0 as the observed one. Exact (all ``2**k`` assignments of the ``k`` nonzero
    differences) when ``k <= 16``; otherwise ``n_resamples`` seeded random assignments,
    with ``p = (hits + 1) / (n_resamples + 1)`` so it is never 0. Ties and zero
    differences need no special case (a zero difference flips to itself), which suits
    per-item success rates with many ties. 1.0 when every difference is 0.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1 (got {n_resamples})")
    a, b = _paired(x, y)
    d = a - b
    d = d[d != 0.0]
    if len(d) == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-12 * max(1.0, float(np.abs(d).sum()))  # float sums of the same terms in another order
    if len(d) <= 16:
        signs = 1.0 - 2.0 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 10000):  # chunks keep memory at 10000 x k
        signs = rng.choice((-1.0, 1.0), size=(min(10000, n_resamples - start), len(d)))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (hits + 1) / (n_resamples + 1)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation ``r = sum(dx*dy) / sqrt(sum(dx^2) * sum(dy^2))``, ``dx = x - mean(x)``.

    nan when x or y is constant (or has fewer than 2 values): the correlation is undefined.
    """
    a, b = _paired(x, y)
    if len(a) < 2:
        return float("nan")
    dx, dy = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.sum(dx * dy) / denom, -1.0, 1.0))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n; tied values share the average of the ranks they span (``[5, 7, 7] -> [1, 2.5, 2.5]``)."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return a
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts_block = np.r_[True, sorted_a[1:] != sorted_a[:-1]]  # first element of each run of ties
    block = np.cumsum(starts_block) - 1
    first = np.flatnonzero(starts_block)  # 0-based position of each run's first element
    last = np.r_[first[1:], len(a)] - 1  # ... and of its last element
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = ((first + last) / 2.0 + 1.0)[block]  # 1-based average rank of each run
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks of x and y (ties handled).

    nan when either ranking is constant (all values tied) or has fewer than 2 values.
    """
    a, b = _paired(x, y)
    if len(a) < 2:
        return float("nan")
    return pearson(average_ranks(a), average_ranks(b))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b, which corrects for ties:

        tau_b = (n_c - n_d) / sqrt((n_0 - n_x) * (n_0 - n_y))

    over all pairs i < j: n_c concordant, n_d discordant, n_0 = n(n-1)/2 pairs,
    n_x / n_y pairs tied in x / y. Computed from the n x n sign matrices
    (O(n^2), fine for rankings of tens to hundreds of layers). nan when either
    ranking is constant or has fewer than 2 values.
    """
    a, b = _paired(x, y)
    sx = np.sign(a[:, None] - a[None, :])  # sx[i, j] = sign(x_i - x_j)
    sy = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), k=1)  # pairs i < j
    sx, sy = sx[iu], sy[iu]
    n_c_minus_n_d = np.sum(sx * sy)  # +1 concordant, -1 discordant, 0 tied in x or y
    untied_x = np.sum(sx != 0)  # n_0 - n_x
    untied_y = np.sum(sy != 0)  # n_0 - n_y
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float(np.clip(n_c_minus_n_d / np.sqrt(float(untied_x) * float(untied_y)), -1.0, 1.0))


RANK_CORRELATIONS = {"spearman": spearman, "kendall": kendall_tau}


def rank_correlation_matrix(
    rankings: dict[str, Sequence[float]], method: str = "spearman"
) -> dict[tuple[str, str], float]:
    """Rank correlation of every pair of domains: ``{(a, b): rho}`` for names ``a < b`` in sorted order.

    ``rankings[domain]`` holds one value per layer (e.g. its contribution), the
    same layers in the same order for every domain. ``method`` is
    ``"spearman"`` or ``"kendall"`` (tau-b).
    """
    if method not in RANK_CORRELATIONS:
        raise ValueError(
            f"unknown rank correlation {method!r}: use one of {sorted(RANK_CORRELATIONS)}"
        )
    lengths = {name: len(v) for name, v in rankings.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every domain must rank the same layers; got lengths {lengths}")
    corr = RANK_CORRELATIONS[method]
    return {
        (a, b): corr(rankings[a], rankings[b])
        for a, b in itertools.combinations(sorted(rankings), 2)
    }


# ----------------------------------------------------------------------------- probe validation (issue 25)


def top_k(values: Sequence[float], k: int) -> list[int]:
    """Positions of the ``k`` largest values, best first; ties go to the lower position (the lower layer)."""
    a = np.asarray(values, dtype=np.float64)
    order = np.lexsort((np.arange(len(a)), -a))  # by value descending, then position ascending
    return [int(i) for i in order[:k]]


def top_k_overlap(x: Sequence[float], y: Sequence[float], k: int) -> float | None:
    """``|top_k(x) & top_k(y)| / k``: how many of the k best by ``y`` the k best by ``x`` find.

    None when ``k`` is not below the number of values (every value is in both sets: the overlap says
    nothing). A ranking drawn at random finds ``k / n`` of them on average.
    """
    a, b = _paired(x, y)
    if not 1 <= k < len(a):
        return None
    return len(set(top_k(a, k)) & set(top_k(b, k))) / k


@dataclass(frozen=True)
class RankAgreement:
    """How well a probe's per-layer scores rank layers as their measured contributions do."""

    n_layers: int
    """Layers compared (those with a probe score and a measured single-layer run)."""
    n_seeds: int
    """Seeds paired across the base, full and every compared layer's runs."""
    contribution: tuple[float, ...] | None
    """``C_l`` of each compared layer (ratio of seed means); None when the full gain is too small."""
    spearman: float | None
    spearman_ci: tuple[float, float] | None
    """Percentile bootstrap CI over seeds; None with one seed or when too many resamples are undefined."""
    kendall: float | None
    kendall_ci: tuple[float, float] | None
    spearman_p: float | None
    """One-sided permutation p-value of the Spearman correlation: the fraction of random layer orders that
    correlate at least as well (how likely a ranking drawn by chance does as well)."""
    top_k_overlap: dict
    """``{k: |top_k(probe) & top_k(C)| / k}`` (None when k is not below ``n_layers``)."""
    top_k_chance: dict
    """``{k: k / n_layers}``: the overlap a random ranking has on average (None when k is not below ``n_layers``)."""
    reason: str = ""
    """Why a number or a CI is missing; empty when all are present."""
    dropped_fraction: float = 0.0
    """Fraction of bootstrap resamples dropped (full gain below ``min_gain``, or a constant resampled ranking)."""


def _permutation_p(probe: np.ndarray, target: np.ndarray, observed: float, n_perm: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        r = spearman(rng.permutation(probe), target)
        hits += int(np.isfinite(r) and r >= observed - 1e-12)
    return (hits + 1) / (n_perm + 1)


def rank_agreement_over_seeds(
    probe: Sequence[float],
    s_layer: Sequence[Sequence[float]],
    s_base: Sequence[float],
    s_full: Sequence[float],
    *,
    ks: Sequence[int] = (3, 5),
    n_boot: int = 10000,
    ci: float = 0.95,
    seed: int = 0,
    n_perm: int = 10000,
    min_gain: float = MIN_GAIN,
    max_dropped: float = MAX_DROPPED_FRACTION,
) -> RankAgreement:
    """Spearman and Kendall between a probe's layer scores and the measured contributions, with seed CIs.

    ``probe[l]`` is the probe's score of layer l (higher = more useful to train); ``s_layer[l][i]``,
    ``s_base[i]`` and ``s_full[i]`` are the scores of seed i (paired by index). The measured ranking is
    ``C_l = (mean S_l - mean S_base) / (mean S_full - mean S_base)`` over seeds (as ``contribution_over_seeds``).

    CI: ``n_boot`` resamples of the seed indices with replacement (the same for every layer, base and full),
    ``C_l`` recomputed on each, then both correlations with the (fixed) probe scores; the ``(1-ci)/2`` and
    ``(1+ci)/2`` quantiles. A resample whose full gain falls below ``min_gain`` in the observed direction, or
    whose ``C_l`` are all equal (no ranking to correlate), is dropped; more than ``max_dropped`` dropped: no CI.
    The CI covers the noise of the measured ranking across seeds (the probe's scores are held fixed), and with
    2-4 seeds it is too narrow (see ``contribution_over_seeds``). One seed: no CI. Deterministic given ``seed``.
    """
    _check_bootstrap_args(n_boot, ci)
    p = _as_scores(probe, "probe")
    layer = np.asarray(s_layer, dtype=np.float64)
    base, full = _as_scores(s_base, "s_base"), _as_scores(s_full, "s_full")
    if layer.ndim != 2 or layer.shape != (len(p), len(base)) or len(full) != len(base):
        raise ValueError(f"s_layer must be (layers, seeds) = ({len(p)}, {len(base)}) paired with {len(base)} base and "
                         f"full scores; got {layer.shape} and {len(full)} full scores")
    if not np.all(np.isfinite(layer)):
        raise ValueError("s_layer contains NaN or inf")
    n_layers, n = layer.shape
    chance = {int(k): k / n_layers if k < n_layers else None for k in ks}
    gain_full = full.mean() - base.mean()
    if n_layers < 3:
        return RankAgreement(n_layers, n, None, None, None, None, None, None, dict.fromkeys(map(int, ks)), chance,
                             reason=f"{n_layers} layer(s) compared: a rank correlation needs at least 3")
    if abs(gain_full) < min_gain:
        return RankAgreement(n_layers, n, None, None, None, None, None, None, dict.fromkeys(map(int, ks)), chance,
                             reason=f"full-parameter gain too small to divide by: mean(S_full) - mean(S_base) = "
                                    f"{gain_full:.4g}, |gain| < min_gain = {min_gain:g}")
    c = (layer.mean(axis=1) - base.mean()) / gain_full
    rho, tau = spearman(p, c), kendall_tau(p, c)
    overlap = {int(k): top_k_overlap(p, c, int(k)) for k in ks}
    reasons = []
    if not np.isfinite(rho):
        reasons.append("the probe's scores or the contributions are all equal: no ranking to correlate")
        rho = tau = None
    p_value = _permutation_p(p, c, rho, n_perm, seed) if rho is not None and n_perm > 0 else None
    s_ci = k_ci = None
    dropped = 0.0
    if n == 1:
        reasons.append("one seed: no confidence interval")
    elif rho is not None:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        gain_layer_b = layer[:, idx].mean(axis=2) - base[idx].mean(axis=1)  # (layers, n_boot)
        gain_full_b = full[idx].mean(axis=1) - base[idx].mean(axis=1)
        keep = np.sign(gain_full) * gain_full_b >= min_gain
        rhos, taus = [], []
        for b in np.flatnonzero(keep):
            cb = gain_layer_b[:, b] / gain_full_b[b]
            r = spearman(p, cb)
            if np.isfinite(r):
                rhos.append(r)
                taus.append(kendall_tau(p, cb))
        dropped = 1.0 - len(rhos) / n_boot
        if dropped > max_dropped:
            reasons.append(f"no CI: {dropped:.1%} of bootstrap resamples (limit {max_dropped:.0%}) had too small a "
                           "full-parameter gain or all-equal contributions")
        else:
            qs = [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0]
            s_ci = tuple(float(v) for v in np.quantile(rhos, qs))
            k_ci = tuple(float(v) for v in np.quantile(taus, qs))
    return RankAgreement(n_layers, n, tuple(float(v) for v in c), None if rho is None else float(rho), s_ci,
                         None if tau is None else float(tau), k_ci, p_value, overlap, chance,
                         reason="; ".join(reasons), dropped_fraction=float(dropped))


# ----------------------------------------------------------------------------- three-domain layer map (issue 24)


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df >= 1`` degrees of freedom (numpy only).

    With ``t = sqrt(df) tan(phi)`` the density becomes ``c cos(phi)^(df-1)`` on ``(-pi/2, pi/2)``, with
    ``c = Gamma((df+1)/2) / (sqrt(pi) Gamma(df/2))``, a bounded smooth integrand for ``df >= 1``: the CDF is
    ``1/2 + c * integral_0^phi cos^(df-1)`` (Simpson, 2000 intervals), inverted by bisection on ``phi``.
    Within 1e-9 of scipy's ``stats.t.ppf`` (``t_quantile(0.975, 2) = 4.3027``).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1) (got {p})")
    if df < 1:
        raise ValueError(f"df must be >= 1 (got {df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)
    weights = np.ones(2001)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0

    def upper_half(phi: float) -> float:  # P(0 < T < sqrt(df) tan(phi))
        grid = np.linspace(0.0, phi, 2001)
        return c * float(np.sum(weights * np.cos(grid) ** (df - 1))) * phi / 6000.0

    lo, hi = 0.0, math.pi / 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 + upper_half(mid) < p else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def mean_t_ci(values: Sequence[float], ci: float = 0.95) -> tuple[float, float | None, float | None]:
    """``(mean, low, high)``: ``mean -/+ t_{(1+ci)/2, n-1} * sd / sqrt(n)`` (sd with ``n - 1``).

    The t interval suits a handful of paired seed differences better than a percentile bootstrap, which
    is too narrow with 2-4 values (it never reaches beyond the observed range). One value: no interval
    (``low`` and ``high`` None).
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95 (got {ci})")
    x = _as_scores(values, "values")
    if len(x) == 1:
        return float(x[0]), None, None
    half = t_quantile((1.0 + ci) / 2.0, len(x) - 1) * float(np.std(x, ddof=1)) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def _rowwise_spearman_kendall(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman's rho and Kendall's tau-b of each row pair of ``x`` and ``y`` (``(resamples, layers)``), as
    :func:`spearman` and :func:`kendall_tau` compute them one pair at a time (nan for a constant row)."""

    def ranks(a):  # average ranks: 1 + #smaller + (#equal - 1) / 2
        smaller = (a[:, None, :] < a[:, :, None]).sum(axis=2)
        equal = (a[:, None, :] == a[:, :, None]).sum(axis=2)
        return 1.0 + smaller + (equal - 1) / 2.0

    rx, ry = ranks(x), ranks(y)
    dx, dy = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(dx * dx, axis=1) * np.sum(dy * dy, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denom > 0, np.sum(dx * dy, axis=1) / denom, np.nan)
    iu = np.triu_indices(x.shape[1], k=1)
    sx = np.sign(x[:, :, None] - x[:, None, :])[:, iu[0], iu[1]]
    sy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
    untied = np.sum(sx != 0, axis=1) * np.sum(sy != 0, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(untied > 0, np.sum(sx * sy, axis=1) / np.sqrt(untied.astype(np.float64)), np.nan)
    return np.clip(rho, -1.0, 1.0), np.clip(tau, -1.0, 1.0)


@dataclass(frozen=True)
class CrossRankCorrelation:
    """How alike two domains rank the same layers by contribution, with CIs over each domain's seeds."""

    n_layers: int
    """Layers compared (swept in both domains)."""
    n_seeds: tuple[int, int]
    """Seeds of each domain (those with base, full and every compared layer)."""
    contribution: tuple[tuple[float, ...], tuple[float, ...]] | None
    """Each domain's ``C_l`` (ratio of seed means) of the compared layers; None when a full gain is too small."""
    spearman: float | None
    spearman_ci: tuple[float, float] | None
    """Percentile bootstrap CI over seeds; None with one seed in a domain or too many undefined resamples."""
    kendall: float | None
    kendall_ci: tuple[float, float] | None
    n_boot: int
    reason: str = ""
    """Why a number or a CI is missing; empty when all are present."""
    dropped_fraction: float = 0.0
    """Fraction of bootstrap resamples dropped (a full gain below ``min_gain``, or a constant ranking)."""


def cross_rank_correlation_over_seeds(
    a_layer: Sequence[Sequence[float]],
    a_base: Sequence[float],
    a_full: Sequence[float],
    b_layer: Sequence[Sequence[float]],
    b_base: Sequence[float],
    b_full: Sequence[float],
    *,
    n_boot: int = 10000,
    ci: float = 0.95,
    seed: int = 0,
    min_gain: float = MIN_GAIN,
    max_dropped: float = MAX_DROPPED_FRACTION,
) -> CrossRankCorrelation:
    """Spearman and Kendall (tau-b) between two domains' contributions of the same layers, with seed CIs.

    ``a_layer[l][i]``, ``a_base[i]``, ``a_full[i]``: domain A's scores of layer l, the base model and full RL on
    its seed i (paired by index); the same for B, whose seeds need not be A's (the domains are trained apart).
    Each domain's ``C_l = (mean S_l - mean S_base) / (mean S_full - mean S_base)`` over its seeds (as
    ``contribution_over_seeds``); the correlations compare the two rankings.

    CI: ``n_boot`` resamples in which each domain's seeds are drawn with replacement, independently of the
    other domain's (the same draw for all of one domain's layers, base and full), both domains' ``C_l``
    recomputed, then both correlations; the ``(1-ci)/2`` and ``(1+ci)/2`` quantiles. A resample whose full
    gain in either domain falls below ``min_gain`` in the observed direction, or whose ``C_l`` are all equal
    in a domain, is dropped; more than ``max_dropped`` dropped: no CI. A domain with one seed: no CI (with
    2-4 seeds the percentile CI is too narrow; see ``contribution_over_seeds``). Deterministic given ``seed``.
    """
    _check_bootstrap_args(n_boot, ci)
    mats = []
    for name, layer, base, full in (("a", a_layer, a_base, a_full), ("b", b_layer, b_base, b_full)):
        lay = np.asarray(layer, dtype=np.float64)
        bas, ful = _as_scores(base, f"{name}_base"), _as_scores(full, f"{name}_full")
        if lay.ndim != 2 or lay.shape[1] != len(bas) or len(ful) != len(bas) or not np.all(np.isfinite(lay)):
            raise ValueError(f"{name}_layer must be finite (layers, seeds) scores paired with {len(bas)} base and "
                             f"{len(ful)} full scores; got shape {lay.shape}")
        mats.append((lay, bas, ful))
    (la, ba, fa), (lb, bb, fb) = mats
    if la.shape[0] != lb.shape[0]:
        raise ValueError(f"both domains must score the same layers: got {la.shape[0]} and {lb.shape[0]}")
    n_layers, seeds = la.shape[0], (la.shape[1], lb.shape[1])
    none = CrossRankCorrelation(n_layers, seeds, None, None, None, None, None, n_boot)
    if n_layers < 3:
        return dataclasses.replace(none, reason=f"{n_layers} layer(s) compared: a rank correlation needs at least 3")
    gains = (fa.mean() - ba.mean(), fb.mean() - bb.mean())
    if min(abs(g) for g in gains) < min_gain:
        return dataclasses.replace(none, reason=(
            f"full-parameter gain too small to divide by (mean(S_full) - mean(S_base) = {gains[0]:.4g} and "
            f"{gains[1]:.4g}; |gain| < min_gain = {min_gain:g} in at least one domain)"))
    ca, cb = (la.mean(axis=1) - ba.mean()) / gains[0], (lb.mean(axis=1) - bb.mean()) / gains[1]
    rho, tau = spearman(ca, cb), kendall_tau(ca, cb)
    contribution = (tuple(float(v) for v in ca), tuple(float(v) for v in cb))
    if not np.isfinite(rho):
        return dataclasses.replace(none, contribution=contribution,
                                   reason="a domain's contributions are all equal: no ranking to correlate")
    out = dataclasses.replace(none, contribution=contribution, spearman=float(rho), kendall=float(tau))
    if min(seeds) == 1:
        return dataclasses.replace(out, reason="one seed in a domain: no confidence interval")
    rng = np.random.default_rng(seed)
    resampled = []
    for (lay, bas, ful), gain in zip(mats, gains):  # each domain's seeds drawn on their own
        idx = rng.integers(0, lay.shape[1], size=(n_boot, lay.shape[1]))
        gain_b = ful[idx].mean(axis=1) - bas[idx].mean(axis=1)
        keep = np.sign(gain) * gain_b >= min_gain
        c = (lay[:, idx].mean(axis=2) - bas[idx].mean(axis=1)).T / np.where(keep, gain_b, 1.0)[:, None]
        resampled.append((c, keep))
    (cab, keep_a), (cbb, keep_b) = resampled
    keep = keep_a & keep_b
    rhos, taus = [], []
    for start in range(0, n_boot, 1000):  # chunks keep the (chunk, layers, layers) sign arrays small
        r, t = _rowwise_spearman_kendall(cab[start:start + 1000], cbb[start:start + 1000])
        ok = keep[start:start + 1000] & np.isfinite(r)
        rhos.append(r[ok])
        taus.append(t[ok])
    rhos, taus = np.concatenate(rhos), np.concatenate(taus)
    dropped = 1.0 - len(rhos) / n_boot
    if dropped > max_dropped:
        return dataclasses.replace(out, dropped_fraction=float(dropped), reason=(
            f"no CI: {dropped:.1%} of bootstrap resamples (limit {max_dropped:.0%}) had too small a full-parameter "
            "gain or all-equal contributions"))
    qs = [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0]
    return dataclasses.replace(out, dropped_fraction=float(dropped),
                               spearman_ci=tuple(float(v) for v in np.quantile(rhos, qs)),
                               kendall_ci=tuple(float(v) for v in np.quantile(taus, qs)))
