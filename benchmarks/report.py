"""``onelayer report SWEEP_DIR``: layer contribution tables, correlations and plots of a sweep.

Writes under ``SWEEP_DIR/report/``: ``report.md`` (tables, findings, the
settings, software and machine), ``summary.txt`` (the main table, printed by
the CLI), ``numbers.json`` and ``contributions.csv`` (every number),
``contribution_by_depth.png`` (every domain's curve on one axes), ``contribution_vs_depth.png``,
``heatmap.png`` and ``learning_curves.png``. Across domains it answers the paper's question: per domain, middle
third vs outer thirds with a paired CI over seeds; per pair of domains, Spearman and Kendall of the layer
rankings with bootstrap CIs over seeds; the transfer matrix (each domain's jobs on every domain's suite).
Every contribution is ``C_l = (S_l - S_base) / (S_full - S_base)`` of the
seed means with a paired bootstrap CI over seeds (contribution.py); a
full-parameter gain too small to divide by is flagged, never printed as a ratio.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onelayer.benchmarks.contribution import (
    MIN_GAIN,
    ContributionEstimate,
    RankAgreement,
    bootstrap_mean_ci,
    contribution_over_seeds,
    cross_rank_correlation_over_seeds,
    kendall_tau,
    mean_t_ci,
    pearson,
    rank_agreement_over_seeds,
    spearman,
)
from onelayer.benchmarks.sweep_results import (
    JobResult,
    layer_contributions,
    load_results,
    lr_scales_of,
    primary_lr_scale,
    write_ranking,
)
from onelayer.errors import UserError
from onelayer.io import atomic_write_json, atomic_write_text, read_jsonl

N_BOOT = 10000


@dataclass
class Row:
    """One target (a layer, sub-layer or inserted block) in one (domain, algo, suite) table."""

    domain: str
    algo: str
    suite: str
    target: str
    layer: int | None
    n_seeds: int
    score_mean: float
    score_sd: float
    contribution: float | None
    ci_low: float | None
    ci_high: float | None
    note: str
    weight_change: float | None
    lr_scale: float = 1.0
    """The single-layer lr scale of the target's jobs (base and full: the scale the row's table compares with)."""


def _target_key(t: str) -> tuple:
    head, _, sub = t.partition(".")
    if head.startswith("insert@"):
        return (int(head.split("@")[1]) - 0.5, 1, sub)
    return (int(head), 0, sub) if head.lstrip("-").isdigit() else (1e9, 0, t)


def _estimate(scores: dict[str, dict[int, float]], target: str) -> tuple[ContributionEstimate | None, list[int], str]:
    if "base" not in scores or "full" not in scores:
        return None, [], "no base or full-parameter result"
    seeds = sorted(set(scores[target]) & set(scores["base"]) & set(scores["full"]))
    if not seeds:
        return None, [], "no seed with base, full and this target"
    est = contribution_over_seeds([scores[target][s] for s in seeds], [scores["base"][s] for s in seeds],
                                  [scores["full"][s] for s in seeds], n_boot=N_BOOT)
    return est, seeds, est.reason


def _mean_change(results: list[JobResult], domain: str, algo: str) -> dict[int, float]:
    per: dict[int, list[float]] = {}
    for r in results:
        if r.domain == domain and r.algo == algo and r.method == "full":
            for k, v in r.weight_change.items():
                per.setdefault(int(k), []).append(v)
    return {k: float(np.mean(v)) for k, v in per.items()}


def _all_scores(results: list[JobResult], domain: str) -> list[JobResult]:
    """Jobs with a ``C_all`` score: the mean over the suites every job of the domain was scored on."""
    rows = [r for r in results if r.domain == domain]
    common = set.intersection(*(set(r.scores) for r in rows)) if rows else set()
    if len(common) < 2:
        return []
    out = []
    for r in rows:
        d = asdict(r)
        d["scores"] = {**r.scores, "all": float(np.mean([r.scores[s] for s in sorted(common)]))}
        out.append(JobResult.from_dict(d))
    return out


def build_rows(results: list[JobResult], lr_scale: float | None = None, in_domain_only: bool = False) -> list[Row]:
    """Every (domain, algo, suite, target) contribution row; suite ``all`` is C_all. Single-layer jobs of one lr
    scale: ``lr_scale``, or each domain's primary one (1 when it ran)."""
    rows: list[Row] = []
    domains = list(dict.fromkeys(r.domain for r in results))
    for domain in domains:
        scale = primary_lr_scale([r for r in results if r.domain == domain]) if lr_scale is None else lr_scale
        algos = sorted({r.algo for r in results if r.domain == domain and r.method != "base"})
        dom_results = [r for r in results if r.domain == domain]
        suites = list(dict.fromkeys(s for r in dom_results for s in r.scores))
        with_all = _all_scores(results, domain)
        for algo in algos:
            change = _mean_change(results, domain, algo)
            for suite in [None] if in_domain_only else [None, *suites, *(["all"] if with_all else [])]:
                source = with_all if suite == "all" else results
                scores = layer_contributions(source, domain, suite=suite, algo=algo, lr_scale=scale)
                targets = sorted((t for t in scores if t not in ("base", "full")), key=_target_key)
                for t in ["base", "full", *targets]:
                    if t not in scores:
                        continue
                    vals = list(scores[t].values())
                    est, seeds, note = _estimate(scores, t) if t not in ("base", "full") else (None, [], "")
                    layer = int(t) if t.isdigit() else None
                    rows.append(Row(
                        domain, algo, suite or "in-domain", t, layer, len(vals), float(np.mean(vals)),
                        float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                        est.mean if est and est.defined else None,
                        est.ci_low if est else None, est.ci_high if est else None,
                        note if (est is None or not est.defined or est.ci_low is None) else "",
                        change.get(layer) if layer is not None else None, scale))
    return rows


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _c_text(r: Row) -> str:
    if r.target in ("base", "full"):
        return ""
    if r.contribution is None:
        return "undefined (full gain too small)" if "too small" in r.note else f"- ({r.note})"
    ci = f" [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.ci_low is not None else (" (1 seed, no CI)" if r.n_seeds == 1 else "")
    return f"{_fmt(r.contribution)}{ci}"


