"""The sweep report on a hand-built results store: numbers match hand computation and scipy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from onelayer.benchmarks.contribution import (
    cross_rank_correlation_over_seeds,
    kendall_tau,
    mean_t_ci,
    spearman,
    t_quantile,
)
from onelayer.benchmarks.report import build_rows, write_report
from onelayer.benchmarks.sweep_results import JobResult, append_result, layer_ranking, load_results
from onelayer.errors import UserError

BASE = {"math": 0.30, "code": 0.10}
# full-parameter and per-layer scores per seed (3 seeds), chosen so C is easy to compute by hand
FULL = {"math": [0.50, 0.52, 0.48], "code": [0.20, 0.22, 0.18]}
LAYER = {
    "math": {0: [0.32, 0.34, 0.30], 2: [0.50, 0.56, 0.47], 3: [0.40, 0.40, 0.40], 5: [0.31, 0.30, 0.32]},
    "code": {0: [0.11, 0.12, 0.10], 2: [0.19, 0.21, 0.17], 3: [0.16, 0.15, 0.14], 5: [0.10, 0.10, 0.11]},
}
CHANGE = {"0": 1.0, "2": 3.0, "3": 2.0, "5": 0.5}


def _store(tmp_path, domains=("math", "code")):
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps({
        "spec": {"model": "tiny", "algos": ["grpo"], "domains": list(domains), "steps": 5, "single_layer_lr_scale": 1.0},
        "all": {"seeds": [0, 1, 2]}, "num_layers": 6,
        "eval_suites": {"math": ["math-l1", "humaneval"], "code": ["humaneval", "math-l1"]}}))
    other = {"math": "humaneval", "code": "math-l1"}
    for dom in domains:
        own = "math-l1" if dom == "math" else "humaneval"
        append_result(d, JobResult(f"{dom}/base", dom, -1, "base", "none", None, "none", BASE[dom],
                                   {own: BASE[dom], other[dom]: 0.2}))
        for s in range(3):
            append_result(d, JobResult(f"{dom}/grpo/s{s}/full", dom, s, "full", "all", None, "grpo", FULL[dom][s],
                                       {own: FULL[dom][s], other[dom]: 0.3}, weight_change=CHANGE))
            for layer, vals in LAYER[dom].items():
                append_result(d, JobResult(f"{dom}/grpo/s{s}/layer-{layer}", dom, s, "layer", str(layer), layer, "grpo",
                                           vals[s], {own: vals[s], other[dom]: 0.25}))
    return d


def _c(dom, layer):
    return (np.mean(LAYER[dom][layer]) - BASE[dom]) / (np.mean(FULL[dom]) - BASE[dom])


def test_contribution_rows_match_hand_computation(tmp_path):
    rows = build_rows(load_results(_store(tmp_path)))
    for dom in ("math", "code"):
        for layer in LAYER[dom]:
            (r,) = [r for r in rows if r.domain == dom and r.suite == "in-domain" and r.target == str(layer)]
            assert r.contribution == pytest.approx(_c(dom, layer))
            assert r.ci_low <= r.contribution <= r.ci_high
            assert r.n_seeds == 3
            assert r.score_mean == pytest.approx(np.mean(LAYER[dom][layer]))
            assert r.weight_change == CHANGE[str(layer)]


def test_transfer_suite_and_c_all_use_the_other_suites_scores(tmp_path):
    rows = build_rows(load_results(_store(tmp_path)))
    (r,) = [r for r in rows if r.domain == "math" and r.suite == "humaneval" and r.target == "2"]
    assert r.contribution == pytest.approx((0.25 - 0.2) / (0.3 - 0.2))
    (r,) = [r for r in rows if r.domain == "math" and r.suite == "all" and r.target == "2"]
    s_l = (np.mean(LAYER["math"][2]) + 0.25) / 2
    s_b = (BASE["math"] + 0.2) / 2
    s_f = (np.mean(FULL["math"]) + 0.3) / 2
    assert r.contribution == pytest.approx((s_l - s_b) / (s_f - s_b))


def _one_seed(d, domain: str, suite: str, base: float, full: float, layer1: float):
    """A one-seed store: base, full and layer 1 of a 4-layer model, scored on ``suite``."""
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps({"spec": {"algos": ["grpo"]}, "num_layers": 4}))
    append_result(d, JobResult(f"{domain}/base", domain, -1, "base", "none", None, "none", base, {suite: base}))
    append_result(d, JobResult(f"{domain}/grpo/s0/full", domain, 0, "full", "all", None, "grpo", full, {suite: full}))
    append_result(d, JobResult(f"{domain}/grpo/s0/layer-1", domain, 0, "layer", "1", 1, "grpo", layer1, {suite: layer1}))
    return d


def test_too_small_full_gain_is_flagged_not_divided(tmp_path):
    d = _one_seed(tmp_path / "flat", "math", "math-l1", 0.3, 0.305, 0.4)
    rows = build_rows(load_results(d))
    (r,) = [r for r in rows if r.suite == "in-domain" and r.target == "1"]
    assert r.contribution is None and "too small" in r.note
    write_report(d)
    assert "undefined (full gain too small)" in (d / "report" / "summary.txt").read_text()


def test_a_full_parameter_loss_is_named_under_the_table(tmp_path):
    """RL that lowered the score still divides (C_l compares losses), and the report says so."""
    d = _one_seed(tmp_path / "loss", "code", "humaneval", 0.12, 0.06, 0.09)
    (r,) = [r for r in build_rows(load_results(d)) if r.suite == "in-domain" and r.target == "1"]
    assert r.contribution == pytest.approx(0.5)
    write_report(d)
    assert "full-parameter RL lowered the score (-0.0600): C_l compares losses" in (d / "report" / "summary.txt").read_text()
    gained = _store(tmp_path)
    write_report(gained)
    assert "lowered the score" not in (gained / "report" / "summary.txt").read_text()


def test_report_files_and_correlations_match_scipy(tmp_path):
    d = _store(tmp_path)
    path = write_report(d)
    out = path.parent
    for f in ("report.md", "summary.txt", "numbers.json", "contributions.csv", "contribution_vs_depth.png",
              "heatmap.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    nums = json.loads((out / "numbers.json").read_text())
    layers = sorted(LAYER["math"])
    cm, cc = [_c("math", x) for x in layers], [_c("code", x) for x in layers]
    corr = nums["rank_correlations"]["code/grpo vs math/grpo"]
    assert corr["spearman"] == pytest.approx(stats.spearmanr(cc, cm).statistic)
    assert corr["kendall"] == pytest.approx(stats.kendalltau(cc, cm).statistic)
    wc = nums["weight_change_vs_contribution"]["math/grpo"]
    assert wc["pearson"] == pytest.approx(stats.pearsonr([CHANGE[str(x)] for x in layers], cm).statistic)
    groups = nums["depth_groups"]["math/grpo"]
    assert groups["groups"] == {"first": [0], "middle": [2, 3], "last": [5]}
    assert groups["seeds_compared"] == 3 and groups["middle_higher_in"] == 3
    md = path.read_text()
    assert "tiny" in md and "Spearman" in md and "math (grpo)" in md


def test_layer_ranking_for_top_k_selection(tmp_path):
    d = _store(tmp_path)
    ranking = layer_ranking(d, "math")
    assert ranking == pytest.approx({x: _c("math", x) for x in LAYER["math"]})
    with pytest.raises(UserError, match="no single-layer results for domain 'agentic'"):
        layer_ranking(d, "agentic")
    with pytest.raises(UserError, match="does not exist"):
        layer_ranking(tmp_path / "nope", "math")


SCALED = {0: [0.45, 0.47, 0.43], 2: [0.42, 0.44, 0.40], 3: [0.35, 0.36, 0.34], 5: [0.33, 0.31, 0.32]}  # math, x4


def test_lr_scales_are_compared_by_rank_and_leave_the_main_tables_alone(tmp_path):
    d = _store(tmp_path, domains=("math",))
    before = build_rows(load_results(d))
    for s in range(3):
        for layer, vals in SCALED.items():
            append_result(d, JobResult(f"math/grpo/s{s}/layer-{layer}-x4", "math", s, "layer", str(layer), layer,
                                       "grpo", vals[s], {"math-l1": vals[s], "humaneval": 0.25}, lr_scale=4.0))
    results = load_results(d)
    assert build_rows(results) == before  # x1 (the paper's rule) stays the main table
    assert layer_ranking(d, "math") == pytest.approx({x: _c("math", x) for x in LAYER["math"]})
    scaled = build_rows(results, lr_scale=4.0, in_domain_only=True)
    (r,) = [r for r in scaled if r.target == "0"]
    c4 = {x: (np.mean(v) - BASE["math"]) / (np.mean(FULL["math"]) - BASE["math"]) for x, v in SCALED.items()}
    assert r.contribution == pytest.approx(c4[0]) and r.lr_scale == 4.0 and {r.suite for r in scaled} == {"in-domain"}
    path = write_report(d)
    nums = json.loads((path.parent / "numbers.json").read_text())
    assert nums["lr_scales"]["scales"] == [1.0, 4.0]
    pair = nums["lr_scales"]["by_series"]["math/grpo"]["rank_correlations"]["x1 vs x4"]
    layers = sorted(LAYER["math"])
    c1 = [_c("math", x) for x in layers]
    assert pair["layers"] == layers
    assert pair["spearman"] == pytest.approx(stats.spearmanr(c1, [c4[x] for x in layers]).statistic)
    assert pair["kendall"] == pytest.approx(stats.kendalltau(c1, [c4[x] for x in layers]).statistic)
    assert pair["top_layer"] == {"1": 2, "4": 0}
    md, summary = path.read_text(), (path.parent / "summary.txt").read_text()
    assert "## Single-layer lr scale: does the ranking change?" in md and "| 0 | 0.10 [" in md
    assert "single-layer lr scale x1 vs x4: Spearman" in summary and "top layer different" in summary
    csv_rows = (path.parent / "contributions.csv").read_text().splitlines()
    assert sum(line.endswith(",4.0") for line in csv_rows) == len(SCALED)

    # a scale run on seed 0 only is compared with x1 on seed 0 alone (the same base and full on both sides)
    only0 = {0: 0.31, 2: 0.36, 3: 0.45, 5: 0.40}
    for layer, v in only0.items():
        append_result(d, JobResult(f"math/grpo/s0/layer-{layer}-x2", "math", 0, "layer", str(layer), layer, "grpo", v,
                                   {"math-l1": v}, lr_scale=2.0))
    write_report(d)
    nums = json.loads((path.parent / "numbers.json").read_text())["lr_scales"]["by_series"]["math/grpo"]
    pair = nums["rank_correlations"]["x1 vs x2"]
    gain0 = FULL["math"][0] - BASE["math"]
    x1 = [(LAYER["math"][k][0] - BASE["math"]) / gain0 for k in layers]
    x2 = [(only0[k] - BASE["math"]) / gain0 for k in layers]
    assert pair["seeds"] == [0] and pair["spearman"] == pytest.approx(stats.spearmanr(x1, x2).statistic)
    assert pair["contributions"]["1"]["2"] == pytest.approx(x1[1])
    assert nums["contributions"]["2"]["3"]["n_seeds"] == 1 and nums["contributions"]["1"]["3"]["n_seeds"] == 3
    assert "paired on seeds [0]" in (path.parent / "report.md").read_text()


def test_a_sweep_of_one_scale_says_how_to_compare_scales(tmp_path):
    path = write_report(_store(tmp_path, domains=("math",)))
    assert "rerun the sweep with another `--single-layer-lr-scale`" in path.read_text()


# ----------------------------------------------------------------------------- three domains (issue 24)
PLUGIN = "oneplug/Parity-v0"  # a plugin env id as a domain: a "/" in its name
OWN = {"math": "math-l1", "code": "humaneval", PLUGIN: "parity-eval"}
# C_l per domain on a 6-layer model (thirds: 0-1, 2-3, 4-5). Code ranks the layers exactly as math (its C is
# math's squared, a monotone map); the plugin ranks them in reverse (1 - math's). Math and code peak in the middle.
C_MATH = {0: 0.1, 1: 0.3, 2: 0.9, 3: 0.7, 4: 0.4, 5: 0.2}
C_DOM = {"math": C_MATH, "code": {k: v**2 for k, v in C_MATH.items()}, PLUGIN: {k: 1 - v for k, v in C_MATH.items()}}
BASE3 = 0.2
FULL3 = [0.60, 0.64, 0.56]  # per seed


def _noise(layer: int, seed: int) -> float:
    """A per-seed wobble of C_l smaller than any gap between two layers' C_l, so every seed ranks alike."""
    return 0.004 * ((layer + 2 * seed) % 3 - 1)


