"""``python -m onelayer.benchmarks.results [RESULTS_DIR] [--check | --write]``: RESULTS.md rebuilt from stored files.

Every table in ``RESULTS_DIR/RESULTS.md`` (and ``RESULTS_GPU.md``) sits between two marker lines::

    <!-- results:table KIND PATH [key=value ...] -->
    ... generated markdown ...
    <!-- /results:table -->

``KIND`` names a builder in :data:`BUILDERS` and ``PATH`` the stored files it reads, relative to
``RESULTS_DIR`` (a sweep, compare or study directory, or a JSON file). ``results:text`` blocks hold
generated sentences the same way (p-values, ranges, counts that no table carries). A table whose
source data was never stored sits in a ``<!-- results:hand NAME -->`` ... ``<!-- /results:hand -->``
block, and ``NAME`` must be listed in :data:`NOT_GENERATED` with the reason; a markdown table outside
every block is an error, so a new hand-written table cannot slip in unnoticed.

Without a flag the command prints every generated block. ``--check`` exits 1 when a committed block
differs from what the stored files give (naming the block and its first differing line) or when the
document breaks the rules above; ``--write`` rewrites the generated blocks in place (atomically).
The default ``RESULTS_DIR`` is ``results`` under the current directory (the repository root), never
this file's folder: an installed package lives in site-packages, away from the results.

Builders compute with the project's own code (``report.build_rows``, ``compare.write_compare``,
``tune_lr.summarize``, ``alfworld_learning.summarize`` / ``summarize_sampled`` / ``paired_by_game``,
``contribution.bootstrap_mean_ci`` / ``paired_permutation_test``), and they discover seeds, layers,
methods and runs from the files, so a rerun that changes a stored result changes the tables with it.
Paths recorded inside stored files (``run_dir``, ``sweep_dir``) are ignored: everything is resolved
relative to ``RESULTS_DIR``, since the files were moved after they were written.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onelayer.errors import UserError

DOCUMENTS = ("RESULTS.md", "RESULTS_GPU.md")
"""The documents whose blocks are generated; the first must exist in RESULTS_DIR."""

NOT_GENERATED = {
    "math-learning-check": "the `onelayer train --layers 15 --steps 20` run of 2026-11-25 (runs/math-layer15) "
                           "kept its metrics.jsonl outside the repository; only its printed numbers were copied",
    "gpu-sync-bytes": "computed once from model configs with agents.weight_sync.layer_and_model_bytes; the "
                      "Qwen3 configs were typed in from their published values and are not stored",
}
"""Tables deliberately not generated, by the NAME of their ``results:hand`` block, with the reason."""

SPEED_TARGETS = {"llamacpp_batch1": 5.0, "llamacpp_batch64": 3.0, "workers_per_worker": 0.8,
                 "train_time": 0.55, "train_memory": 0.5}
"""Issue 8's speed targets: llama.cpp tokens/s vs ``generate`` at batch 1 and 64, env steps/s per worker vs
one worker, a middle layer's step time and peak memory vs ``all`` (for results without sampling times)."""
TRAIN_TARGETS = {"first": 0.80, "middle": 0.40, "last": 0.15, "middle_memory": 0.45, "middle_sampling": 0.10}
"""Issue 22's training-step targets, against ``all`` on the same batch: update time of the first, middle and last
layer, the middle layer's peak memory, and how far its sampling time may drift from ``all``'s (a fraction)."""


# ---------------------------------------------------------------- small helpers


def _path(root: Path, rel: str, what: str = "") -> Path:
    p = root / rel
    if not p.exists():
        raise UserError(f"{p} does not exist{' (' + what + ')' if what else ''}: store it under {root} or fix the "
                        "PATH of the block that names it")
    return p


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: the block that reads it needs it stored") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}): restore it from git") from None


def _jsonl(path: Path) -> list[dict]:
    from onelayer.io import read_jsonl

    if not path.is_file():
        raise UserError(f"{path} does not exist: the block that reads it needs it stored")
    return read_jsonl(path)


def _f(x: float | None, nd: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    x = round(float(x), nd) + 0.0  # no "-0.000"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _lr(x: float) -> str:
    """A learning rate as the commands write it: ``3e-5``, ``1e-4``."""
    mantissa, exp = f"{x:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def _p(p: float) -> str:
    """A p-value with two significant digits (``0.00024``, ``0.026``, ``0.31``; ``< 0.0001`` below that)."""
    if p < 1e-4:
        return "< 0.0001"
    return f"{p:.2g}" if p < 0.1 else f"{p:.2f}"


def _span(values: list[float], nd: int = 0) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.{nd}f}" if round(lo, nd) == round(hi, nd) else f"{lo:,.{nd}f}-{hi:,.{nd}f}"


def _gib(mib: list[float]) -> str:
    return f"{_span(mib)} MiB ({_span([m / 1024 for m in mib], 1)} GiB)"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)]


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


_SELECTION = re.compile(r"([\d,]+) of ([\d,]+) parameters \(([\d.]+)%\)")


def _trainable(selection: str | None) -> str:
    """``10.6M (7.90%)`` from a job's ``extra.selection`` line; ``-`` when it has none."""
    m = _SELECTION.search(selection or "")
    return "-" if not m else f"{_millions(int(m.group(1).replace(',', '')))} ({m.group(3)}%)"


# ---------------------------------------------------------------- sweeps


def _sweep(root: Path, rel: str):
    from onelayer.benchmarks.sweep_results import load_results

    d = _path(root, rel, "a sweep directory")
    meta = _json(d / "sweep.json")
    return d, meta, load_results(d)


def _target_order(r) -> tuple:
    from onelayer.benchmarks.report import _target_key

    rank = {"base": 0, "full": 1, "layer": 2}.get(r.method, 3)
    return (rank, _target_key(r.target) if r.method == "layer" else (0,), r.lr_scale, r.seed)


def sweep_summary(root: Path, rel: str) -> str:
    """The sweep report's in-domain table per (domain, algorithm), as ``onelayer report`` prints it, then the
    depth groups per seed and how full RL's weight change relates to the contributions."""
    from onelayer.benchmarks import report

    _, meta, results = _sweep(root, rel)
    num_layers = int(meta.get("num_layers") or 1)
    rows = report.build_rows(results)
    change = report._change_correlation(rows)
    out: list[str] = []
    for d, a in sorted({(r.domain, r.algo) for r in rows}):
        suite = meta.get("eval_suites", {}).get(d, ["?"])[0]
        table = report._main_table(rows, d, a).split("\n")
        notes = [f"- {line}" for line in table if not line.startswith("|")]  # a note on its own line, not a row
        out += [f"{d} ({a}), in-domain suite {suite}:", "", *(line for line in table if line.startswith("|")), "",
                *notes]
        g = report._depth_groups(rows, d, a, num_layers, results)
        if g.get("seeds_compared"):
            mc = g["mean_contribution"]
            per_seed = ", ".join(_f(x, 2, sign=True) for x in g["middle_minus_ends_per_seed"])
            out.append(f"- middle vs first/last layers (thirds of the {num_layers} layers): mean C first {report._fmt(mc['first'])}, "
                       f"middle {report._fmt(mc['middle'])}, last {report._fmt(mc['last'])}; middle higher than the "
                       f"ends in {g['middle_higher_in']} of {g['seeds_compared']} seeds (middle minus ends in mean C, "
                       f"per seed: {per_seed})")
            m = g["middle_minus_outer"]
            if m.get("ci"):
                out.append(f"- middle third minus outer thirds, paired over seeds: mean {m['mean']:+.3f}, 95% t "
                           f"interval [{m['ci'][0]:+.2f}, {m['ci'][1]:+.2f}] over {len(m['per_seed'])} seeds")
        for target, e in report._inserted_comparison(results, d, a).items():
            at = target.split("@", 1)[1]
            parts = []
            for key, label in ((f"minus_layer_{at}", f"layer {at}"), ("minus_full", "full"), ("minus_base", "base")):
                c = e[key]
                if c["mean"] is None:
                    continue
                ci = f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" if c["ci"] else ""
                parts.append(f"vs {label} {c['mean']:+.3f}{ci} (higher in {c['higher_in']} of {len(c['per_seed'])})")
            n = len(e["seeds"])
            out.append(f"- inserted block {target} (score {e['score_mean']:.4f} over {n} seed{'s' * (n != 1)}), paired "
                       f"per seed: {'; '.join(parts)}")
        c = change.get(f"{d}/{a}")
        if c and not np.isnan(c["pearson"]):
            out.append(f"- full-RL weight change vs contribution: Pearson {c['pearson']:.2f}, Spearman "
                       f"{c['spearman']:.2f} over {c['n']} layers")
        out.append("")
    return "\n".join(out).rstrip()