def _main_table(rows: list[Row], domain: str, algo: str) -> str:
    sel = [r for r in rows if r.domain == domain and r.algo == algo and r.suite == "in-domain"]
    lines = ["| target | seeds | score (mean ± sd) | C_l [95% CI] | full-RL weight change |",
             "| --- | --- | --- | --- | --- |"]
    for r in sel:
        score = f"{r.score_mean:.4f} ± {r.score_sd:.4f}" if r.n_seeds > 1 else f"{r.score_mean:.4f}"
        lines.append(f"| {r.target} | {r.n_seeds} | {score} | {_c_text(r)} | "
                     f"{_fmt(r.weight_change, 4)} |")
    base = [r.score_mean for r in sel if r.target == "base"]
    full = [r.score_mean for r in sel if r.target == "full"]
    if base and full and full[0] - base[0] <= -MIN_GAIN:
        lines.append(f"full-parameter RL lowered the score ({full[0] - base[0]:+.4f}): C_l compares losses here "
                     "(0: the layer kept the base score; 1: it lost as much as full RL; below 0: it gained)")
    return "\n".join(lines)


def _depth_groups(rows: list[Row], domain: str, algo: str, num_layers: int, results: list[JobResult]) -> dict:
    """Do middle layers contribute more than the first and last ones? Per-seed comparison of group means."""
    scores = layer_contributions(results, domain, algo=algo)
    layers = sorted(int(t) for t in scores if t.isdigit())
    if not layers or "base" not in scores or "full" not in scores:
        return {}
    third = num_layers / 3
    groups = {"first": [x for x in layers if x < third], "middle": [x for x in layers if third <= x < 2 * third],
              "last": [x for x in layers if x >= 2 * third]}
    means = {}
    for g, ls in groups.items():
        cs = [r.contribution for r in rows if r.domain == domain and r.algo == algo and r.suite == "in-domain"
              and r.layer in ls and r.contribution is not None]
        means[g] = float(np.mean(cs)) if cs else None
    seeds = sorted(set(scores["base"]) & set(scores["full"]))
    per_seed, compared = [], []
    for s in seeds:
        gain = scores["full"][s] - scores["base"][s]
        if abs(gain) < MIN_GAIN:
            continue
        c = {g: [(scores[str(x)][s] - scores["base"][s]) / gain for x in ls if s in scores.get(str(x), {})]
             for g, ls in groups.items()}
        if c["middle"] and (c["first"] or c["last"]):
            ends = c["first"] + c["last"]
            per_seed.append(float(np.mean(c["middle"]) - np.mean(ends)))
            compared.append(s)
    return {"groups": {g: ls for g, ls in groups.items()}, "mean_contribution": means,
            "middle_minus_ends_per_seed": per_seed,
            "middle_higher_in": sum(d > 0 for d in per_seed), "seeds_compared": len(per_seed),
            "middle_minus_outer": _middle_minus_outer(per_seed, compared)}


DEPTH_METHOD = ("per seed: mean C_l over the middle-third layers minus mean C_l over the first- and last-third "
                "layers, each C_l that seed's own (S_l - S_base) / (S_full - S_base) (seeds with |S_full - S_base| "
                ">= 0.01); ci: 95% t interval of the mean over seeds (df = seeds - 1); bootstrap_ci: 95% percentile "
                "bootstrap of the mean over seeds (too narrow with few seeds)")


def _middle_minus_outer(per_seed: list[float], seeds: list[int]) -> dict:
    """Middle third minus outer thirds, paired over seeds: the mean difference with a t and a bootstrap CI."""
    entry: dict = {"mean": None, "ci": None, "bootstrap_ci": None, "seeds": seeds, "per_seed": per_seed,
                   "middle_higher_in": sum(d > 0 for d in per_seed), "method": DEPTH_METHOD}
    if not per_seed:
        entry["note"] = ("no seed with a middle-third layer, an outer-third layer and a full-parameter gain of at "
                         f"least {MIN_GAIN}")
        return entry
    mean, low, high = mean_t_ci(per_seed)
    entry["mean"] = mean
    if low is None:
        entry["note"] = "n/a (1 seed)"
        return entry
    _, b_low, b_high = bootstrap_mean_ci(per_seed, n_boot=N_BOOT)
    entry.update(ci=[low, high], bootstrap_ci=[b_low, b_high])
    return entry