def _three_domain_store(tmp_path, domains=tuple(OWN), seeds=(0, 1, 2)):
    """Every domain's jobs scored on every domain's suite: own suite ``base + gain * (C_l + noise)``, another
    domain's suite base 0.1, full 0.3 and layer ``0.1 + 0.2 * C_l / 2`` (transfer C = C_l / 2 exactly)."""
    d = tmp_path / "three"
    d.mkdir()
    suites = [OWN[x] for x in domains]
    (d / "sweep.json").write_text(json.dumps({
        "spec": {"model": "tiny", "algos": ["grpo"], "domains": list(domains), "steps": 5},
        "all": {"seeds": list(seeds)}, "num_layers": 6,
        "eval_suites": {x: [OWN[x], *(s for s in suites if s != OWN[x])] for x in domains}}))

    def scores(dom, own_value, other_value):
        return {OWN[dom]: own_value, **{s: other_value for s in suites if s != OWN[dom]}}

    for dom in domains:
        append_result(d, JobResult(f"{dom}/base", dom, -1, "base", "none", None, "none", BASE3,
                                   scores(dom, BASE3, 0.1)))
        for s in seeds:
            append_result(d, JobResult(f"{dom}/grpo/s{s}/full", dom, s, "full", "all", None, "grpo", FULL3[s],
                                       scores(dom, FULL3[s], 0.3)))
            for layer, c in C_DOM[dom].items():
                v = BASE3 + (FULL3[s] - BASE3) * (c + _noise(layer, s))
                append_result(d, JobResult(f"{dom}/grpo/s{s}/layer-{layer}", dom, s, "layer", str(layer), layer,
                                           "grpo", v, scores(dom, v, 0.1 + 0.2 * c / 2)))
    return d