def sweep_jobs(root: Path, rel: str) -> str:
    """Every job of a sweep (or compare) store, one row per target: score per seed on each suite, mean training
    reward, training and wall-clock seconds, peak memory; then the sums and per-method ranges."""
    _, _, results = _sweep(root, rel)
    return _jobs_table(results)


def _jobs_table(results: list) -> str:
    suites = list(dict.fromkeys(s for r in results for s in r.scores))
    groups: dict[tuple, list] = {}
    for r in sorted(results, key=_target_order):
        name = {"base": "base", "full": "full"}.get(r.method, r.target if r.method == "layer" else r.method)
        if r.method == "layer" and r.lr_scale != 1.0:
            name += f" (lr x{r.lr_scale:g})"
        groups.setdefault((r.domain, r.algo if r.method != "base" else "", name), []).append(r)
    domains = {k[0] for k in groups}
    multi = len(domains) > 1 or len({k[1] for k in groups if k[1]}) > 1

    def cell(rs, fn, fmt):
        vals = [fn(r) for r in rs]
        return ", ".join("-" if v is None else fmt(v) for v in vals)

    head = ["job", "seeds"] + [f"{s}" for s in suites] + ["mean train reward", "training s", "wall-clock s",
                                                            "peak RSS MiB"]
    rows = []
    for (d, a, name), rs in groups.items():
        label = f"{d}/{a}/{name}" if multi and a else (f"{d}/{name}" if multi else name)
        seeds = "-" if rs[0].seed < 0 else ", ".join(str(r.seed) for r in rs)
        rows.append([label, seeds]
                    + [cell(rs, lambda r, s=s: r.scores.get(s), lambda v: f"{v:.3f}") for s in suites]
                    + [cell(rs, lambda r: r.extra.get("mean_reward"), lambda v: f"{v:.3g}"),
                       cell(rs, lambda r: r.extra.get("train_time_s"), lambda v: f"{v:.0f}"),
                       cell(rs, lambda r: r.wall_s, lambda v: f"{v:.0f}"),
                       cell(rs, lambda r: r.peak_rss_mb, lambda v: f"{v:.0f}")])
    total = sum(r.wall_s for r in results)
    train = [r.extra["train_time_s"] for r in results if "train_time_s" in r.extra]
    rows.append([f"all {len(results)} jobs", "", *[""] * len(suites), "", f"sum {sum(train):,.0f}" if train else "",
                 f"sum {total:,.0f} ({total / 3600:.1f} h)", ""])
    lines = _table(head, rows) + [""]
    for method in dict.fromkeys(r.method for r in sorted(results, key=_target_order)):
        rs = [r for r in results if r.method == method]
        label = {"layer": "single-layer"}.get(method, method)
        peaks = [r.peak_rss_mb for r in rs if r.peak_rss_mb is not None]
        mem = f", peak RSS {_gib(peaks)}" if peaks else ""
        lines.append(f"- {label} jobs ({len(rs)}): wall-clock {_span([r.wall_s for r in rs])} s{mem}")
    return "\n".join(lines)


def sweep_scales(root: Path, rel: str) -> str:
    """Single-layer lr scales compared on the seeds that ran both: per layer the score and C_l at each scale
    (the report's paired comparison), the other scale's cost, the rank correlation and the rankings."""
    from onelayer.benchmarks import report
    from onelayer.benchmarks.sweep_results import layer_contributions, lr_scales_of

    _, _, results = _sweep(root, rel)
    by_scale = {s: report.build_rows(results, lr_scale=s, in_domain_only=True) for s in lr_scales_of(results)}
    cmp = report._scale_comparison(results, by_scale)
    if not cmp["by_series"]:
        raise UserError(f"{root / rel} holds single-layer jobs of one lr scale only: a scale table needs two "
                        "(`onelayer sweep --single-layer-lr-scale 1,3`)")
    out: list[str] = []
    for key, entry in cmp["by_series"].items():
        domain, algo = key.split("/")
        dom = [r for r in results if r.domain == domain]
        for pair, v in entry["rank_correlations"].items():
            if "spearman" not in v:
                out.append(f"- {key} {pair}: not compared ({v['note']})")
                continue
            a, b = list(v["contributions"])
            seeds = v["seeds"]
            sub = [r for r in dom if r.seed < 0 or r.seed in seeds]
            score = {s: layer_contributions(sub, domain, algo=algo, lr_scale=float(s)) for s in (a, b)}
            cost = {r.layer: r for r in dom if r.method == "layer" and r.algo == algo and r.seed in seeds
                    and float(r.lr_scale) == float(b)}
            rows = []
            for k in v["layers"]:
                rows.append([k] + [_f(float(np.mean(list(score[s][str(k)].values())))) for s in (a, b)]
                            + [_f(v["contributions"][s][str(k)], 2) for s in (a, b)]
                            + [f"{cost[k].wall_s:.0f}" if k in cost else "-",
                               f"{cost[k].peak_rss_mb:.0f}" if k in cost and cost[k].peak_rss_mb else "-"])
            base = float(np.mean(list(score[a]["base"].values())))
            full = float(np.mean(list(score[a]["full"].values())))
            out += [f"{key}, seed(s) {', '.join(map(str, seeds))} (the seeds that ran both scales):", ""]
            out += _table(["layer", f"score x{a}", f"score x{b}", f"C_l x{a}", f"C_l x{b}",
                           f"wall-clock s x{b}", f"peak RSS MiB x{b}"], rows)

            ranking = {s: " > ".join(str(k) for k in sorted(v["layers"], key=lambda k, c=v["contributions"][s]: -c[str(k)]))
                       for s in (a, b)}
            above = {s: sum(v["contributions"][s][str(k)] > 1 for k in v["layers"]) for s in (a, b)}
            out += ["", f"- both scales divide by the full-parameter gain on these seeds: {full:.3f} - {base:.3f} = "
                        f"{full - base:.3f}",
                    f"- Spearman {v['spearman']:.3f}, Kendall {v['kendall']:.3f} over the {len(v['layers'])} layers; "
                    f"ranking x{a}: {ranking[a]}; x{b}: {ranking[b]}",
                    f"- layers with C_l > 1 (above full-parameter RL at the same lr): {above[a]} of "
                    f"{len(v['layers'])} at x{a}, {above[b]} at x{b}", ""]
    return "\n".join(out).rstrip()


# ---------------------------------------------------------------- lr search


def tune(root: Path, rel: str) -> str:
    """The full-parameter lr grid (``tune_lr.summarize`` over each lr's stored sweep): score, gain, cost."""
    from onelayer.benchmarks.sweep import SweepSpec
    from onelayer.benchmarks.sweep_results import load_results
    from onelayer.benchmarks.tune_lr import RESULT_FILE, lr_dir, summarize

    d = _path(root, rel, "an lr search directory")
    record = _json(d / RESULT_FILE)
    spec = SweepSpec.from_dict(record["spec"])
    lrs = sorted(record["grid"])
    results = {lr: load_results(lr_dir(d, lr)) for lr in lrs}
    summary = summarize(spec, lrs, results)
    out: list[str] = []
    for key, s in summary.items():
        domain, algo = key.split("/")
        out += [f"{key}: full-parameter RL, seeds {', '.join(map(str, spec.seeds))}; base {_f(s['base'])}", ""]
        rows = []
        for r in s["lrs"]:
            jobs = [j for j in results[r["lr"]] if j.domain == domain and j.algo == algo and j.method == "full"]
            best = r["lr"] == s["best_lr"]
            score = "-" if r["mean"] is None else _f(r["mean"]) + (f" ± {_f(r['sd'])}" if r["sd"] is not None else "")
            cells = [_lr(r["lr"]), score, _f(r["gain"], sign=True)]
            if best:
                cells = [f"**{c}**" for c in cells]
            peaks = [j.peak_rss_mb for j in jobs if j.peak_rss_mb is not None]
            rows.append(cells + [", ".join(f"{j.wall_s:.0f}" for j in jobs) or "-",
                                 ", ".join(f"{p:.0f}" for p in peaks) or "-"])
        out += _table(["lr", "full-parameter score", "gain over base", "wall-clock s", "peak RSS MiB"], rows)
        if s["best_lr"] is None:
            out += ["", "- the grid is not finished"]
        else:
            edge = " (at the grid's edge: the optimum may lie beyond it)" if s["at_edge"] else ""
            out += ["", f"- best lr {_lr(s['best_lr'])}{edge}"]
        out.append("")
    return "\n".join(out).rstrip()