def _depth_markdown(depth: dict, keys: list[tuple[str, str]]) -> list[str]:
    lines = ["## Middle third vs outer thirds", "",
             "Do the middle layers contribute more than the first and last ones? Per seed: the mean `C_l` of the "
             "middle-third layers minus that of the first- and last-third layers (each `C_l` that seed's own ratio); "
             "the mean over seeds with a 95% t interval (df = seeds - 1) and a 95% percentile bootstrap over seeds "
             "(too narrow with few seeds); and in how many seeds the middle was higher.", "",
             "| domain (algo) | middle layers | outer layers | middle - outer per seed | mean [95% t CI] | "
             "bootstrap CI | middle higher in |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for d, a in keys:
        key, g = f"{d} ({a})", depth[f"{d}/{a}"]
        m = g.get("middle_minus_outer")
        if not m:
            lines.append(f"| {key} | - | - | - | - (no single-layer block index or no base/full result) | - | - |")
            continue
        outer = g["groups"]["first"] + g["groups"]["last"]
        per_seed = ", ".join(f"s{s}: {d:+.2f}" for s, d in zip(m["seeds"], m["per_seed"])) or "-"
        mean = "-" if m["mean"] is None else f"{m['mean']:+.3f}"
        ci = f" [{m['ci'][0]:+.2f}, {m['ci'][1]:+.2f}]" if m["ci"] else f" [{m['note']}]"
        boot = f"[{m['bootstrap_ci'][0]:+.2f}, {m['bootstrap_ci'][1]:+.2f}]" if m["bootstrap_ci"] else "n/a"
        lines.append(f"| {key} | {g['groups']['middle']} | {outer} | {per_seed} | {mean}{ci} | {boot} | "
                     f"{m['middle_higher_in']} of {len(m['per_seed'])} |")
    return lines + [""]


INSERTED_METHOD = ("per seed: the inserted block's in-domain score minus the other target's (the existing block at "
                   "the insertion index, or full-parameter RL) on the same seed; mean over seeds with a 95% t "
                   "interval (df = seeds - 1)")


def _inserted_comparison(results: list[JobResult], domain: str, algo: str) -> dict:
    """Each inserted block (``insert@N``) against the existing block N trained alone and against full RL: per-seed
    paired score differences, their mean and 95% t interval (``{}`` when the sweep inserted nothing)."""
    scores = layer_contributions(results, domain, algo=algo)
    out = {}
    for target in sorted((t for t in scores if t.startswith("insert@")), key=_target_key):
        mine, at = scores[target], target.split("@", 1)[1]
        entry: dict = {"seeds": sorted(mine), "score_mean": float(np.mean(list(mine.values()))),
                       "method": INSERTED_METHOD}
        for name, other in ((f"layer {at}", scores.get(at, {})), ("full", scores.get("full", {})),
                            ("base", scores.get("base", {}))):
            seeds = sorted(set(mine) & set(other))
            diffs = [mine[s] - other[s] for s in seeds]
            cmp: dict = {"seeds": seeds, "per_seed": diffs, "mean": None, "ci": None,
                         "higher_in": sum(d > 0 for d in diffs)}
            if diffs:
                mean, low, high = mean_t_ci(diffs)
                cmp.update(mean=mean, ci=[low, high] if low is not None else None,
                           other_score_mean=float(np.mean([other[s] for s in seeds])))
            entry[f"minus_{name.replace(' ', '_')}"] = cmp
        out[target] = entry
    return out


def _inserted_markdown(inserted: dict, keys: list[tuple[str, str]]) -> list[str]:
    lines = ["## Inserted blocks", "",
             "A new block inserted at index N (identity-initialised: the model starts unchanged) and trained alone, "
             "against the existing block N trained alone, full-parameter RL and the base model, on the in-domain "
             "suite. Per seed: the inserted block's score minus the other's; the mean over seeds with a 95% t "
             "interval (df = seeds - 1), and in how many seeds the inserted block scored higher.", "",
             "| domain (algo) | inserted | score | vs existing block | vs full RL | vs base |",
             "| --- | --- | --- | --- | --- | --- |"]

    def cell(c: dict) -> str:
        if c["mean"] is None:
            return "-"
        ci = f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" if c["ci"] else " (1 seed)"
        return f"{c['mean']:+.3f}{ci}, higher in {c['higher_in']} of {len(c['per_seed'])}"

    for d, a in keys:
        for target, e in inserted.get(f"{d}/{a}", {}).items():
            at = target.split("@", 1)[1]
            lines.append(f"| {d} ({a}) | {target} | {e['score_mean']:.3f} | {cell(e[f'minus_layer_{at}'])} "
                         f"(layer {at}) | {cell(e['minus_full'])} | {cell(e['minus_base'])} |")
    return lines + [""]


def _series(pairs) -> dict[str, tuple[str, str]]:
    """A name for each trained (domain, algo): the domain, with the algorithm in brackets when it ran several."""
    pairs = list(dict.fromkeys(pairs))
    out = {}
    for d, a in pairs:
        several = sum(p[0] == d for p in pairs) > 1
        out[f"{d} ({a})" if several else d] = (d, a)
    return out


PAPER_RANK_NOTE = ("The paper reports Spearman 0.76 across datasets and 0.59 between math and code, from one run "
                   "per layer, without seeds or CIs.")


def _cross_domain_rank(results: list[JobResult], n_boot: int = N_BOOT) -> dict:
    """For every pair of trained domains: Spearman and Kendall of their in-domain ``C_l`` over the layers both
    swept, each with a bootstrap CI over seeds (each domain's seeds resampled on their own)."""
    series = _series((r.domain, r.algo) for r in results if r.method != "base")
    out = {}
    for (na, (da, aa)), (nb, (db, ab)) in itertools.combinations(series.items(), 2):
        if da == db:
            continue  # two algorithms of one domain: rank_correlations compares those
        scores = {na: layer_contributions(results, da, algo=aa), nb: layer_contributions(results, db, algo=ab)}
        layers = sorted(set.intersection(*({int(t) for t in s if t.isdigit()} for s in scores.values())))
        entry: dict = {"layers": layers, "seeds": {}, "spearman": None, "spearman_ci": None, "kendall": None,
                       "kendall_ci": None, "n_boot": n_boot, "method": CROSS_METHOD}
        out[f"{na} vs {nb}"] = entry
        mats = []
        for name, s in scores.items():
            if "base" not in s or "full" not in s:
                entry["note"] = f"{name}: no base or full-parameter result"
                break
            seeds = sorted(set(s["base"]).intersection(s["full"], *(s[str(x)] for x in layers)))
            entry["seeds"][name] = seeds
            mats += [[[s[str(x)][i] for i in seeds] for x in layers], [s["base"][i] for i in seeds],
                     [s["full"][i] for i in seeds]]
        if "note" in entry:
            continue
        if len(layers) < 3:
            entry["note"] = f"{len(layers)} layer(s) swept in both domains: a rank correlation needs at least 3"
            continue
        if not all(entry["seeds"].values()):
            entry["note"] = "a domain has no seed with base, full and every compared layer"
            continue
        est = cross_rank_correlation_over_seeds(*mats, n_boot=n_boot)
        entry.update(spearman=est.spearman, kendall=est.kendall,
                     spearman_ci=list(est.spearman_ci) if est.spearman_ci else None,
                     kendall_ci=list(est.kendall_ci) if est.kendall_ci else None)
        if est.contribution is not None:
            entry["contribution"] = {name: dict(zip(map(str, layers), c)) for name, c in zip(scores, est.contribution)}
        if est.reason:
            flat = [name for name, c in entry.get("contribution", {}).items() if len(set(c.values())) == 1]
            entry["note"] = (f"{' and '.join(flat)}: every compared layer has the same C_l, no ranking to correlate"
                             if est.spearman is None and flat else est.reason)
    return out


CROSS_METHOD = ("Spearman and Kendall tau-b of the two domains' in-domain C_l (ratio of seed means) over the layers "
                "both swept, on each domain's seeds with base, full and every compared layer; 95% percentile "
                "bootstrap CI: each domain's seeds resampled with replacement on their own, C_l recomputed, both "
                "correlations recomputed (RNG seed 0)")


def _ci_pair(value: float | None, ci: list | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")  # the line's note says why not


def _cross_markdown(cross: dict) -> list[str]:
    lines = ["## Do the domains rank layers alike?", "",
             "Spearman and Kendall (tau-b) between two domains' in-domain `C_l` (ratio of seed means) over the layers "
             f"both swept; 95% percentile bootstrap CI over seeds ({N_BOOT} resamples; each domain's seeds resampled "
             "with replacement independently of the other's, `C_l` and both correlations recomputed; RNG seed 0). "
             + PAPER_RANK_NOTE, ""]
    for pair, v in cross.items():
        seeds = "; ".join(f"{name} seeds {s}" for name, s in v["seeds"].items())
        if v["spearman"] is None:
            lines.append(f"- {pair}: not computed ({v.get('note', '')}); layers {v['layers']}")
            continue
        note = " (1 seed: no CI)" if "one seed" in v.get("note", "") else (f" ({v['note']})" if v.get("note") else "")
        lines.append(f"- {pair}: Spearman {_ci_pair(v['spearman'], v['spearman_ci'])}, Kendall "
                     f"{_ci_pair(v['kendall'], v['kendall_ci'])} over layers {v['layers']} ({seeds}){note}")
    return lines + [""]


def _in_domain_suites(results: list[JobResult], meta: dict) -> dict[str, str]:
    """Each trained domain's in-domain suite: the first it lists in sweep.json, else its jobs' first score."""
    out = {}
    for d in dict.fromkeys(r.domain for r in results):
        listed = (meta.get("eval_suites") or {}).get(d)
        first = listed[0] if listed else next((next(iter(r.scores)) for r in results if r.domain == d and r.scores), None)
        if first:
            out[d] = first
    return out


def _transfer_matrix(rows: list[Row], own: dict[str, str]) -> dict:
    """``{trained: {target: {suite: cell}}}``: each trained domain's base, full and single-layer rows on every swept
    domain's in-domain suite and ``all`` (C_all), as the per-suite table computes them. Empty with one domain."""
    if len(own) < 2:
        return {}
    columns = [*dict.fromkeys(own.values()), "all"]
    out: dict = {}
    for name, (d, a) in _series((r.domain, r.algo) for r in rows).items():
        cells: dict = {}
        for r in rows:
            if r.domain == d and r.algo == a and r.suite in columns:
                cell = {"score_mean": r.score_mean, "contribution": r.contribution, "ci_low": r.ci_low,
                        "ci_high": r.ci_high, "n_seeds": r.n_seeds}
                cells.setdefault(r.target, {})[r.suite] = {**cell, **({"note": r.note} if r.note else {})}
        out[name] = cells
    return out


def _transfer_markdown(matrix: dict, own: dict[str, str], series: dict[str, tuple[str, str]]) -> list[str]:
    columns = [*dict.fromkeys(own.values()), "all"]
    label = {s: f"{s} ({', '.join(d for d, x in own.items() if x == s)})" for s in columns[:-1]} | {"all": "C_all"}
    lines = ["## Transfer matrix", "",
             "Each trained domain's jobs scored on every swept domain's in-domain suite: base and full give the score, "
             "a layer its `C_l` on that suite [95% CI] (the per-suite table's contribution); `C_all` is over all "
             "suites every job of the trained domain was scored on.", ""]
    for name, cells in matrix.items():
        scored = {s for t in cells.values() for s in t}
        if not scored - {own.get(series[name][0]), "all"}:
            lines += [f"### trained on {name}", "", "- scored on its own suite only (run the sweep with transfer on)",
                      ""]
            continue
        lines += [f"### trained on {name}", "", "| target | " + " | ".join(label[s] for s in columns) + " |",
                  "| --- | " + " | ".join("---" for _ in columns) + " |"]
        for target, by_suite in cells.items():
            out = []
            for s in columns:
                c = by_suite.get(s)
                if c is None:
                    out.append("not scored")
                elif target in ("base", "full"):
                    out.append(f"score {c['score_mean']:.3f}")
                elif c["contribution"] is None:
                    out.append("undefined (full gain too small)" if "too small" in c.get("note", "") else "-")
                else:
                    ci = f" [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]" if c["ci_low"] is not None else ""
                    out.append(f"{_fmt(c['contribution'])}{ci}")
            lines.append(f"| {target} | " + " | ".join(out) + " |")
        lines.append("")
    return lines


def _correlations(rows: list[Row]) -> dict:
    """Rank correlation of in-domain layer contributions between every pair of (domain, algo) series."""
    series: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.suite == "in-domain" and r.layer is not None and r.contribution is not None:
            series.setdefault(f"{r.domain}/{r.algo}", {})[r.layer] = r.contribution
    out = {}
    names = sorted(series)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(series[a]) & set(series[b]))
            if len(common) >= 3:
                x, y = [series[a][k] for k in common], [series[b][k] for k in common]
                out[f"{a} vs {b}"] = {"layers": common, "spearman": spearman(x, y), "kendall": kendall_tau(x, y)}
    return out


def _scale_comparison(results: list[JobResult], by_scale: dict[float, list[Row]]) -> dict:
    """Does the layer ranking change with the single-layer lr scale? Per (domain, algo): each scale's in-domain
    contributions (over its own seeds) and, for every pair of scales, the Spearman / Kendall correlation over their
    common layers, paired on the seeds that ran both scales (the same base and full runs on both sides).
    ``by_scale``: the in-domain rows of every scale (``build_rows(results, lr_scale=s, in_domain_only=True)``)."""
    out: dict = {"scales": lr_scales_of(results), "by_series": {}}
    for domain in dict.fromkeys(r.domain for r in results):
        dom = [r for r in results if r.domain == domain]
        scales = lr_scales_of(dom)
        if len(scales) < 2:
            continue
        for algo in sorted({r.algo for r in dom if r.method == "layer"}):
            series = {s: _layer_rows([r for r in by_scale[s] if r.domain == domain], algo) for s in scales}
            pairs = {}
            for i, a in enumerate(scales):
                for b in scales[i + 1:]:
                    pairs[f"x{a:g} vs x{b:g}"] = _scale_pair(dom, algo, a, b)
            out["by_series"][f"{domain}/{algo}"] = {
                "contributions": {f"{s:g}": {str(k): {"contribution": r.contribution, "ci_low": r.ci_low,
                                                       "ci_high": r.ci_high, "n_seeds": r.n_seeds}
                                              for k, r in sorted(series[s].items())} for s in scales},
                "rank_correlations": pairs}
    return out


def _layer_rows(rows: list[Row], algo: str) -> dict[int, Row]:
    return {r.layer: r for r in rows if r.algo == algo and r.layer is not None and r.target == str(r.layer)}


def _scale_pair(dom: list[JobResult], algo: str, a: float, b: float) -> dict:
    """Rank correlation of the contributions at scales ``a`` and ``b`` on the seeds that ran both (paired)."""
    def seeds_at(scale):
        return {r.seed for r in dom if r.method == "layer" and r.algo == algo and float(r.lr_scale) == scale}

    common_seeds = sorted(seeds_at(a) & seeds_at(b))
    sub = [r for r in dom if r.seed < 0 or r.seed in common_seeds]
    x_rows = _layer_rows(build_rows(sub, lr_scale=a, in_domain_only=True), algo)
    y_rows = _layer_rows(build_rows(sub, lr_scale=b, in_domain_only=True), algo)
    common = sorted(k for k in set(x_rows) & set(y_rows)
                    if x_rows[k].contribution is not None and y_rows[k].contribution is not None)
    entry: dict = {"seeds": common_seeds, "layers": common}
    if len(common) < 3:
        entry["note"] = ("no seed ran at both scales" if not common_seeds else
                         "fewer than 3 layers with a defined contribution at both scales")
        return entry
    x = [x_rows[k].contribution for k in common]
    y = [y_rows[k].contribution for k in common]
    entry.update(spearman=spearman(x, y), kendall=kendall_tau(x, y),
                 contributions={f"{a:g}": dict(zip(map(str, common), x)), f"{b:g}": dict(zip(map(str, common), y))},
                 top_layer={f"{a:g}": common[int(np.argmax(x))], f"{b:g}": common[int(np.argmax(y))]})
    return entry


def _scale_markdown(cmp: dict) -> list[str]:
    lines = ["## Single-layer lr scale: does the ranking change?", ""]
    if not cmp["by_series"]:
        scales = ", ".join(f"x{s:g}" for s in cmp["scales"]) or "none"
        return lines + [f"- single-layer jobs at one lr scale ({scales}): rerun the sweep with another "
                        "`--single-layer-lr-scale` (e.g. `1,4`) to compare the rankings", ""]
    for key, entry in cmp["by_series"].items():
        scales = list(entry["contributions"])
        layers = sorted({int(k) for c in entry["contributions"].values() for k in c})
        lines += [f"{key}: in-domain C_l per scale, each over its own seeds (95% CI; n = seeds); the correlations "
                  "below pair the scales on the seeds that ran both", "",
                  "| layer | " + " | ".join(f"x{s}" for s in scales) + " |",
                  "| --- | " + " | ".join("---" for _ in scales) + " |"]
        for k in layers:
            cells = []
            for s in scales:
                c = entry["contributions"][s].get(str(k))
                if c is None:
                    cells.append("")
                    continue
                ci = f" [{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]" if c["ci_low"] is not None else ""
                cells.append(f"{_fmt(c['contribution'])}{ci} (n={c['n_seeds']})")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [_scale_line(key, pair, v) for pair, v in entry["rank_correlations"].items()]
        lines.append("")
    return lines


def _scale_line(key: str, pair: str, v: dict) -> str:
    if "spearman" not in v:
        return f"- {key} {pair}: not computed ({v['note']})"
    tops = ", ".join(f"x{s}: layer {layer}" for s, layer in v["top_layer"].items())
    same = "same" if len(set(v["top_layer"].values())) == 1 else "different"
    a, b = list(v["contributions"])
    paired = ", ".join(f"{k}: {_fmt(v['contributions'][a][str(k)])} / {_fmt(v['contributions'][b][str(k)])}"
                       for k in v["layers"])
    return (f"- {key} {pair}: Spearman {v['spearman']:.3f}, Kendall {v['kendall']:.3f} over layers {v['layers']}, "
            f"paired on seeds {v['seeds']}; top layer {same} ({tops}); C_l x{a} / x{b} on those seeds: {paired}")


def _change_correlation(rows: list[Row]) -> dict:
    out = {}
    keys = {(r.domain, r.algo) for r in rows}
    for d, a in sorted(keys):
        pts = [(r.weight_change, r.contribution) for r in rows if r.domain == d and r.algo == a
               and r.suite == "in-domain" and r.weight_change is not None and r.contribution is not None]
        if len(pts) >= 3:
            x, y = zip(*pts)
            out[f"{d}/{a}"] = {"n": len(pts), "pearson": pearson(x, y), "spearman": spearman(x, y)}
    return out


def _learning_curves(results: list[JobResult]) -> dict[str, dict[str, list[float]]]:
    """Mean training reward per step over seeds: ``{domain/algo: {target: [reward per step]}}``."""
    acc: dict[str, dict[str, list[list[float]]]] = {}
    for r in results:
        if r.method == "base" or not r.run_dir:
            continue
        p = Path(r.run_dir) / "metrics.jsonl"
        if not p.is_file():
            continue
        rewards = [m["reward"] for m in read_jsonl(p) if "reward" in m]
        acc.setdefault(f"{r.domain}/{r.algo}", {}).setdefault(r.target, []).append(rewards)
    out = {}
    for key, by_target in acc.items():
        out[key] = {}
        for t, runs in by_target.items():
            n = min(len(x) for x in runs)
            out[key][t] = [float(np.mean([x[i] for x in runs])) for i in range(n)]
    return out


def _plots(rows: list[Row], curves: dict, out: Path, num_layers: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    keys = sorted({(r.domain, r.algo) for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4))
    for d, a in keys:
        pts = sorted((r.layer, r.contribution, r.ci_low, r.ci_high) for r in rows
                     if r.domain == d and r.algo == a and r.suite == "in-domain" and r.layer is not None
                     and r.contribution is not None)
        if not pts:
            continue
        x, y, lo, hi = zip(*pts)
        err = np.array([[c - (low if low is not None else c) for c, low in zip(y, lo)],
                        [(high if high is not None else c) - c for c, high in zip(y, hi)]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{d} ({a})")
    ax.axhline(1.0, color="gray", ls="--", lw=0.8)
    ax.axhline(0.0, color="gray", ls=":", lw=0.8)
    ax.set_xlabel(f"layer (0..{num_layers - 1})")
    ax.set_ylabel("layer contribution C_l")
    ax.set_xlim(-0.5, num_layers - 0.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title("Layer contribution vs depth (95% bootstrap CI over seeds)")
    fig.tight_layout()
    fig.savefig(out / "contribution_vs_depth.png", dpi=120)
    plt.close(fig)
    made.append("contribution_vs_depth.png")

    layers = sorted({r.layer for r in rows if r.layer is not None and r.suite == "in-domain"})
    if keys and layers:
        grid = np.full((len(keys), len(layers)), np.nan)
        for i, (d, a) in enumerate(keys):
            for r in rows:
                if r.domain == d and r.algo == a and r.suite == "in-domain" and r.layer in layers and r.contribution is not None:
                    grid[i, layers.index(r.layer)] = r.contribution
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(layers) + 2), 1 + 0.6 * len(keys)))
        im = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(layers)), [str(x) for x in layers])
        ax.set_yticks(range(len(keys)), [f"{d} ({a})" for d, a in keys])
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, label="C_l")
        ax.set_title("Layer contribution: domain x layer (blank = undefined)")
        fig.tight_layout()
        fig.savefig(out / "heatmap.png", dpi=120)
        plt.close(fig)
        made.append("heatmap.png")

    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
        for ax, (key, by_target) in zip(axes[0], sorted(curves.items())):
            for t in sorted(by_target, key=lambda t: (t != "all", _target_key(t) if t != "all" else (0,))):
                ax.plot(range(1, len(by_target[t]) + 1), by_target[t], label="full" if t == "all" else f"layer {t}")
            ax.set_xlabel("RL step")
            ax.set_ylabel("mean training reward (over seeds)")
            ax.set_title(key)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "learning_curves.png", dpi=120)
        plt.close(fig)
        made.append("learning_curves.png")
    return made