def _seed_c(dom: str, layer: int, seed: int) -> float:
    return C_DOM[dom][layer] + _noise(layer, seed)


def test_middle_vs_outer_thirds_has_a_paired_t_interval_over_seeds(tmp_path):
    path = write_report(_three_domain_store(tmp_path))
    depth = json.loads((path.parent / "numbers.json").read_text())["depth_groups"]
    for dom, higher in (("math", 3), (PLUGIN, 0)):
        g = depth[f"{dom}/grpo"]
        assert g["groups"] == {"first": [0, 1], "middle": [2, 3], "last": [4, 5]}  # the existing keys stay
        m = g["middle_minus_outer"]
        want = [np.mean([_seed_c(dom, x, s) for x in (2, 3)]) - np.mean([_seed_c(dom, x, s) for x in (0, 1, 4, 5)])
                for s in range(3)]
        assert m["per_seed"] == pytest.approx(want) and m["seeds"] == [0, 1, 2]
        assert g["middle_minus_ends_per_seed"] == pytest.approx(want)
        lo, hi = stats.t.interval(0.95, 2, loc=np.mean(want), scale=stats.sem(want))
        assert m["mean"] == pytest.approx(np.mean(want)) and m["ci"] == pytest.approx([lo, hi])
        assert m["middle_higher_in"] == higher and "t interval" in m["method"]
        assert m["bootstrap_ci"][0] >= min(want) - 1e-12 and m["bootstrap_ci"][1] <= max(want) + 1e-12
    assert depth["math/grpo"]["middle_minus_outer"]["ci"][0] > 0  # middle higher in every seed: CI above 0
    assert depth[f"{PLUGIN}/grpo"]["middle_minus_outer"]["ci"][1] < 0
    md = path.read_text()
    assert "## Middle third vs outer thirds" in md and "| math (grpo) | [2, 3] | [0, 1, 4, 5] |" in md
    assert "3 of 3 |" in md and "0 of 3 |" in md
    assert "middle third minus outer thirds, paired over seeds: mean +0.5" in (path.parent / "summary.txt").read_text()


