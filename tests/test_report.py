"""The sweep report on a hand-built results store: numbers match hand computation and scipy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

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