DEPTH_FIGURE = "contribution_by_depth.png"


def _depth_figure(rows: list[Row], out: Path, num_layers: int) -> str:
    """``contribution_by_depth.png``: every domain's in-domain C_l against layer index on one axes (95% CI bars),
    the middle third shaded, full RL at 1 and the base model at 0. The file name never holds a domain's name (a
    plugin env id has a "/"), so any domain plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axvspan(num_layers / 3 - 0.5, 2 * num_layers / 3 - 0.5, color="gray", alpha=0.1, label="middle third")
    for name, (d, a) in _series((r.domain, r.algo) for r in rows).items():
        pts = sorted((r.layer, r.contribution, r.ci_low, r.ci_high) for r in rows
                     if r.domain == d and r.algo == a and r.suite == "in-domain" and r.layer is not None
                     and r.target == str(r.layer) and r.contribution is not None)
        if not pts:
            continue
        x, y, lo, hi = zip(*pts)
        err = np.array([[c - (low if low is not None else c) for c, low in zip(y, lo)],
                        [(high if high is not None else c) - c for c, high in zip(y, hi)]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    ax.axhline(1.0, color="black", ls="--", lw=0.9, label="full RL (C = 1)")
    ax.axhline(0.0, color="gray", ls=":", lw=0.8, label="base (C = 0)")
    ax.set_xlabel(f"layer index (0..{num_layers - 1})")
    ax.set_ylabel("C_l (ratio of seed means)")
    ax.set_xlim(-0.5, num_layers - 0.5)
    ax.legend(fontsize=8)
    ax.set_title("Contribution vs depth per domain (95% bootstrap CI over seeds)")
    fig.tight_layout()
    fig.savefig(out / DEPTH_FIGURE, dpi=120)
    plt.close(fig)
    return DEPTH_FIGURE


# ----------------------------------------------------------------------------- probe validation (issue 25)
PROBE_KS = (3, 5)


def _domain_label(domain: str) -> str:
    """A sweep domain's name as a probe records it (``onelayer/Math-v0`` -> ``math``); itself when unknown here."""
    from onelayer.envs.domain import domain_spec

    try:
        return domain_spec(domain).name
    except UserError:
        return domain


