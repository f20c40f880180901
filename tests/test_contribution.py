"""Layer contribution, its bootstrap CI over seeds, and rank correlations match hand-computed values and scipy."""

import math

import numpy as np
import pytest

from onelayer.benchmarks.contribution import (
    MIN_GAIN,
    average_ranks,
    bootstrap_mean_ci,
    contribution_over_seeds,
    kendall_tau,
    layer_contribution,
    paired_permutation_test,
    pearson,
    rank_correlation_matrix,
    spearman,
)

# MISSION.md, Qwen3-1.7B (Table 13): base 44.1, full 50.8 (percent).
BASE, FULL = 44.1, 50.8


# ---------------------------------------------------------------- layer_contribution


def test_contribution_matches_the_papers_qwen3_example_in_percent():
    # (51.74 - 44.1) / (50.8 - 44.1) = 7.64 / 6.7 = 1.1403 (the paper's layer 10: C = 1.14)
    assert layer_contribution(51.74, BASE, FULL, min_gain=1.0) == pytest.approx(7.64 / 6.7)
    assert layer_contribution(51.74, BASE, FULL, min_gain=1.0) == pytest.approx(1.14, abs=0.005)


def test_contribution_on_a_0_1_scale_with_the_default_min_gain():
    assert MIN_GAIN == 0.01
    assert layer_contribution(0.5174, 0.441, 0.508) == pytest.approx(1.1403, abs=1e-4)
    assert layer_contribution(0.508, 0.441, 0.508) == pytest.approx(1.0)


def test_layer_at_base_gives_zero_and_below_base_gives_negative():
    assert layer_contribution(BASE, BASE, FULL, min_gain=1.0) == 0.0
    # (40.68 - 44.1) / 6.7 = -0.51, the paper's worst case (Qwen3-8B layer 0)
    assert layer_contribution(40.683, BASE, FULL, min_gain=1.0) == pytest.approx(-0.51, abs=1e-3)


def test_contribution_is_none_when_the_full_gain_is_too_small():
    assert layer_contribution(0.60, 0.500, 0.505) is None  # gain 0.005 < 0.01
    assert layer_contribution(0.60, 0.500, 0.495) is None  # |-0.005| < 0.01
    assert layer_contribution(0.60, 0.5, 0.5) is None  # exactly zero: no ZeroDivisionError
    assert layer_contribution(44.5, BASE, 44.6, min_gain=1.0) is None
    # just above the threshold it is a number again
    assert layer_contribution(0.52, 0.50, 0.52) == pytest.approx(1.0)


def test_negative_full_gain_still_gives_a_ratio():
    # full training hurt by 0.1; a layer that hurt by 0.05 has C = 0.5
    assert layer_contribution(0.45, 0.5, 0.4) == pytest.approx(0.5)


def test_non_positive_min_gain_is_an_error():
    with pytest.raises(ValueError, match="min_gain"):
        layer_contribution(0.6, 0.5, 0.7, min_gain=0.0)


# ---------------------------------------------------------------- contribution_over_seeds


def test_point_estimate_is_the_ratio_of_seed_means_not_the_mean_of_ratios():
    layer = [0.60, 0.56, 0.58]
    base = [0.50, 0.50, 0.50]
    full = [0.68, 0.52, 0.60]
    est = contribution_over_seeds(layer, base, full, n_boot=2000)
    # means: layer 0.58, base 0.50, full 0.60 -> 0.08 / 0.10 = 0.8
    assert est.defined
    assert est.mean == pytest.approx(0.8)
    # per seed: 0.1/0.18 = 0.556, 0.06/0.02 = 3.0, 0.08/0.1 = 0.8 (mean of these would be 1.45)
    assert est.per_seed == pytest.approx((0.1 / 0.18, 3.0, 0.8))
    assert est.n_seeds == 3


def test_per_seed_value_is_none_where_that_seeds_full_gain_is_tiny():
    est = contribution_over_seeds([0.6, 0.6], [0.5, 0.5], [0.7, 0.505], n_boot=500, max_dropped=1.0)
    assert est.per_seed[0] == pytest.approx(0.5)
    assert est.per_seed[1] is None