def test_domains_that_rank_layers_alike_or_reversed_give_rank_correlations_of_plus_and_minus_one(tmp_path):
    path = write_report(_three_domain_store(tmp_path))
    cross = json.loads((path.parent / "numbers.json").read_text())["cross_domain_rank"]
    assert list(cross) == ["math vs code", f"math vs {PLUGIN}", f"code vs {PLUGIN}"]
    same = cross["math vs code"]
    assert same["layers"] == [0, 1, 2, 3, 4, 5] and same["seeds"] == {"math": [0, 1, 2], "code": [0, 1, 2]}
    # every seed ranks the layers alike, so every resample of seeds does: the CI is the point
    assert same["spearman"] == pytest.approx(1.0) and same["spearman_ci"] == pytest.approx([1.0, 1.0])
    assert same["kendall"] == pytest.approx(1.0) and same["kendall_ci"] == pytest.approx([1.0, 1.0])
    assert same["n_boot"] == 10000 and "resampled" in same["method"]
    s_2 = [BASE3 + (FULL3[s] - BASE3) * _seed_c("code", 2, s) for s in range(3)]
    assert same["contribution"]["code"]["2"] == pytest.approx((np.mean(s_2) - BASE3) / (np.mean(FULL3) - BASE3))
    for pair in (f"math vs {PLUGIN}", f"code vs {PLUGIN}"):
        v = cross[pair]
        assert v["spearman"] == pytest.approx(-1.0) and v["spearman_ci"] == pytest.approx([-1.0, -1.0])
        assert v["kendall"] == pytest.approx(-1.0) and v["kendall_ci"] == pytest.approx([-1.0, -1.0])
    md = path.read_text()
    assert "## Do the domains rank layers alike?" in md
    assert "- math vs code: Spearman 1.000 [1.00, 1.00], Kendall 1.000 [1.00, 1.00] over layers [0, 1, 2, 3, 4, 5]" in md
    assert f"- math vs {PLUGIN}: Spearman -1.000 [-1.00, -1.00]" in md
    assert "Spearman 0.76 across datasets and 0.59 between math and code" in md