# ---------------------------------------------------------------- compare


def _compare_rows(d: Path) -> list[dict]:
    """``compare.json``'s rows as ``compare.write_compare`` computes them from the stored ``results.jsonl`` (run in
    a scratch copy: the stored files are read, never rewritten)."""
    from onelayer.benchmarks.compare import SETTINGS_FILE, write_compare
    from onelayer.benchmarks.sweep_results import RESULTS_FILE, load_results

    methods = None
    if (d / SETTINGS_FILE).is_file():
        methods = _json(d / SETTINGS_FILE).get("methods")
    if not methods:  # the order the jobs ran in, which is the order --methods listed them
        methods = list(dict.fromkeys(r.method for r in load_results(d) if r.method != "base"))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(d / RESULTS_FILE, Path(tmp) / RESULTS_FILE)
        write_compare(tmp, methods)
        return json.loads((Path(tmp) / "compare.json").read_text())["rows"]


def compare(root: Path, rel: str) -> str:
    """Layer-aware methods vs full RL over seeds: score per seed, mean with its bootstrap CI, the fraction of the
    full-parameter gain with its CI (``compare.write_compare``), the trainable share and each job's cost."""
    from onelayer.benchmarks.sweep_results import load_results

    d = _path(root, rel, "a compare directory")
    results = load_results(d)
    out: list[str] = []
    all_rows = _compare_rows(d)
    for domain in dict.fromkeys(r["domain"] for r in all_rows):
        rows_c = [r for r in all_rows if r["domain"] == domain]
        jobs = {(r.method, r.seed): r for r in results if r.domain == domain}
        seeds = sorted({s for r in rows_c for s in r["seeds"]})
        base = rows_c[0]["base"]
        rows = [["base", "-", _f(base), _f(base), "-", "", ""]]
        for r in rows_c:
            js = [jobs[(r["method"], s)] for s in r["seeds"]]
            frac = r["fraction_of_full"]
            if r["method"] == "full":
                ftxt = "1"
            elif frac is None:
                ftxt = "undefined (full gain too small)"
            else:
                ci = frac["ci"]
                ftxt = _f(frac["mean"], 2) + (f" [{_f(ci[0], 2)}, {_f(ci[1], 2)}]" if ci[0] is not None else "")
            ci = "" if len(r["seeds"]) < 2 else f" [{_f(r['ci'][0])}, {_f(r['ci'][1])}]"
            rows.append([r["method"], _trainable(js[0].extra.get("selection")),
                         ", ".join(_f(x) for x in r["scores"]), f"{_f(r['mean'])}{ci}", ftxt,
                         ", ".join(f"{j.wall_s:.0f}" for j in js),
                         ", ".join("-" if j.peak_rss_mb is None else f"{j.peak_rss_mb:.0f}" for j in js)])
        out += [f"{domain}: seeds {', '.join(map(str, seeds))}", ""]
        out += _table(["method", "trains", f"score per seed ({', '.join(map(str, seeds))})",
                       "mean [95% bootstrap CI]", "fraction of full gain [95% CI]", "wall-clock s per seed",
                       "peak RSS MiB per seed"], rows)
        out.append("")
    return "\n".join(out).rstrip()


_ANSWER = re.compile(r"\s*(\d+)")


def _answer(response: str) -> str:
    """What an agentic turn chose: the number a choice-format answer starts with, else the action text."""
    m = _ANSWER.match(response)
    return m.group(1) if m else response.split("</action>")[0].strip()


def _ends(steps: list[dict], key: str) -> str:
    """``first / last`` of a per-step metric (``-`` for a step that did not log it)."""
    return f"{_f(steps[0].get(key), 2)} / {_f(steps[-1].get(key), 2)}"


def _mean(steps: list[dict], key: str) -> str:
    vals = [x[key] for x in steps if key in x]
    return f"{statistics.fmean(vals):.0f}" if vals else "-"


def _counts(values: list[str], top: int = 2) -> str:
    return ", ".join(f'"{v}" in {n}' for v, n in Counter(values).most_common(top)) or "-"