def _sweep_cost(results: list[JobResult], domain: str, algo: str, num_layers: int) -> dict:
    """The sweep's measured one-seed cost of every block: ``base + full + L x single-layer job`` (mean job times)."""
    dom = [r for r in results if r.domain == domain]
    scale = primary_lr_scale(dom)
    base = [r.wall_s for r in dom if r.method == "base"]
    full = [r.wall_s for r in dom if r.method == "full" and r.algo == algo]
    layer = [r.wall_s for r in dom if r.method == "layer" and r.algo == algo and float(r.lr_scale) == scale
             and r.layer is not None and r.target == str(r.layer)]
    if not (base and full and layer) or min(base + full + layer) <= 0:
        return {"seconds": None, "how": "the sweep's results lack the base, full or single-layer job times (wall_s)"}
    b, f, one = float(np.mean(base)), float(np.mean(full)), float(np.mean(layer))
    return {"seconds": b + f + num_layers * one,
            "how": f"measured: base {b:.0f} s + full {f:.0f} s (mean of {len(full)} jobs) + {num_layers} layers x "
                   f"{one:.0f} s (mean of {len(layer)} single-layer jobs)"}


def probe_agreement(results: list[JobResult], meta: dict, probe_dir: str | Path, n_boot: int = N_BOOT) -> dict:
    """How each method of a probe (``onelayer probe``) ranks the sweep's layers: per (domain, algo) of the probe's
    domain, Spearman and Kendall with the measured in-domain ``C_l`` (bootstrap CI over the sweep's seeds, permutation
    p-value), the overlap of the top-K sets (K in ``PROBE_KS``; chance K/n), and each method's cost as a fraction
    of the sweep's measured one-seed cost of every block."""
    from onelayer.benchmarks.probe import read_probe

    probe = read_probe(probe_dir)
    model = meta.get("spec", {}).get("model")
    if model is not None and probe.model != model:
        raise UserError(f"probe {probe_dir} scored {probe.model}, the sweep trained {model}: a ranking holds only for "
                        "its model; probe the sweep's model")
    num_layers = int(meta.get("num_layers") or probe.num_layers)
    if probe.num_layers != num_layers:
        raise UserError(f"probe {probe_dir} scored {probe.num_layers} layers, the sweep's model has {num_layers}")
    domains = [d for d in dict.fromkeys(r.domain for r in results) if _domain_label(d) == probe.domain]
    if not domains:
        raise UserError(f"probe {probe_dir} ranked domain {probe.domain!r}; the sweep has "
                        f"{', '.join(sorted({r.domain for r in results}))}: probe one of those envs")
    machine = (meta.get("machine") or {}).get("cpu"), (probe.info.get("machine") or {}).get("cpu")
    out: dict = {"probe_dir": str(probe_dir), "model": probe.model, "domain": probe.domain, "env": probe.env,
                 "seed": probe.info.get("seed"), "methods_order": list(probe.methods),
                 "same_machine": None if None in machine else machine[0] == machine[1],
                 "machines": {"sweep": machine[0], "probe": machine[1]}, "series": {}}
    for domain in domains:
        for algo in sorted({r.algo for r in results if r.domain == domain and r.method == "layer"}):
            scores = layer_contributions(results, domain, algo=algo)
            if "base" not in scores or "full" not in scores:
                out["series"][f"{domain}/{algo}"] = {"note": "no base or full-parameter result"}
                continue
            layers = sorted(int(t) for t in scores if t.isdigit() and int(t) < probe.num_layers)
            seeds = set(scores["base"]) & set(scores["full"])
            for layer in layers:
                seeds &= set(scores[str(layer)])
            seeds = sorted(seeds)
            cost = _sweep_cost(results, domain, algo, num_layers)
            entry: dict = {"layers": layers, "seeds": seeds, "sweep_cost": cost, "methods": {}}
            if not seeds or not layers:
                entry["note"] = "no seed with base, full and every single-layer run"
                out["series"][f"{domain}/{algo}"] = entry
                continue
            s_layer = [[scores[str(layer)][s] for s in seeds] for layer in layers]
            s_base, s_full = [scores["base"][s] for s in seeds], [scores["full"][s] for s in seeds]
            for name, m in probe.methods.items():
                agreement = rank_agreement_over_seeds([m.scores[layer] for layer in layers], s_layer, s_base, s_full,
                                                      ks=PROBE_KS, n_boot=n_boot)
                entry["methods"][name] = {**_agreement_dict(agreement), "seconds": m.seconds,
                                          "fraction_of_sweep": m.seconds / cost["seconds"] if cost["seconds"] else None}
            out["series"][f"{domain}/{algo}"] = entry
    return out