def test_cross_domain_ci_resamples_each_domains_seeds_on_their_own():
    """The bootstrap CI is the quantile of both correlations recomputed on each domain's own resample of seeds."""
    rng = np.random.default_rng(3)
    a_layer, b_layer = rng.uniform(0.3, 0.6, (5, 3)), rng.uniform(0.1, 0.4, (5, 4))
    a_base, a_full, b_base, b_full = [0.2] * 3, [0.6, 0.7, 0.65], [0.1] * 4, [0.4, 0.5, 0.45, 0.42]
    est = cross_rank_correlation_over_seeds(a_layer, a_base, a_full, b_layer, b_base, b_full, n_boot=400, seed=7)
    ca = (a_layer.mean(1) - 0.2) / (np.mean(a_full) - 0.2)
    cb = (b_layer.mean(1) - 0.1) / (np.mean(b_full) - 0.1)
    assert est.spearman == pytest.approx(stats.spearmanr(ca, cb).statistic)
    assert est.kendall == pytest.approx(stats.kendalltau(ca, cb).statistic)
    draw = np.random.default_rng(7)
    ia, ib = draw.integers(0, 3, (400, 3)), draw.integers(0, 4, (400, 4))
    rhos, taus = [], []
    for i, j in zip(ia, ib):
        x = (a_layer[:, i].mean(1) - 0.2) / (np.mean(np.asarray(a_full)[i]) - 0.2)
        y = (b_layer[:, j].mean(1) - 0.1) / (np.mean(np.asarray(b_full)[j]) - 0.1)
        rhos.append(spearman(x, y))
        taus.append(kendall_tau(x, y))
    assert est.spearman_ci == pytest.approx(tuple(np.quantile(rhos, [0.025, 0.975])))
    assert est.kendall_ci == pytest.approx(tuple(np.quantile(taus, [0.025, 0.975])))
    assert est.dropped_fraction == 0.0 and est.n_seeds == (3, 4)