def compare_runs(root: Path, rel: str, suite: str) -> str:
    """A one-seed compare whose runs are stored under ``jobs/METHOD/`` (``metrics.jsonl``, ``suites.json``): score
    on ``suite``, gain and fraction of the full gain, train success and entropy over the steps, seconds per step,
    the greedy last answer, cost; then which held-out games each method won."""
    from onelayer.benchmarks.sweep_results import load_results

    d = _path(root, rel, "a compare directory")
    results = load_results(d)
    base = [r for r in results if r.method == "base"]
    runs = [r for r in results if r.method != "base"]
    if len(base) != 1 or len({r.seed for r in runs}) != 1:
        raise UserError(f"{d}: compare-runs reads one base job and one seed per method (jobs/METHOD/); this store "
                        "has more: use a `compare` block")
    s_base = base[0].scores[suite]
    full = [r for r in runs if r.method == "full"]
    gain_full = full[0].scores[suite] - s_base if full else None

    def items(method):
        res = _json(_path(root, f"{rel}/jobs/{method}/suites.json", f"the {method} job's suite results"))
        if suite not in res["suites"]:
            raise UserError(f"{d}/jobs/{method}/suites.json has no suite {suite!r}")
        return res["suites"][suite]["items"]

    def halves(vals):
        h = len(vals) // 2
        return f"{_f(statistics.fmean(vals[:h]))} / {_f(statistics.fmean(vals[h:]))}" if h else "-"

    won = {"base": {it["task_id"] for it in items("base") if it["success"]}}
    last = {"base": [_answer(it["response"]) for it in items("base")]}
    rows = [["base", _f(s_base), "", "", "", "", "", _counts(last["base"]), f"{base[0].wall_s:.0f}",
             "" if base[0].peak_rss_mb is None else f"{base[0].peak_rss_mb:.0f}"]]
    for r in runs:
        m = _jsonl(_path(root, f"{rel}/jobs/{r.method}/metrics.jsonl", f"the {r.method} job's metrics"))
        train = [x for x in m if "success_rate" in x]
        its = items(r.method)
        won[r.method] = {it["task_id"] for it in its if it["success"]}
        last[r.method] = [_answer(it["response"]) for it in its]
        score = r.scores[suite]
        frac = "1" if r.method == "full" else ("-" if not gain_full else _f((score - s_base) / gain_full, 2))
        rows.append([r.method, _f(score), _f(score - s_base, sign=True), frac,
                     halves([x["success_rate"] for x in train]), _ends(train, "entropy"),
                     f"{_mean(train, 'time/sampling_s')} / {_mean(train, 'time/training_s')}",
                     _counts(last[r.method]), f"{r.wall_s:.0f}",
                     "" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}"])
    n = len(items("base"))
    out = _table([f"method (seed {runs[0].seed})", f"held-out success ({suite})", "gain over base",
                  "fraction of full gain", "train success, first / second half of steps",
                  "entropy, first / last step", "s per step: sampling / training",
                  f"greedy answer (last turn, {n} games)", "wall-clock s", "peak memory MiB"], rows)
    out += ["", f"- games won (of {n}): base {len(won['base'])}; "
            + "; ".join(f"{m} {len(w)} (won {len(w - won['base'])} the base lost, lost {len(won['base'] - w)} the "
                        "base won)" for m, w in won.items() if m != "base")]
    small = [m for m in won if m not in ("base", "full")]
    if len(small) > 1:
        same = all(won[m] == won[small[0]] for m in small)
        out.append(f"- {', '.join(small)}: {'the same' if same else 'different'} won games")
    return "\n".join(out)


# ---------------------------------------------------------------- ALFWorld learning studies


@dataclass
class _Study:
    """One ``alfworld_learning`` study directory as stored: each run's metrics and held-out evaluations."""

    dir: Path
    steps: int
    bases: dict[int, list[dict]]
    runs: dict[str, dict[int, list[dict]]]

    def run_dir(self, name: str) -> Path:
        return self.dir / "runs" / name

    def sampled(self, name: str) -> dict:
        return _json(self.run_dir(name) / "eval_sampled.json")

    def eval(self, name: str) -> dict:
        return _json(self.run_dir(name) / "eval.json")

    def names(self) -> list[str]:
        return [f"{a}-s{s}" for a, by_seed in self.runs.items() for s in sorted(by_seed)]


_RUN = re.compile(r"^([a-z_]+)-s(\d+)$")


def _study(root: Path, rel: str) -> _Study:
    d = _path(root, rel, "an ALFWorld study directory")
    bases: dict[int, list[dict]] = {}
    runs: dict[str, dict[int, list[dict]]] = {}
    steps = set()
    for run in sorted((d / "runs").iterdir()) if (d / "runs").is_dir() else []:
        m = _RUN.match(run.name)
        if not m or not (run / "metrics.jsonl").is_file():
            continue
        metrics = _jsonl(run / "metrics.jsonl")
        if m.group(1) == "base":
            bases[int(m.group(2))] = metrics
        else:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = metrics
            steps.add(_json(run / "config.json")["config"]["steps"])
    if not bases or not runs:
        raise UserError(f"{d}/runs holds no base-sSEED and ALGO-sSEED runs with metrics.jsonl")
    if len(steps) != 1:
        raise UserError(f"{d}: the runs were trained for different numbers of steps ({sorted(steps)})")
    return _Study(d, steps.pop(), bases, dict(sorted(runs.items())))


def _summary(st: _Study) -> dict:
    from onelayer.benchmarks.alfworld_learning import summarize

    return summarize(st.bases, st.runs, st.steps)


def _sampled_summary(st: _Study) -> tuple[dict, dict]:
    """``summarize_sampled`` of the study: the base's sampled eval (the study's first seed) and the runs'."""
    from onelayer.benchmarks.alfworld_learning import summarize_sampled

    base = st.sampled(f"base-s{min(st.bases)}")
    runs = {a: {s: st.sampled(f"{a}-s{s}") for s in by_seed} for a, by_seed in st.runs.items()}
    return summarize_sampled(base, runs), {"base": base, **{f"{a}-s{s}": r for a, by in runs.items()
                                                           for s, r in by.items()}}


def _algo_lines(algos: dict) -> list[str]:
    out = []
    for algo, a in algos.items():
        sd = "" if a["sd"] is None else f" ± {a['sd']:.3f}"
        gsd = "" if a["gain_sd"] is None else f" ± {a['gain_sd']:.3f}"
        out.append(f"- {algo}: {_f(a['mean'])}{sd}, gain over base {_f(a['gain_mean'], sign=True)}{gsd} "
                   f"(mean ± sample sd over {a['seeds']} seeds)")
    return out


def study_greedy(root: Path, rel: str) -> str:
    """The study's greedy held-out table (``alfworld_learning.summarize`` over each run's metrics)."""
    s = _summary(_study(root, rel))
    rows = [[f"base-s{seed}", _f(v), "", "", "", "", ""] for seed, v in s["base"]["by_seed"].items()]
    for name, r in s["runs"].items():
        rows.append([name, _f(r["eval_success_rate"]), _f(r["base_eval_success_rate"]), _f(r["gain"], sign=True),
                     _f(r["train_success_first5"]), _f(r["train_success_last5"]), f"{r['train_time_s']:.0f}"])
    out = _table(["run", "held-out success (greedy, 30 games)", "base, same eval order", "gain",
                  "train success, steps 1-5", "last 5 steps", "train time (s)"], rows)
    return "\n".join(out + [""] + _algo_lines(s["algos"]))


def _episodes(res: dict) -> dict[tuple[str, int], float]:
    return {(str(it["task_id"]), j): float(x["success"]) for it in res["items"] for j, x in enumerate(it["samples"])}


def study_sampled(root: Path, rel: str, first: str | None = None) -> str:
    """Sampled held-out success per run over the passes (``summarize_sampled``): per pass, the gain, the games
    and episodes that moved against the base model on the same seeds, with the sign test of the episodes
    (``paired_permutation_test`` over the episode pairs); ``first=K`` adds the numbers over passes 1..K."""
    from onelayer.benchmarks.contribution import paired_permutation_test

    st = _study(root, rel)
    summary, evals = _sampled_summary(st)
    base_ep = _episodes(evals["base"])
    rows = [["base", _f(summary["base"]), ", ".join(_f(x) for x in summary["base_by_sample"]), "", "", "", ""]]
    for name, r in summary["runs"].items():
        ep = _episodes(evals[name])
        keys = sorted(base_ep)
        x, y = [ep[k] for k in keys], [base_ep[k] for k in keys]
        up = sum(a > b for a, b in zip(x, y))
        down = sum(a < b for a, b in zip(x, y))
        pr = r["paired"]
        rows.append([name, _f(r["success_rate"]), ", ".join(_f(v) for v in r["by_sample"]), _f(r["gain"], sign=True),
                     f"{pr['games_up']} / {pr['games_down']}", f"{up} / {down}",
                     _p(paired_permutation_test(x, y))])
    n = summary["samples"]
    out = _table(["run", f"sampled held-out success ({n} x 30 episodes)", "per pass", "gain over base",
                  "games better / worse than base", "discordant episodes (run only / base only)",
                  "sign test p (episodes)"], rows)
    out += [""] + _algo_lines(summary["algos"])
    if first:
        k = int(first)
        if not 0 < k < n:
            raise UserError(f"first={first}: the study has {n} sampled passes; give 1..{n - 1}")
        b = statistics.fmean(summary["base_by_sample"][:k])
        per_algo = []
        for algo, by_seed in st.runs.items():
            gains = [statistics.fmean(summary["runs"][f"{algo}-s{s}"]["by_sample"][:k]) - b for s in sorted(by_seed)]
            per_algo.append(f"{algo} gain {_f(statistics.fmean(gains), sign=True)}")
        out.append(f"- over passes 1-{k} only: base {_f(b)}; " + ", ".join(per_algo) + " (mean over seeds)")
    return "\n".join(out)


def study_pooled(root: Path, rel: str) -> str:
    """Sampled success paired by held-out game, each game's success averaged over an algorithm's seeds: each
    algorithm vs the base model and the first algorithm vs the second (mean difference over games, its 95%
    bootstrap CI over games, the sign-flip permutation p)."""
    from onelayer.benchmarks.alfworld_learning import _success_by_game
    from onelayer.benchmarks.contribution import bootstrap_mean_ci, paired_permutation_test

    st = _study(root, rel)
    _, evals = _sampled_summary(st)
    base = _success_by_game(evals["base"])
    games = sorted(base)
    pooled = {}
    for algo, by_seed in st.runs.items():
        per_seed = [_success_by_game(evals[f"{algo}-s{s}"]) for s in sorted(by_seed)]
        if any(p.keys() != base.keys() for p in per_seed):
            raise UserError(f"{st.dir}: {algo}'s runs and the base model were evaluated on different games")
        pooled[algo] = [statistics.fmean(p[g] for p in per_seed) for g in games]

    def line(name, x, y):
        mean, lo, hi = bootstrap_mean_ci([a - b for a, b in zip(x, y)])
        return (f"- {name}: {_f(mean, sign=True)}, 95% bootstrap CI over the {len(games)} games "
                f"[{_f(lo, sign=True)}, {_f(hi, sign=True)}], permutation p = {_p(paired_permutation_test(x, y))}")

    out = [line(f"{algo} minus base", x, [base[g] for g in games]) for algo, x in pooled.items()]
    algos = list(pooled)
    if len(algos) > 1:
        out.append(line(f"{algos[0]} minus {algos[1]}", pooled[algos[0]], pooled[algos[1]]))
    return "\n".join(out)


def study_overview(root: Path, rel: str) -> str:
    """One row per run: greedy and sampled held-out success with their gains, the sampled gain paired by game
    (bootstrap CI, permutation p, games up / down; ``paired_by_game``), train success and train time."""
    st = _study(root, rel)
    s = _summary(st)
    sampled, _ = _sampled_summary(st)
    bases = sorted(set(s["base"]["by_seed"].values()))
    base_greedy = _f(bases[0]) if len(bases) == 1 else ", ".join(
        f"s{k}: {_f(v)}" for k, v in s["base"]["by_seed"].items())
    rows = [["base", base_greedy, _f(sampled["base"]), "", "", ""]]
    for name, r in s["runs"].items():
        sm = sampled["runs"][name]
        pr = sm["paired"]
        rows.append([name, f"{_f(r['eval_success_rate'])} ({_f(r['gain'], sign=True)})",
                     f"{_f(sm['success_rate'])} ({_f(sm['gain'], sign=True)})",
                     f"[{_f(pr['ci95'][0], sign=True)}, {_f(pr['ci95'][1], sign=True)}], p = {_p(pr['p_permutation'])}, "
                     f"{pr['games_up']} / {pr['games_down']}",
                     f"{_f(r['train_success_first5'])} / {_f(r['train_success_last5'])}", f"{r['train_time_s']:.0f} s"])
    n = sampled["samples"]
    return "\n".join(_table(
        ["run", "held-out greedy (30 games; gain)", f"held-out sampled ({n} x 30 episodes; gain)",
         "sampled, paired by game: 95% CI, permutation p, games up / down", "train success, steps 1-5 / last 5",
         "train time"], rows))


def study_algos(root: Path, rel: str) -> str:
    """Per algorithm, mean ± sample sd over seeds of the greedy and sampled held-out success and their gains."""
    st = _study(root, rel)
    greedy = _summary(st)["algos"]
    sampled, _ = _sampled_summary(st)
    rows = []

    def ms(m, sd, sign=False):
        return _f(m, sign=sign) + ("" if sd is None else f" ± {sd:.3f}")

    for algo, g in greedy.items():
        sm = sampled["algos"][algo]
        rows.append([algo, ms(g["mean"], g["sd"]), ms(g["gain_mean"], g["gain_sd"], True), ms(sm["mean"], sm["sd"]),
                     ms(sm["gain_mean"], sm["gain_sd"], True)])
    return "\n".join(_table(["algorithm", "held-out greedy", "gain", "held-out sampled", "gain"], rows))


def study_runs(root: Path, rel: str, last: str = "all") -> str:
    """Per run (and base seed): greedy games won by task type, the last answer of the greedy episodes (``last=all``
    games or only the ``lost`` ones; the leading number in the choice format, the action in the score format),
    and the policy's entropy and update norm at the first and last training step."""
    if last not in ("all", "lost"):
        raise UserError(f"last={last}: use last=all or last=lost")
    st = _study(root, rel)
    names = [f"base-s{s}" for s in sorted(st.bases)] + st.names()
    types = sorted({it["details"]["task_type"] for it in st.eval(names[0])["items"]})
    rows = []
    for name in names:
        its = st.eval(name)["items"]
        by_type = [f"{sum(it['success'] for it in its if it['details']['task_type'] == t)} of "
                   f"{sum(it['details']['task_type'] == t for it in its)}" for t in types]
        pick = [it for it in its if last == "all" or not it["success"]]
        verbs = [_answer(it["response"]) for it in pick]
        if any(not v.isdigit() for v in verbs):  # score format: the action's verb ("take X from Y" -> take)
            verbs = [v.split()[0] if v else "" for v in verbs]
        m = _jsonl(st.run_dir(name) / "metrics.jsonl")
        train = [x for x in m if "entropy" in x]
        dyn = ["", ""] if not train else [_ends(train, "entropy"), _ends(train, "update_norm")]
        rows.append([name, f"{sum(it['success'] for it in its)} of {len(its)}", *by_type,
                     f"{_counts(verbs)} (of {len(pick)})", *dyn])
    what = "all games" if last == "all" else "lost games"
    return "\n".join(_table(["run", "greedy games won", *[f"won: {t}" for t in types],
                             f"last answer, {what} (top 2)", "entropy, first / last step",
                             "update norm, first / last step"], rows))


def study_cost(root: Path, rel: str) -> str:
    """What the study's runs cost: seconds per training step (sampling, training), a greedy held-out pass,
    the sampled passes, and the runs' train time."""
    st = _study(root, rel)
    steps = [x for by_seed in st.runs.values() for m in by_seed.values() for x in m if "time/training_s" in x]
    samp = [x["time/sampling_s"] for x in steps]
    trn = [x["time/training_s"] for x in steps]
    tot = [a + b for a, b in zip(samp, trn)]
    evals = [x["time/eval_s"] for m in [*st.bases.values(), *(m for b in st.runs.values() for m in b.values())]
             for x in m if "time/eval_s" in x]
    sampled = []
    for name in [f"base-s{min(st.bases)}", *st.names()]:
        p = st.run_dir(name) / "eval_sampled.json"
        if p.is_file():
            res = _json(p)
            sampled.append((res["settings"]["num_samples"], res["time_s"]))
    runs = _summary(st)["runs"].values()
    times = [r["train_time_s"] for r in runs]
    out = [f"- per training step ({len(steps)} steps over {len(times)} runs): {statistics.fmean(tot):.0f} s on average, "
           f"sampling {_span(samp)} s (mean {statistics.fmean(samp):.0f}), training {_span(trn)} s (mean "
           f"{statistics.fmean(trn):.0f})",
           f"- one run's {st.steps} steps: {_span(times)} s ({_span([t / 60 for t in times])} min); all "
           f"{len(times)} runs: {sum(times) / 3600:.1f} h"]
    if evals:
        out.append(f"- a greedy held-out pass (`time/eval_s`): {_span(evals)} s")
    if sampled:
        out.append("- all sampled held-out passes of one model (`eval_sampled.json` `time_s`, summed over the "
                   "sittings that drew them): "
                   + "; ".join(f"{n} passes {_span([t for k, t in sampled if k == n])} s"
                               for n in sorted({k for k, _ in sampled})))
    return "\n".join(out)


def lr_probes(root: Path, rel: str, reference: str | None = None) -> str:
    """Per-step entropy, train success and update norm of stopped probe runs (``*.metrics.jsonl`` with their
    ``*.config.json``), and of a ``reference`` run (a run directory relative to PATH's parent) over as many steps."""
    d = _path(root, rel, "a folder of probe metrics")
    series = []
    for m in sorted(d.glob("*.metrics.jsonl")):
        cfg = _json(m.with_name(m.name.replace(".metrics.jsonl", ".config.json")))["config"]
        series.append((cfg["lr"], _jsonl(m)))
    if not series:
        raise UserError(f"{d} holds no *.metrics.jsonl")
    series.sort(key=lambda s: -s[0])
    n = max(len(m) for _, m in series)
    if reference:
        ref = _path(root, str(Path(rel).parent / reference), "the reference run")
        cfg = _json(ref / "config.json")["config"]
        series.append((cfg["lr"], [x for x in _jsonl(ref / "metrics.jsonl") if "entropy" in x][:n]))
    rows = []
    for lr, m in series:
        by_step = {x["step"]: x for x in m}
        for key, label, nd in (("entropy", "entropy", 2), ("success_rate", "train success", 3),
                               ("update_norm", "update norm", 2)):
            rows.append([f"{_lr(lr)}: {label}"] + [_f(by_step[s][key], nd) if s in by_step else ""
                                                 for s in range(1, n + 1)])
    return "\n".join(_table(["lr", *(f"step {s}" for s in range(1, n + 1))], rows))


def rounding_runs(root: Path, rel: str, steps: int = 4) -> str:
    """Runs of one training job that differ only in float rounding (``full-metrics-NAME.jsonl``, each with the
    score from ``results-NAME.jsonl`` or, for ``this-run``, the folder's parent ``results.jsonl``'s full job):
    reward, loss and gradient norm over the first ``steps`` steps, then the held-out score."""
    d = _path(root, rel, "a folder of run metrics")
    rows = []
    for m in sorted(d.glob("full-metrics-*.jsonl")):
        name = m.name[len("full-metrics-"):-len(".jsonl")]
        res = d / f"results-{name}.jsonl" if name != "this-run" else d.parent / "results.jsonl"
        score = next((r["score"] for r in _jsonl(res) if r["method"] == "full"), None)
        by_step = {x["step"]: x for x in _jsonl(m) if "grad_norm" in x}
        cells = [f"{by_step[s]['reward']:.4f} / {by_step[s]['loss']:.6f} / {by_step[s]['grad_norm']:.5f}"
                 if s in by_step else "" for s in range(1, steps + 1)]
        rows.append([name, *cells, _f(score, 4)])
    if not rows:
        raise UserError(f"{d} holds no full-metrics-*.jsonl")
    return "\n".join(_table(["run", *(f"step {s}: reward / loss / grad norm" for s in range(1, steps + 1)),
                              "held-out score"], rows))


# ---------------------------------------------------------------- speed


def _section(root: Path, rel: str, section: str | None) -> dict:
    data = _json(_path(root, rel, "a benchmark JSON"))
    if section:
        if section not in data:
            raise UserError(f"{root / rel} has no section {section!r} (it has: {', '.join(data)})")
        data = data[section]
    return data


def train_step(root: Path, rel: str, section: str | None = None) -> str:
    """The training-step benchmark (``train_step.json``, or ``bench.json``'s ``train`` section): sampling and
    update time, the FLOP floor and peak memory per layer selection, their ratios to ``all``, and the targets."""
    data = _section(root, rel, section)
    rows = data["rows"]
    if "sampling_s" not in rows[0]:  # results of the earlier bench: a synthetic batch, no sampling, no floor
        out = _table(["layers", "trainable", "step s", "x all", "peak MiB", "x all"],
                     [[r["layers"], f"{r['trainable_params']:,}", f"{r['step_s']:.2f}", f"{r['time_vs_all']:.2f}",
                       f"{r['peak_mem_bytes'] / 2**20:.0f}", f"{r['memory_vs_all']:.2f}"] for r in rows])
        layers = [r for r in rows if r["layers"].isdigit()]
        if layers:
            mid = layers[len(layers) // 2]
            t, m = SPEED_TARGETS["train_time"], SPEED_TARGETS["train_memory"]
            out += ["", f"- middle layer ({mid['layers']}) / all: {mid['time_vs_all']:.2f} in step time (target <= {t}: "
                        f"{'met' if mid['time_vs_all'] <= t else 'missed'}), {mid['memory_vs_all']:.2f} in peak memory "
                        f"(target <= {m}: {'met' if mid['memory_vs_all'] <= m else 'missed'})"]
        return "\n".join(out)
    out = _table(["layers", "trainable", "sampling s", "x all", "update s", "x all", "floor s", "of floor",
                  "peak MiB", "x all"],
                 [[r["layers"], f"{r['trainable_params']:,}", f"{r['sampling_s']:.2f}", f"{r['sampling_vs_all']:.2f}",
                   f"{r['step_s']:.2f}", f"**{r['time_vs_all']:.2f}**", f"{r['floor_s']:.2f}",
                   f"{r['floor_fraction']:.2f}", f"{r['peak_mem_bytes'] / 2**20:.0f}",
                   f"{r['memory_vs_all']:.2f}"] for r in rows])
    layers = [r for r in rows if r["layers"].isdigit()]

    out.append("")

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    if len(layers) >= 3:
        first, mid, last = layers[0], layers[len(layers) // 2], layers[-1]
        tt = TRAIN_TARGETS
        out += ["- update time / all: " + "; ".join(
            f"layer {r['layers']} {r['time_vs_all']:.2f} (target <= {tt[k]}: {verdict(r['time_vs_all'] <= tt[k])})"
            for r, k in ((first, "first"), (mid, "middle"), (last, "last"))),
            f"- layer {mid['layers']} peak memory / all: {mid['memory_vs_all']:.3f} (target <= {tt['middle_memory']}: "
            f"{verdict(mid['memory_vs_all'] <= tt['middle_memory'])}); its sampling time / all's: "
            f"{mid['sampling_vs_all']:.2f} (target within {tt['middle_sampling']:.0%}: "
            f"{verdict(abs(mid['sampling_vs_all'] - 1) <= tt['middle_sampling'])})"]
    gflops = data.get("matmul_gflops")
    if gflops:
        from onelayer.benchmarks.train_step import dtype_label

        dt = dtype_label(data)
        if dt != "fp32":
            out.append(f"- the model computes in {dt} (`--dtype {data['dtype']}`; the trained tensors and their optimizer "
                       "state stay fp32)")
        out.append(f"- floor: the update's matmul FLOPs over this machine's measured {dt} matmul throughput, "
                   f"{gflops:.1f} GFLOP/s; `of floor` = floor / measured")
    sampled = [r for r in rows if "sampling_flops" in r]
    if sampled and gflops:
        out.append("- sampling floor (every block forward over the sampled tokens, the head over the generated or "
                   "candidate tokens, at that throughput) against the sampling time: " + "; ".join(
                       f"`{r['layers']}` {r['sampling_flops'] / (gflops * 1e9):.2f} s of {r['sampling_s']:.2f} s "
                       f"({r['sampled_tokens']} tokens)" for r in sampled))
    out.append("- a whole step (sampling + update): " + "; ".join(
        f"`{r['layers']}` {r['sampling_s'] + r['step_s']:.1f} s" for r in rows))
    ref = rows[-1]
    batch = (f"the {data['preset']} preset's {data['domain']} batch" if data.get("preset")
             else f"{data.get('rollouts', '?')} rollouts of up to {data.get('response_tokens', '?')} response tokens")
    out.append(f"- {batch}: {ref.get('rows', '?')} rows, {ref.get('tokens', '?')} tokens forwarded by the update, "
               f"{ref.get('response_tokens', '?')} scored by the LM head; load average before: "
               f"{', '.join(map(str, data.get('load_before', []))) or 'not recorded'}")
    return "\n".join(out)


def bench_rollout(root: Path, rel: str) -> str:
    """``bench.json``'s rollout section: tokens/s per engine and batch against ``generate``, the llama.cpp
    targets, the one-layer sync and the engine-vs-HF log-prob gap."""
    data = _section(root, rel, "rollout")
    targets = {1: SPEED_TARGETS["llamacpp_batch1"], 64: SPEED_TARGETS["llamacpp_batch64"]}
    rows = []
    for r in data["rows"]:
        target = ""
        if r["engine"] == "llamacpp" and r["batch"] in targets:
            t = targets[r["batch"]]
            target = f">= {t:g}: {'met' if r['speedup_vs_generate'] >= t else 'missed'}"
        x = f"{r['speedup_vs_generate']:.2f}"
        rows.append([r["engine"], r["batch"], r["tokens"], f"{r['seconds_per_batch']:.2f}", f"{r['tokens_per_s']:.1f}",
                     f"**{x}**" if target else x, target])
    out = _table(["engine", "batch", "tokens", "s/batch", "tokens/s", "x generate", "target"], rows)
    eng = data.get("engines", {}).get("llamacpp", {})
    if "sync_tensors" in eng:
        out += ["", f"- llamacpp `sync_weights` of the middle layer: {eng['sync_tensors']} tensors, "
                    f"{eng['sync_bytes'] / 2**20:.1f} MiB, {1000 * eng['sync_s_median']:.1f} ms (median)"]
    lp = eng.get("logprob_mismatch")
    if lp:
        out.append(f"- log-prob |llamacpp - HF| on {lp['tokens']} sampled tokens: mean {lp['mean_abs']:.4f}, "
                   f"p99 {lp['p99_abs']:.3f}, max {lp['max_abs']:.3f} nats")
    load = ", ".join(map(str, data.get("load_before", []))) or "not recorded"
    out.append(f"- {data['repeats']} timed calls per row; load average (1, 5, 15 min) before the section: {load}")
    return "\n".join(out)


def bench_alfworld(root: Path, rel: str) -> str:
    """``bench.json``'s ALFWorld section: env steps/s with 1 and N workers, alone and with the LLM acting."""
    data = _section(root, rel, "alfworld")
    env = data["env_only"]
    one = env[0]["steps_per_s"]
    t = SPEED_TARGETS["workers_per_worker"]
    rows = []
    for r in env:
        w = r["num_workers"]
        target = "" if w < 2 else f">= {t:g} x {w} = {t * w:g}: {'met' if r['steps_per_s'] / one >= t * w else 'missed'}"
        x = f"{r['steps_per_s'] / one:.2f}"
        rows.append([r["mode"], f"{r['steps_per_s']:.1f}", f"**{x}**" if target else x, "", target])
    llm_one = data["with_llm"][0]["steps_per_s"]
    for r in data["with_llm"]:
        rows.append([f"{r['episodes']} episodes + LLM ({r['engine']}), {r['workers']} worker(s)",
                     f"{r['steps_per_s']:.2f}", f"{r['steps_per_s'] / llm_one:.2f}",
                     f"{r['llm_seconds']:.1f} of {r['seconds']:.1f}", ""])
    return "\n".join(_table(["configuration", "steps/s", "x 1 worker", "LLM s of total s", "target"], rows))


def alfworld_steps(root: Path, rel: str) -> str:
    """``alfworld_steps.json``: env steps/s of random admissible actions in-process and with N workers."""
    data = _json(_path(root, rel, "the alfworld_steps benchmark JSON"))
    rows = data["results"]
    one = next((r["steps_per_s"] for r in rows if r["num_workers"] == 1), None)
    table = _table(["configuration", "steps/s", "x in-process (same envs)", "x 1 worker", "startup s", "episodes"],
                   [[r["mode"], f"{r['steps_per_s']:.1f}", f"{r['speedup_vs_in_process']:.2f}",
                     "" if not one or not r["num_workers"] else f"{r['steps_per_s'] / one:.2f}",
                     f"{r['startup_s']:.2f}", r["episodes_finished"]] for r in rows])
    return "\n".join(table)


def bench_history(root: Path, rel: str) -> str:
    """Earlier rollout benchmark runs (each a stored ``bench.json``): llamacpp at batch 1 and 64 and hf at 64."""
    d = _path(root, rel, "a folder of earlier bench.json files")
    rows = []
    for p in sorted(d.glob("*.json")):
        data = _json(p)
        ro = data["rollout"]
        by = {(r["engine"], r["batch"]): r for r in ro["rows"]}
        cells = []
        for key in (("llamacpp", 1), ("llamacpp", 64), ("hf", 64)):
            r = by.get(key)
            cells.append("-" if r is None else f"{r['tokens_per_s']:.1f} ({r['speedup_vs_generate']:.2f}x)")
        rows.append([f"`{p.name}`", data["machine"].get("threads"), ", ".join(map(str, ro.get("load_before", []))),
                     ro["repeats"], *cells])
    return "\n".join(_table(["run", "threads", "load before", "timed calls", "llamacpp batch 1 tokens/s (x generate)",
                             "llamacpp batch 64", "hf batch 64"], rows))


def gpu_measured(root: Path, rel: str) -> str:
    """The GPU benchmark's figures from ``gpu.json`` (``benchmarks/gpu.py --out``); every row "not yet measured"
    while no such file is stored."""
    p = root / rel
    figures = ["vLLM tokens/s", "sync time, one layer", "sync time, all tensors", "step time, one layer",
               "step time, `--layers all`", "peak GPU memory, one layer", "peak GPU memory, `--layers all`"]
    if not p.exists():
        rows = [[f, "not yet measured"] for f in figures]
        rows.append(["log-prob mismatch vLLM vs trainer (mean / max)", "not yet measured"])
        return "\n".join(_table(["figure", "value"], rows))
    data = _json(p)
    v, steps = data["vllm"], data["train_step"]
    one, every = steps[0], steps[-1]
    s = v["sync"]
    values = [f"{v['tokens_per_s']:.0f} ({v['generated_tokens']} tokens, {v['prompts']} prompts)",
              f"{1000 * s['layer']['seconds_median']:.1f} ms ({s['layer']['tensors']} tensors, "
              f"{s['layer']['bytes'] / 2**20:.1f} MiB)",
              f"{1000 * s['all']['seconds_median']:.1f} ms ({s['all']['tensors']} tensors, "
              f"{s['all']['bytes'] / 2**20:.1f} MiB)",
              f"{one['step_s']:.2f} s (`--layers {one['layers']}`)", f"{every['step_s']:.2f} s",
              f"{one['peak_mem_bytes'] / 2**30:.2f} GiB", f"{every['peak_mem_bytes'] / 2**30:.2f} GiB"]
    rows = [[f, x] for f, x in zip(figures, values)]
    rows.append(["log-prob mismatch vLLM vs trainer (mean / max)",
                 "not in gpu.json: a CUDA training run logs it per step (`logprob_mismatch_*` in metrics.jsonl)"])
    return "\n".join(_table(["figure", f"{v['model']} ({data['machine'].get('gpu', data['machine'].get('cpu', ''))})"],
                            rows))


def profile_step(root: Path, rel: str) -> str:
    """The step profile (``benchmarks/profile_step.py``): per phase its wall time, the FLOP floor, the matmuls'
    achieved throughput, and the seconds and share of each kind of op."""
    from onelayer.benchmarks.profile_step import KINDS

    data = _json(_path(root, rel, "profile"))
    rows = []
    for phase in ("sampling", "update"):
        p = data["phases"][phase]
        rows.append([phase, f"{p['wall_s']:.2f}", f"{p['floor_s']:.2f}", f"{p['matmul_gflops']:.0f}"]
                    + [f"{p['by_kind_s'][k]:.2f} ({p['by_kind_s'][k] / p['wall_s']:.0%})" for k in KINDS])
    out = _table(["phase", "wall s", "floor s", "matmul GFLOP/s"] + [f"{k} s" for k in KINDS], rows)
    where = f"the {data['preset']} preset's {data['domain']} batch" if data.get("preset") else "`onelayer train`'s math defaults"
    out += ["", f"- layers {data['layers']}, {where}; {data['threads']} threads; the machine's fp32 matmul throughput "
                f"{data['matmul_gflops']:.1f} GFLOP/s (floor = the phase's matmul FLOPs at it); load average before: "
                f"{', '.join(str(x) for x in data['load_before'])}",
            "- outside any profiled op (the Python around them): " + "; ".join(
                f"{ph} {data['phases'][ph]['wall_s'] - sum(data['phases'][ph]['by_kind_s'].values()):.2f} s "
                f"({1 - sum(data['phases'][ph]['by_kind_s'].values()) / data['phases'][ph]['wall_s']:.0%})"
                for ph in ("sampling", "update")),
            "- largest ops, sampling: " + ", ".join(f"{n} {s:.2f} s" for n, s in data["phases"]["sampling"]["top_ops"][:5]),
            "- largest ops, update: " + ", ".join(f"{n} {s:.2f} s" for n, s in data["phases"]["update"]["top_ops"][:5])]
    return "\n".join(out)


def probe_check(root: Path, rel: str, probe: str) -> str:
    """A probe's layer scores against a sweep's measured ``C_l`` (what ``onelayer report SWEEP --probe PROBE``
    prints): per method Spearman and Kendall with bootstrap CIs over the sweep's seeds, the permutation p-value,
    top-K overlaps and the probe's cost as a fraction of the sweep."""
    from onelayer.benchmarks.report import probe_agreement, probe_markdown

    _, meta, results = _sweep(root, rel)
    agreement = probe_agreement(results, meta, _path(root, probe, "a probe directory"))
    agreement["probe_dir"] = probe
    return probe_markdown(agreement).rstrip()


BUILDERS: dict[str, Callable[..., str]] = {
    "sweep-summary": sweep_summary, "sweep-jobs": sweep_jobs, "sweep-scales": sweep_scales, "tune": tune,
    "compare": compare, "compare-runs": compare_runs,
    "study-greedy": study_greedy, "study-sampled": study_sampled, "study-pooled": study_pooled,
    "study-overview": study_overview, "study-algos": study_algos, "study-runs": study_runs,
    "study-cost": study_cost, "lr-probes": lr_probes,
    "train-step": train_step, "bench-rollout": bench_rollout, "bench-alfworld": bench_alfworld,
    "alfworld-steps": alfworld_steps, "bench-history": bench_history, "gpu-measured": gpu_measured,
    "profile-step": profile_step, "rounding-runs": rounding_runs, "probe-check": probe_check,
}
"""KIND -> builder ``(results_dir, PATH, **options) -> markdown``."""


# ---------------------------------------------------------------- the documents


_OPEN = re.compile(r"^<!-- results:(table|text|hand) (\S.*?) -->$")
_CLOSE = re.compile(r"^<!-- /results:(table|text|hand) -->$")


@dataclass
class Block:
    """One marked block of a document: its kind (table, text, hand), its spec and where its body lies."""

    kind: str
    spec: str
    start: int
    """Index of the opening marker line."""
    end: int
    """Index of the closing marker line."""
    body: list[str]

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.spec}'"


def parse(text: str, doc: str) -> tuple[list[Block], list[str]]:
    """The blocks of a document and its rule breaks (a table outside every block, a hand block not listed in
    NOT_GENERATED). A marker that is not closed, or closed by another kind, is a UserError."""
    lines = text.split("\n")
    blocks: list[Block] = []
    problems: list[str] = []
    open_: tuple[str, str, int] | None = None
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        m, c = _OPEN.match(line), _CLOSE.match(line)
        if m:
            if open_:
                raise UserError(f"{doc} line {i + 1}: a results block opens inside the {open_[0]} block opened at "
                                f"line {open_[2] + 1}: close that one first")
            open_ = (m.group(1), m.group(2).strip(), i)
        elif c:
            if not open_ or open_[0] != c.group(1):
                raise UserError(f"{doc} line {i + 1}: `{line}` closes no open results:{c.group(1)} block")
            blocks.append(Block(open_[0], open_[1], open_[2], i, lines[open_[2] + 1:i]))
            open_ = None
        elif not open_ and not fenced and line.startswith("|") and not lines[i - 1].startswith("|"):
            problems.append(f"{doc} line {i + 1}: a table outside every results block: mark it "
                            "`<!-- results:table KIND PATH -->` (generated) or `<!-- results:hand NAME -->` "
                            "(NAME listed in benchmarks/results.py NOT_GENERATED with the reason)")
    if open_:
        raise UserError(f"{doc} line {open_[2] + 1}: the results:{open_[0]} block is never closed "
                        f"(`<!-- /results:{open_[0]} -->`)")
    for b in blocks:
        if b.kind == "hand" and b.spec not in NOT_GENERATED:
            problems.append(f"{doc} line {b.start + 1}: hand-recorded table {b.spec!r} is not listed in "
                            "NOT_GENERATED (benchmarks/results.py): list it with the reason its source is not stored")
    return blocks, problems


def build(spec: str, root: Path) -> str:
    """The markdown a block's ``KIND PATH [key=value ...]`` gives over the stored files in ``root``."""
    kind, *args = spec.split()
    if kind not in BUILDERS:
        raise UserError(f"unknown results block kind {kind!r}: use one of {', '.join(BUILDERS)}")
    if not args or "=" in args[0]:
        raise UserError(f"results block {spec!r} names no PATH (relative to the results directory)")
    opts = {}
    for a in args[1:]:
        k, eq, v = a.partition("=")
        if not eq:
            raise UserError(f"results block {spec!r}: options are key=value, got {a!r}")
        opts[k] = v
    fn = BUILDERS[kind]
    try:
        inspect.signature(fn).bind(root, args[0], **opts)
    except TypeError as e:
        raise UserError(f"results block {spec!r}: {e} (the options of {kind}: see {fn.__name__} in "
                        "benchmarks/results.py)") from None
    return fn(root, args[0], **opts)


@dataclass
class Document:
    """A document's committed text and what its generated blocks give now."""

    name: str
    text: str
    blocks: list[Block]
    generated: dict[int, str]
    """Block index -> generated markdown (generated blocks only)."""
    problems: list[str]

    def rebuilt(self) -> str:
        lines = self.text.split("\n")
        for i in sorted(self.generated, key=lambda i: -self.blocks[i].start):
            b = self.blocks[i]
            lines[b.start + 1:b.end] = self.generated[i].split("\n")
        return "\n".join(lines)

    def stale(self) -> list[str]:
        """One message per generated block that differs from the committed one: its first differing line."""
        out = []
        for i, new in self.generated.items():
            b = self.blocks[i]
            old, new_lines = b.body, new.split("\n")
            if old == new_lines:
                continue
            k = next((j for j, (x, y) in enumerate(zip(old, new_lines)) if x != y), min(len(old), len(new_lines)))
            have = old[k] if k < len(old) else "(end of block)"
            want = new_lines[k] if k < len(new_lines) else "(end of block)"
            out.append(f"{self.name}: {b.label} is stale at line {b.start + 2 + k}:\n  committed:   {have}\n"
                       f"  stored data: {want}")
        return out


def load(root: Path) -> list[Document]:
    """Every document of ``root`` (RESULTS.md required) with its blocks generated from the stored files."""
    if not root.is_dir():
        raise UserError(f"results directory {root} does not exist: run from the repository root (default "
                        "`results`) or pass RESULTS_DIR")
    if not (root / DOCUMENTS[0]).is_file():
        raise UserError(f"{root / DOCUMENTS[0]} does not exist: RESULTS_DIR must hold the RESULTS.md to rebuild")
    docs = []
    for name in DOCUMENTS:
        p = root / name
        if not p.is_file():
            continue
        text = p.read_text(encoding="utf-8")
        blocks, problems = parse(text, name)
        generated = {i: build(b.spec, root) for i, b in enumerate(blocks) if b.kind != "hand"}
        docs.append(Document(name, text, blocks, generated, problems))
    return docs


def check(root: Path) -> list[str]:
    """Every way the committed documents differ from the stored files or break the block rules; empty when none."""
    return problems_of(load(root))


def problems_of(docs: list[Document]) -> list[str]:
    """The rule breaks and stale blocks of loaded documents."""
    return [msg for d in docs for msg in d.problems + d.stale()]


def write(root: Path) -> list[str]:
    """Rewrite every generated block in place (atomically, only documents that change); the rule breaks left."""
    from onelayer.io import atomic_write_text

    problems = []
    for d in load(root):
        new = d.rebuilt()
        if new != d.text:
            atomic_write_text(root / d.name, new)
            print(f"rewrote {len(d.stale())} block(s) of {root / d.name}", file=sys.stderr)
        problems += d.problems
    return problems


def main(argv: list[str] | None = None) -> int:
    """Print, check (exit 1 when stale) or rewrite the generated blocks of RESULTS_DIR's documents."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", nargs="?", default="results", type=Path,
                   help="the folder of stored results holding RESULTS.md (default: ./results)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when a committed block differs from the data")
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks in place")
    args = p.parse_args(argv)
    try:
        if args.check:
            docs = load(args.results_dir)
            problems = problems_of(docs)
            for msg in problems:
                print(msg)
            if not problems:
                n = sum(len(d.generated) for d in docs)
                print(f"{n} generated blocks match the stored files in {args.results_dir}")
            return 1 if problems else 0
        if args.write:
            problems = write(args.results_dir)
            for msg in problems:
                print(msg)
            return 1 if problems else 0
        for d in load(args.results_dir):
            for i, text in d.generated.items():
                print(f"<!-- {d.name}: results:{d.blocks[i].kind} {d.blocks[i].spec} -->\n{text}\n")
            for msg in d.problems:
                print(msg, file=sys.stderr)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