def _agreement_dict(a: RankAgreement) -> dict:
    d = asdict(a)
    d["top_k_overlap"] = {str(k): v for k, v in a.top_k_overlap.items()}
    d["top_k_chance"] = {str(k): v for k, v in a.top_k_chance.items()}
    return d


def _ci_text(value: float | None, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def probe_markdown(agreement: dict) -> str:
    """The probe-vs-sweep table of :func:`probe_agreement` (printed by ``onelayer report --probe``)."""
    lines = [f"probe {agreement['probe_dir']} ({agreement['model']}, {agreement['domain']}, seed "
             f"{agreement.get('seed')}): rank agreement of each method's layer scores with the measured C_l "
             "(95% bootstrap CI over the sweep's seeds; p: one-sided permutation test; top-K overlap, chance K/n)"]
    if agreement["same_machine"] is False:
        lines.append(f"note: the probe ran on {agreement['machines']['probe']}, the sweep on "
                     f"{agreement['machines']['sweep']}: the cost fractions compare different machines")
    for key, entry in agreement["series"].items():
        if "note" in entry and not entry.get("methods"):
            lines.append(f"{key}: not compared ({entry['note']})")
            continue
        n = len(entry["layers"])
        cost = entry["sweep_cost"]
        lines += [f"{key}: {n} layers, seeds {entry['seeds']}; sweep cost (one seed, all layers) "
                  + (f"{cost['seconds'] / 3600:.2f} h ({cost['how']})" if cost["seconds"] else f"unknown ({cost['how']})"),
                  "", "| method | Spearman [95% CI] | Kendall [95% CI] | p | "
                  + " | ".join(f"top-{k} overlap" + (f" (chance {k / n:.2f})" if k < n else "") for k in PROBE_KS)
                  + " | seconds | fraction of sweep | note |",
                  "| --- | --- | --- | --- | " + " | ".join("---" for _ in PROBE_KS) + " | --- | --- | --- |"]
        for name, m in entry["methods"].items():
            overlaps = [m["top_k_overlap"].get(str(k)) for k in PROBE_KS]
            frac, p = m["fraction_of_sweep"], m["spearman_p"]
            lines.append(f"| {name} | {_ci_text(m['spearman'], m['spearman_ci'])} | "
                         f"{_ci_text(m['kendall'], m['kendall_ci'])} | {'-' if p is None else f'{p:.3f}'} | "
                         + " | ".join("-" if o is None else f"{o:.2f}" for o in overlaps)
                         + f" | {m['seconds']:.0f} | {'-' if frac is None else f'{100 * frac:.2f}%'} | {m['reason']} |")
        lines.append("")
    return "\n".join(lines)


def write_report(sweep_dir: str | Path, probes: list[str | Path] | tuple = ()) -> Path:
    """Write ``SWEEP_DIR/report/`` and return the path of ``report.md``.

    ``probes``: probe directories (``onelayer probe``) to validate against the sweep (:func:`probe_agreement`):
    added to report.md, summary.txt and numbers.json (key ``probe``).
    """
    sweep_dir = Path(sweep_dir)
    spec_path = sweep_dir / "sweep.json"
    if not spec_path.is_file():
        raise UserError(f"{sweep_dir} is not a sweep directory (no sweep.json): run `onelayer sweep --out {sweep_dir}`")
    meta = json.loads(spec_path.read_text())
    results = load_results(sweep_dir)
    if not results:
        raise UserError(f"{sweep_dir} has no finished job yet")
    write_ranking(sweep_dir)  # the layer ranking top:K@SWEEP_DIR reads
    probe_checks = [probe_agreement(results, meta, p) for p in probes]  # a bad probe fails before anything is written
    num_layers = int(meta.get("num_layers") or 1)
    rows = build_rows(results)
    out = sweep_dir / "report"
    out.mkdir(exist_ok=True)
    keys = sorted({(r.domain, r.algo) for r in rows})
    depth = {f"{d}/{a}": _depth_groups(rows, d, a, num_layers, results) for d, a in keys}
    inserted = {f"{d}/{a}": _inserted_comparison(results, d, a) for d, a in keys}
    inserted = {k: v for k, v in inserted.items() if v}
    corr = _correlations(rows)
    change_corr = _change_correlation(rows)
    by_scale = {s: build_rows(results, lr_scale=s, in_domain_only=True) for s in lr_scales_of(results)}
    scale_cmp = _scale_comparison(results, by_scale)
    primary = {d: primary_lr_scale([r for r in results if r.domain == d]) for d in {r.domain for r in results}}
    curves = _learning_curves([r for r in results if r.method != "layer" or r.lr_scale == primary[r.domain]])
    plots = [_depth_figure(rows, out, num_layers), *_plots(rows, curves, out, num_layers)]
    cross = _cross_domain_rank(results)
    own = _in_domain_suites(results, meta)
    matrix = _transfer_matrix(rows, own)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([f.name for f in Row.__dataclass_fields__.values()])
    extra_scale_rows = [r for rows in by_scale.values() for r in rows
                        if r.target not in ("base", "full") and r.lr_scale != primary[r.domain]]
    for r in rows + extra_scale_rows:
        w.writerow(list(asdict(r).values()))
    atomic_write_text(out / "contributions.csv", buf.getvalue())
    numbers = {
        "rows": [asdict(r) for r in rows], "depth_groups": depth, "rank_correlations": corr,
        "weight_change_vs_contribution": change_corr, "lr_scales": scale_cmp, "learning_curves": curves,
        "cross_domain_rank": cross, "transfer_matrix": matrix, "transfer_matrix_suites": own if matrix else {},
        "inserted": inserted, "jobs": [asdict(r) for r in results]}
    if probe_checks:
        numbers["probe"] = probe_checks
    atomic_write_json(out / "numbers.json", numbers)

    spec = meta.get("spec", {})
    summary = []
    for d, a in keys:
        summary.append(f"{d} ({a}), in-domain suite {meta.get('eval_suites', {}).get(d, ['?'])[0]}:")
        summary.append(_main_table(rows, d, a))
        g = depth.get(f"{d}/{a}") or {}
        if g.get("seeds_compared"):
            mc = g["mean_contribution"]
            summary.append(f"middle vs first/last layers: mean C first {_fmt(mc['first'])}, middle {_fmt(mc['middle'])}, "
                           f"last {_fmt(mc['last'])}; middle higher than the ends in {g['middle_higher_in']} of "
                           f"{g['seeds_compared']} seeds")
            m = g["middle_minus_outer"]
            ci = (f"95% CI [{m['ci'][0]:+.2f}, {m['ci'][1]:+.2f}] (t interval over {len(m['per_seed'])} seeds)"
                  if m["ci"] else m["note"])
            summary.append(f"middle third minus outer thirds, paired over seeds: mean {m['mean']:+.3f}, {ci}")
        for pair, v in scale_cmp["by_series"].get(f"{d}/{a}", {}).get("rank_correlations", {}).items():
            summary.append(_scale_line("single-layer lr scale", pair, v))
        summary.append("")
    summary_text = "\n".join(summary)
    probe_text = "\n".join(probe_markdown(a) for a in probe_checks)
    atomic_write_text(out / "summary.txt", summary_text + "\n" + (probe_text + "\n" if probe_text else ""))

    md = [f"# Layer sweep report: {sweep_dir.name}", "",
          "Layer contribution `C_l = (S_l - S_base) / (S_full - S_base)` (ratio of seed means; 95% paired "
          "bootstrap CI over seeds; undefined when |S_full - S_base| is below 0.01).", "",
          "## Settings", "",
          f"- model: `{spec.get('model')}` ({num_layers} layers); algorithm(s): {', '.join(spec.get('algos', []))}",
          f"- domains: {', '.join(spec.get('domains', []))}; seeds: {meta.get('all', {}).get('seeds')}",
          f"- budget: {spec.get('steps')} RL steps per job; lr {spec.get('lr') or 'TrainConfig default'} for every job; "
          "single-layer lr scale(s) " + (", ".join(f"x{s:g}" for s in scale_cmp["scales"]) or "none")
          + " (contribution tables use x1 when it ran, else the smallest; the scale section compares the scales)",
          f"- training options per domain: `{json.dumps(meta.get('train_options'))}`",
          f"- evaluation suites per domain: `{json.dumps(meta.get('eval_suites'))}`"
          + (f", {spec.get('eval_items')} items each" if spec.get("eval_items") else ""),
          f"- preset: {spec.get('preset') or 'none'}",
          f"- software: `{json.dumps(meta.get('versions'))}`",
          f"- machine: {meta.get('machine', {}).get('cpu', '')} ({json.dumps(meta.get('machine'))})", "",
          "## In-domain contribution", "", summary_text, ""]
    transfer = [r for r in rows if r.suite not in ("in-domain",) and r.target not in ("base", "full")]
    if transfer:
        md += ["## Contribution per suite (transfer) and C_all", "",
               "| domain | algo | target | " + " | ".join(sorted({r.suite for r in transfer})) + " |",
               "| --- | --- | --- | " + " | ".join("---" for _ in sorted({r.suite for r in transfer})) + " |"]
        for d, a in keys:
            for t in sorted({r.target for r in transfer if r.domain == d and r.algo == a}, key=_target_key):
                cells = []
                for s in sorted({r.suite for r in transfer}):
                    hit = [r for r in transfer if r.domain == d and r.algo == a and r.target == t and r.suite == s]
                    cells.append(_c_text(hit[0]) if hit else "")
                md.append(f"| {d} | {a} | {t} | " + " | ".join(cells) + " |")
        md.append("")
    md += _depth_markdown(depth, keys)
    if inserted:
        md += _inserted_markdown(inserted, keys)
    if cross:
        md += _cross_markdown(cross)
    if matrix:
        md += _transfer_markdown(matrix, own, _series((r.domain, r.algo) for r in rows))
    md += ["## Weight change vs contribution", "",
           "How far full-parameter RL moved each block (L2 norm of its change, mean over seeds) against that "
           "block's contribution. The paper finds no relation.", ""]
    md += [f"- {k}: Pearson {v['pearson']:.3f}, Spearman {v['spearman']:.3f} over {v['n']} layers"
           for k, v in change_corr.items()] or ["- fewer than 3 layers with a defined contribution: not computed"]
    md += ["", "## Rank correlation of layer contributions", ""]
    md += [f"- {k}: Spearman {v['spearman']:.3f}, Kendall {v['kendall']:.3f} over layers {v['layers']}"
           for k, v in corr.items()] or ["- needs two domains or algorithms sharing at least 3 layers with defined contributions"]
    md += [""] + _scale_markdown(scale_cmp)
    if probe_checks:
        md += ["## Layer probe vs measured contribution", "",
               "Each probe method's layer scores (`onelayer probe`, docs/probe.md) against the measured in-domain "
               "C_l: Spearman and Kendall with a 95% bootstrap CI over the sweep's seeds (seeds resampled, C_l "
               "recomputed, the probe's scores fixed), a one-sided permutation p-value over layer orders, the overlap "
               "of the top-K sets, and the probe's cost as a fraction of the sweep's measured one-seed cost of every "
               "layer.", "", probe_text, ""]
    md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots]
    md += ["", "Every number: `numbers.json`, `contributions.csv`; every evaluated item: `jobs/*/suites.json`."]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return out / "report.md"