def test_t_quantile_and_interval_match_scipy():
    for df in (1, 2, 4, 29):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)
        assert t_quantile(0.05, df) == pytest.approx(stats.t.ppf(0.05, df), abs=1e-9)
    x = [0.2, 0.5, 0.35, 0.1]
    mean, lo, hi = mean_t_ci(x)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x)))
    assert mean_t_ci([0.4]) == (0.4, None, None)


def test_transfer_matrix_scores_each_trained_domain_on_every_domains_suite(tmp_path):
    path = write_report(_three_domain_store(tmp_path))
    nums = json.loads((path.parent / "numbers.json").read_text())
    matrix = nums["transfer_matrix"]
    assert nums["transfer_matrix_suites"] == {"math": "math-l1", "code": "humaneval", PLUGIN: "parity-eval"}
    assert list(matrix) == ["math", "code", PLUGIN]
    math = matrix["math"]
    assert list(math) == ["base", "full", "0", "1", "2", "3", "4", "5"]
    assert set(math["2"]) == {"math-l1", "humaneval", "parity-eval", "all"}
    assert math["full"]["humaneval"]["score_mean"] == pytest.approx(0.3)
    assert math["full"]["math-l1"]["score_mean"] == pytest.approx(np.mean(FULL3))
    for layer, c in C_MATH.items():  # another domain's suite: C = C_l / 2 exactly
        assert math[str(layer)]["humaneval"]["contribution"] == pytest.approx(c / 2)
        assert math[str(layer)]["parity-eval"]["contribution"] == pytest.approx(c / 2)
    s_l = [np.mean([BASE3 + (FULL3[s] - BASE3) * _seed_c("math", 2, s), 0.1 + 0.1 * C_MATH[2], 0.1 + 0.1 * C_MATH[2]])
           for s in range(3)]
    s_b, s_f = (BASE3 + 0.2) / 3, [(f + 0.6) / 3 for f in FULL3]
    assert math["2"]["all"]["contribution"] == pytest.approx((np.mean(s_l) - s_b) / (np.mean(s_f) - s_b))
    # the same numbers as the per-suite table's rows, whose schema stays
    (row,) = [r for r in nums["rows"] if r["domain"] == "math" and r["suite"] == "humaneval" and r["target"] == "2"]
    assert row["contribution"] == math["2"]["humaneval"]["contribution"]
    assert {"domain", "suite", "target", "score_mean", "contribution", "ci_low", "ci_high"} <= set(row)
    md = path.read_text()
    assert "## Transfer matrix" in md and f"### trained on {PLUGIN}" in md
    assert "| target | math-l1 (math) | humaneval (code) | parity-eval (oneplug/Parity-v0) | C_all |" in md
    assert "| full | score 0.600 | score 0.300 | score 0.300 |" in md


def test_one_figure_holds_every_domains_contribution_curve(tmp_path):
    path = write_report(_three_domain_store(tmp_path))
    fig = path.parent / "contribution_by_depth.png"
    assert fig.is_file() and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000
    assert "![contribution_by_depth.png](contribution_by_depth.png)" in path.read_text()
    assert not list(path.parent.rglob("*Parity*"))  # no file named after a domain