def _noisy_seeds(n: int, sd: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base 0.40, full 0.60, layer 0.55 (true C = 0.75), each seed with Gaussian noise of sd ``sd``."""
    rng = np.random.default_rng(seed)
    base = 0.40 + rng.normal(0, sd, n)
    full = 0.60 + rng.normal(0, sd, n)
    layer = 0.55 + rng.normal(0, sd, n)
    return layer, base, full


def test_bootstrap_ci_contains_the_point_estimate():
    layer, base, full = _noisy_seeds(5, 0.02, seed=1)
    est = contribution_over_seeds(layer, base, full)
    assert est.defined and est.reason == ""
    assert est.ci_low < est.mean < est.ci_high
    assert est.ci_level == 0.95
    assert est.dropped_fraction == 0.0


def test_bootstrap_ci_shrinks_with_more_seeds_of_low_variance():
    few = contribution_over_seeds(*_noisy_seeds(3, 0.02, seed=2))
    many = contribution_over_seeds(*_noisy_seeds(30, 0.02, seed=2))
    quiet = contribution_over_seeds(*_noisy_seeds(30, 0.002, seed=2))
    width = lambda e: e.ci_high - e.ci_low  # noqa: E731
    assert width(many) < width(few)
    assert width(quiet) < width(many) / 5
    assert quiet.ci_low < 0.75 < quiet.ci_high
    assert quiet.mean == pytest.approx(0.75, abs=0.01)


def test_bootstrap_resamples_seeds_paired_so_shared_seed_shifts_cancel():
    # each seed shifts base, full and layer alike (e.g. a different eval sample); within every seed
    # C = 0.075 / 0.1 = 0.75, so every paired resample gives 0.75 and the CI has zero width
    base = np.array([0.30, 0.50, 0.40, 0.60, 0.35])
    est = contribution_over_seeds(base + 0.075, base, base + 0.1)
    assert est.mean == pytest.approx(0.75)
    assert est.ci_low == pytest.approx(0.75) and est.ci_high == pytest.approx(0.75)


def test_wider_ci_level_gives_a_wider_interval():
    data = _noisy_seeds(8, 0.02, seed=3)
    e90 = contribution_over_seeds(*data, ci=0.90)
    e99 = contribution_over_seeds(*data, ci=0.99)
    assert e99.ci_low < e90.ci_low and e90.ci_high < e99.ci_high


def test_bootstrap_is_deterministic_under_the_seed():
    data = _noisy_seeds(6, 0.03, seed=4)
    a = contribution_over_seeds(*data, seed=7)
    b = contribution_over_seeds(*data, seed=7)
    c = contribution_over_seeds(*data, seed=8)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.mean == c.mean  # the point estimate does not depend on the bootstrap seed


def test_estimate_is_undefined_when_the_mean_full_gain_is_about_zero():
    est = contribution_over_seeds([0.55, 0.57, 0.56], [0.50, 0.50, 0.50], [0.503, 0.499, 0.501])
    assert not est.defined
    assert est.mean is None and est.ci_low is None and est.ci_high is None
    assert "full-parameter gain too small" in est.reason


def test_estimate_is_undefined_when_many_bootstrap_resamples_lose_the_full_gain():
    # mean full gain 0.02 passes min_gain, but seeds disagree (+0.12, -0.08): many resamples fall below it
    est = contribution_over_seeds([0.55, 0.55], [0.5, 0.5], [0.62, 0.42])
    assert not est.defined
    assert est.mean is None
    assert est.dropped_fraction > 0.05
    assert "full-parameter gain too small" in est.reason
    assert "bootstrap" in est.reason


def test_one_seed_gives_the_point_and_no_ci():
    est = contribution_over_seeds([0.5174], [0.441], [0.508])
    assert est.defined
    assert est.mean == pytest.approx(1.1403, abs=1e-4)
    assert est.ci_low is None and est.ci_high is None
    assert "one seed" in est.reason


def test_unpaired_or_non_finite_scores_are_errors():
    with pytest.raises(ValueError, match="paired by seed"):
        contribution_over_seeds([0.5, 0.6], [0.4], [0.7, 0.7])
    with pytest.raises(ValueError, match="NaN"):
        contribution_over_seeds([0.5, float("nan")], [0.4, 0.4], [0.7, 0.7])
    with pytest.raises(ValueError, match="ci"):
        contribution_over_seeds([0.5], [0.4], [0.7], ci=95)


# ---------------------------------------------------------------- bootstrap_mean_ci


def test_bootstrap_mean_ci_brackets_the_mean_and_is_deterministic():
    values = [0.30, 0.35, 0.40, 0.38, 0.33]
    mean, low, high = bootstrap_mean_ci(values)
    assert mean == pytest.approx(0.352)
    assert 0.30 <= low < mean < high <= 0.40
    assert bootstrap_mean_ci(values, seed=3) == bootstrap_mean_ci(values, seed=3)


def test_bootstrap_mean_ci_matches_the_normal_interval_for_many_values():
    x = np.random.default_rng(0).normal(1.0, 2.0, 400)
    mean, low, high = bootstrap_mean_ci(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))  # about 0.2
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(mean, abs=0.03)


def test_bootstrap_mean_ci_of_one_value_has_no_interval():
    mean, low, high = bootstrap_mean_ci([0.42])
    assert mean == 0.42 and math.isnan(low) and math.isnan(high)


# ---------------------------------------------------------------- paired_permutation_test


def test_paired_permutation_test_by_hand():
    # 5 differences of +1: only the all-plus and all-minus sign assignments are as extreme, 2 of 32
    assert paired_permutation_test([1] * 5, [0] * 5) == 2 / 32
    # zeros drop out: +1, +1, -1 -> |sum| = 1; assignments with |sum| >= 1 are all 8
    assert paired_permutation_test([1, 1, 0, 0.5], [0, 0, 1, 0.5]) == 1.0
    assert paired_permutation_test([0.25] * 30, [0.25] * 30) == 1.0
    # +0.5, +0.25, +0.25: |sum| >= 1 only for all-plus / all-minus; float ties (0.1 + 0.2) still count
    assert paired_permutation_test([0.75, 0.5, 0.5], [0.25, 0.25, 0.25]) == 2 / 8
    assert paired_permutation_test([0.1, 0.2], [0.0, 0.0]) == 2 / 4


def test_paired_permutation_test_matches_scipy_exact_and_resampled():
    from scipy import stats

    rng = np.random.default_rng(1)
    x = rng.random(12)
    y = x - 0.1 + 0.15 * rng.random(12)
    exact = stats.permutation_test((x - y,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    assert paired_permutation_test(x, y) == pytest.approx(exact, abs=1e-12)
    x, y = rng.random(25), rng.random(25) + 0.15  # 25 differences: resampled, seeded
    ref = stats.permutation_test((x - y,), np.mean, permutation_type="samples", n_resamples=100000,
                                 random_state=0).pvalue
    p = paired_permutation_test(x, y)
    assert p == paired_permutation_test(x, y) and p == pytest.approx(ref, abs=0.005)
    assert 0 < paired_permutation_test([1.0] * 40, [0.0] * 40) <= 1 / 100001 + 1e-12


def test_paired_permutation_test_refuses_bad_input():
    with pytest.raises(ValueError, match="same length"):
        paired_permutation_test([1, 2], [1])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_permutation_test([1], [0], n_resamples=0)


# ---------------------------------------------------------------- rank correlations


def test_average_ranks_share_ties():
    assert average_ranks([5, 7, 7, 1]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([2, 2, 2]).tolist() == [2.0, 2.0, 2.0]


def test_perfect_and_reversed_rankings():
    x = [0.89, 0.87, 1.03, 0.75, 0.77]
    assert spearman(x, x) == pytest.approx(1.0)
    assert kendall_tau(x, x) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert kendall_tau(x, [-v for v in x]) == pytest.approx(-1.0)
    # monotone but non-linear: ranks agree exactly, Pearson does not
    assert spearman([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 8, 27, 1000]) < 0.9


def test_small_hand_computed_examples():
    # ranks x = 1..4, y = 1,3,2,4: d = (0, -1, 1, 0), rho = 1 - 6*2 / (4*15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # 6 pairs, one discordant (2,3): tau = (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tie in y: x = 1,2,3; y = 1,1,2. pairs: (1,2) tied in y, (1,3) c, (2,3) c
    # tau_b = 2 / sqrt(3 * 2)
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / math.sqrt(6))


def test_constant_ranking_gives_nan():
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5]))
    assert math.isnan(pearson([4, 4, 4], [1, 2, 3]))
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_mismatched_or_undefined_rankings_are_errors():
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="undefined"):
        kendall_tau([1, 2, float("nan")], [1, 2, 3])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [5, 28, 36])
def test_spearman_and_kendall_match_scipy(n, ties):
    from scipy import stats

    rng = np.random.default_rng(n + 100 * ties)
    for _ in range(20):
        if ties:
            x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, n).astype(float)
        else:
            x = rng.normal(size=n)
            y = 0.5 * x + rng.normal(size=n)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall_tau(x, y) == pytest.approx(
            stats.kendalltau(x, y, variant="b").statistic, abs=1e-12
        )


def test_spearman_of_the_papers_layer_contributions_against_scipy():
    from scipy import stats

    c = [.89, .87, 1.03, .75, .77, .78, .87, .80, .72, 1.04, 1.14, .92, 1.12, 1.01,
         .92, .95, .85, .83, .66, .52, .32, .40, .47, .32, .28, .35, .36, .54]  # fmt: skip
    depth = list(range(28))
    # deeper layers contribute less in this table: clearly negative, with ties (.87, .92, .32)
    assert spearman(depth, c) == pytest.approx(stats.spearmanr(depth, c).statistic, abs=1e-12)
    assert kendall_tau(depth, c) == pytest.approx(stats.kendalltau(depth, c).statistic, abs=1e-12)
    assert spearman(depth, c) == pytest.approx(-0.634, abs=1e-3)


def test_rank_correlation_matrix_covers_every_pair_with_sorted_keys():
    rankings = {
        "math": [0.9, 1.1, 0.7, 0.3],
        "code": [0.8, 1.0, 0.6, 0.4],  # same order as math
        "alfworld": [0.7, 0.3, 0.9, 1.1],  # math's order reversed
    }
    rho = rank_correlation_matrix(rankings)
    assert set(rho) == {("alfworld", "code"), ("alfworld", "math"), ("code", "math")}
    assert rho[("code", "math")] == pytest.approx(1.0)
    assert rho[("alfworld", "math")] == pytest.approx(-1.0)
    assert rho[("alfworld", "code")] == pytest.approx(-1.0)
    tau = rank_correlation_matrix({"b": [1, 2, 3, 4], "a": [1, 3, 2, 4]}, method="kendall")
    assert tau == {("a", "b"): pytest.approx(4 / 6)}


def test_rank_correlation_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="same layers"):
        rank_correlation_matrix({"math": [1, 2, 3], "code": [1, 2]})
    with pytest.raises(ValueError, match="spearman"):
        rank_correlation_matrix({"math": [1, 2], "code": [2, 1]}, method="pearson")


# ---------------------------------------------------------------- pearson


def test_pearson_matches_numpy_corrcoef():
    rng = np.random.default_rng(5)
    for _ in range(10):
        norm = rng.uniform(0.5, 1.5, 28)  # e.g. each layer's weight-change norm
        contribution = rng.normal(0.8, 0.2, 28) + 0.3 * norm
        assert pearson(norm, contribution) == pytest.approx(
            np.corrcoef(norm, contribution)[0, 1], abs=1e-12
        )
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