def test_a_one_domain_one_seed_sweep_reports_without_the_cross_domain_sections(tmp_path):
    path = write_report(_three_domain_store(tmp_path, domains=(PLUGIN,), seeds=(0,)))
    nums = json.loads((path.parent / "numbers.json").read_text())
    m = nums["depth_groups"][f"{PLUGIN}/grpo"]["middle_minus_outer"]
    assert m["ci"] is None and m["note"] == "n/a (1 seed)" and m["seeds"] == [0]
    assert m["mean"] == pytest.approx(np.mean([_seed_c(PLUGIN, x, 0) for x in (2, 3)])
                                      - np.mean([_seed_c(PLUGIN, x, 0) for x in (0, 1, 4, 5)]))
    assert nums["cross_domain_rank"] == {} and nums["transfer_matrix"] == {}
    md = path.read_text()
    assert "## Middle third vs outer thirds" in md and "[n/a (1 seed)] | n/a | 0 of 1 |" in md
    assert "## Do the domains rank layers alike?" not in md and "## Transfer matrix" not in md
    assert (path.parent / "contribution_by_depth.png").is_file()


def test_two_domains_of_one_seed_give_correlations_without_a_ci(tmp_path):
    path = write_report(_three_domain_store(tmp_path, domains=("math", PLUGIN), seeds=(0,)))
    v = json.loads((path.parent / "numbers.json").read_text())["cross_domain_rank"][f"math vs {PLUGIN}"]
    assert v["spearman"] == pytest.approx(-1.0) and v["spearman_ci"] is None and v["kendall_ci"] is None
    assert "one seed" in v["note"]
    line = f"- math vs {PLUGIN}: Spearman -1.000, Kendall -1.000 over layers [0, 1, 2, 3, 4, 5]"
    assert line in path.read_text() and "(1 seed: no CI)" in path.read_text()


def test_inserted_block_is_compared_with_the_existing_block_full_and_base_paired_over_seeds(tmp_path):
    d = _store(tmp_path, domains=("math",))
    inserted = [0.45, 0.50, 0.49]  # minus layer 3 (0.40 each seed): +0.05, +0.10, +0.09
    for s, v in enumerate(inserted):
        append_result(d, JobResult(f"math/grpo/s{s}/layer-insert-3", "math", s, "layer", "insert@3", 3, "grpo", v,
                                   {"math-l1": v, "humaneval": 0.2}))
    write_report(d)
    nums = json.loads((d / "report" / "numbers.json").read_text())
    e = nums["inserted"]["math/grpo"]["insert@3"]
    assert e["score_mean"] == pytest.approx(np.mean(inserted)) and e["seeds"] == [0, 1, 2]
    vs_layer = e["minus_layer_3"]
    diffs = [v - 0.40 for v in inserted]
    assert vs_layer["per_seed"] == pytest.approx(diffs) and vs_layer["higher_in"] == 3
    mean, low, high = mean_t_ci(diffs)
    assert (vs_layer["mean"], *vs_layer["ci"]) == pytest.approx((mean, low, high))
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)  # scipy's t interval
    assert vs_layer["ci"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half])
    assert e["minus_full"]["per_seed"] == pytest.approx([v - f for v, f in zip(inserted, FULL["math"])])
    assert e["minus_base"]["per_seed"] == pytest.approx([v - BASE["math"] for v in inserted])
    assert e["minus_full"]["higher_in"] == 1  # 0.50 > 0.52 is false, 0.49 > 0.48 is true, 0.45 > 0.50 false
    md = (d / "report" / "report.md").read_text()
    assert "## Inserted blocks" in md and "| math (grpo) | insert@3 | 0.480 |" in md
    from onelayer.benchmarks.results import (
        sweep_summary,  # RESULTS' table of the same sweep says it too
    )

    line = next(x for x in sweep_summary(tmp_path, "sweep").splitlines() if x.startswith("- inserted block"))
    assert line.startswith("- inserted block insert@3 (score 0.4800 over 3 seeds), paired per seed: vs layer 3 +0.080 [")
    assert "(higher in 3 of 3)" in line and "vs full -0.020" in line and "vs base +0.180" in line
    # a sweep without inserted blocks has no such section
    (tmp_path / "plain").mkdir()
    write_report(_store(tmp_path / "plain"))
    plain = json.loads((tmp_path / "plain" / "sweep" / "report" / "numbers.json").read_text())
    assert plain["inserted"] == {} and "## Inserted blocks" not in (tmp_path / "plain" / "sweep" / "report" /
                                                                    "report.md").read_text()
