"""``onelayer compare``: layer-aware methods against full-parameter RL on the same budget.

Methods (K is any positive integer):

- ``full``: every parameter (the paper's baseline).
- ``only-topK``: only the K layers with the highest contribution in the sweep (Only-Bk).
- ``only-bottomK``: only the K lowest (the control).
- ``boost-topK``: every layer trains; the top K at twice the lr (Boost-Bk).
- ``midK``: the K middle layers ``floor(L/2 - K/2) <= l < floor(L/2 + K/2)``; no sweep needed (Mid-k).
- ``lora-matched``: LoRA (peft) on every layer with a rank whose trainable parameter
  count matches K blocks' (K from the first ``...K`` method listed, else 5).

Every method trains with the sweep's data, budget, lr and algorithm on seeds the
sweep did not use (default: the sweep's largest seed + 1, + 2, + 3), so the
comparison is not fit to the noise that picked the layers. The base model is
evaluated once per domain. Results go to ``COMPARE_DIR/results.jsonl`` (same
store as a sweep: resumable, extendable) and ``COMPARE_DIR/compare.md`` / ``.json``.

``--rank-domain math`` ranks by the sweep's math results whatever domain trains, and
``--preset cpu-agentic`` takes that preset's algorithm, budget, lr, train options,
suites and domains: together they test whether a math ranking carries over to a
domain the sweep never trained.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from onelayer.benchmarks.contribution import bootstrap_mean_ci, contribution_over_seeds
from onelayer.benchmarks.sweep import SPEC_FILE, Job, SweepSpec, log_stderr, preset_spec, run_sweep
from onelayer.benchmarks.sweep_results import JobResult, load_results, write_ranking
from onelayer.errors import UserError
from onelayer.io import atomic_write_json, atomic_write_text

_METHOD = re.compile(r"^(full|lora-matched|only-top(\d+)|only-bottom(\d+)|boost-top(\d+)|mid(\d+))$")


def parse_methods(text: str) -> list[str]:
    """Comma list of method names, each checked."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods needs at least one of full, only-topK, only-bottomK, boost-topK, midK, lora-matched")
    for m in methods:
        if not _METHOD.match(m) or any(g == "0" for g in _METHOD.match(m).groups()[1:] if g):
            raise UserError(f"unknown method {m!r}: use full, only-topK, only-bottomK, boost-topK, midK (K >= 1) "
                            "or lora-matched")
    return list(dict.fromkeys(methods))


def method_options(method: str, sweep_dir: str, k_default: int, rank_domain: str | None = None) -> tuple[str, tuple]:
    """(layer spec, extra TrainConfig options) of a method; ``rank_domain``: the sweep domain whose ranking
    the ranked methods (only-top, only-bottom, boost-top) use (default: the trained domain)."""
    m = _METHOD.match(method)
    ranked = (("rank_domain", rank_domain),) if rank_domain else ()
    if method == "full":
        return "all", ()
    if method == "lora-matched":
        return "all", (("lora_matched_to", f"mid:{k_default}"),)
    if m.group(2):
        return f"top:{m.group(2)}@{sweep_dir}", ranked
    if m.group(3):
        return f"bottom:{m.group(3)}@{sweep_dir}", ranked
    if m.group(4):
        return "all", (("layer_lr", f"top:{m.group(4)}@{sweep_dir}=2x"), *ranked)
    return f"mid:{m.group(5)}", ()


def compare_jobs(methods: list[str], sweep_dir: str, domains: list[str], algos: list[str], seeds: list[int],
                 rank_domain: str | None = None) -> list[Job]:
    ks = [int(g) for m in methods for g in _METHOD.match(m).groups()[1:] if g]
    k_default = ks[0] if ks else 5
    jobs = [Job(d, "none", -1, "base", "none") for d in domains]
    for d in domains:
        for seed in seeds:
            for algo in algos:
                for method in methods:
                    spec, opts = method_options(method, str(sweep_dir), k_default, rank_domain)
                    jobs.append(Job(d, algo, seed, method, spec, None, opts))
    return jobs


# The settings a --preset replaces: what a domain trains on and how it is scored (the model stays the sweep's).
SETTINGS_FILE = "compare_settings.json"
PRESET_FIELDS = ("algos", "steps", "lr", "single_layer_lr_scale", "suites", "eval_items", "train")


def run_compare(sweep_dir: str | Path, methods: list[str], out: str | Path, domains: list[str] | None = None,
                seeds: list[int] | None = None, steps: int | None = None, progress: bool = True,
                log=log_stderr, rank_domain: str | None = None, preset: str | None = None) -> Path:
    """Run every method on the sweep's settings; write and return ``compare.md`` (arguments: ``plan_compare``)."""
    spec, jobs = plan_compare(sweep_dir, methods, domains, seeds, steps, rank_domain, preset, log)
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out) / SETTINGS_FILE, {"sweep": str(Path(sweep_dir).resolve()), "rank_domain": rank_domain,
                                                  "preset": preset, "methods": methods})
    run_sweep(spec, out, progress=progress, log=log, jobs=jobs)
    return write_compare(out, methods)


def plan_compare(sweep_dir: str | Path, methods: list[str], domains: list[str] | None = None,
                 seeds: list[int] | None = None, steps: int | None = None, rank_domain: str | None = None,
                 preset: str | None = None, log=log_stderr) -> tuple[SweepSpec, list[Job]]:
    """The comparison's settings and jobs.

    ``rank_domain``: rank the layers by that domain of the sweep (e.g. math) while
    training on ``domains`` (e.g. agentic): does a ranking transfer across domains?
    ``preset``: take the algorithm, budget, lr, train options and suites from that
    sweep preset instead of the sweep (its domains are the default ``domains``), so a
    domain the sweep never trained gets its own settings; the model stays the sweep's.
    """
    sweep_dir = Path(sweep_dir).resolve()
    spec_file = sweep_dir / SPEC_FILE
    if not spec_file.is_file():
        raise UserError(f"{sweep_dir} is not a sweep directory (no {SPEC_FILE}): run `onelayer sweep` first")
    meta = json.loads(spec_file.read_text())
    write_ranking(sweep_dir)  # the ranking the methods' top:K@SWEEP_DIR specs read
    base = SweepSpec.from_dict(meta["spec"])
    if preset is not None:
        ps = SweepSpec.from_dict(preset_spec(preset))
        if ps.model != base.model:
            raise UserError(f"preset {preset!r} trains {ps.model}, the sweep ranked {base.model}: a ranking only "
                            "holds for its model; use a preset for the same model")
        base = dataclasses.replace(base, domains=ps.domains, **{f: getattr(ps, f) for f in PRESET_FIELDS})
    if rank_domain is not None:
        ranked = {r.domain for r in load_results(sweep_dir) if r.method == "layer"}
        if rank_domain not in ranked:
            raise UserError(f"--rank-domain {rank_domain}: sweep {sweep_dir} has single-layer results for "
                            f"{', '.join(sorted(ranked)) or 'no domain'}")
    swept = sorted(meta.get("all", {}).get("seeds", base.seeds))
    if seeds is None:
        seeds = [max(swept) + 1 + i for i in range(3)]
    overlap = sorted(set(seeds) & set(swept))
    if overlap:
        log(f"warning: seeds {overlap} were used by the sweep that ranked the layers; the comparison "
            "can fit that sweep's noise")
    spec = dataclasses.replace(base, domains=domains or base.domains, seeds=seeds, steps=steps or base.steps,
                               layers="", insert_layer=None, insert_at=[], preset=None, executor="local")
    return spec, compare_jobs(methods, str(sweep_dir), spec.domains, spec.algos, seeds, rank_domain)


def write_compare(out: str | Path, methods: list[str] | None = None) -> Path:
    """Table per domain: score, gain over base, fraction of the full gain, wall-clock, peak memory."""
    out = Path(out)
    results = load_results(out)
    domains = list(dict.fromkeys(r.domain for r in results))
    rows, lines = [], []
    for d in domains:
        base = [r for r in results if r.domain == d and r.method == "base"]
        if not base:
            continue
        s_base = base[0].score
        by_method: dict[str, dict[int, JobResult]] = {}
        for r in results:
            if r.domain == d and r.method != "base":
                by_method.setdefault(r.method, {})[r.seed] = r
        order = [m for m in (methods or []) if m in by_method] + sorted(set(by_method) - set(methods or []))
        full = by_method.get("full", {})
        lines += [f"### {d} (base {s_base:.4f})", "",
                  "| method | layers | seeds | score [95% CI] | gain over base | fraction of full gain [95% CI] | "
                  "wall-clock s | peak memory MB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for m in order:
            runs = by_method[m]
            seeds = sorted(runs)
            scores = [runs[s].score for s in seeds]
            mean, lo, hi = bootstrap_mean_ci(scores)
            frac = None
            common = [s for s in seeds if s in full]
            if m != "full" and common:
                frac = contribution_over_seeds([runs[s].score for s in common], [s_base] * len(common),
                                               [full[s].score for s in common])
            wall = float(np.mean([runs[s].wall_s for s in seeds]))
            mem = [runs[s].peak_rss_mb for s in seeds if runs[s].peak_rss_mb is not None]
            layers = runs[seeds[0]].extra.get("selection", runs[seeds[0]].target)
            ci = f" [{lo:.4f}, {hi:.4f}]" if len(seeds) > 1 else ""
            if frac is None:
                ftxt = "1 (reference)" if m == "full" else "-"
            elif not frac.defined:
                ftxt = "undefined (full gain too small)"
            else:
                ftxt = f"{frac.mean:.2f}" + (f" [{frac.ci_low:.2f}, {frac.ci_high:.2f}]" if frac.ci_low is not None else "")
            lines.append(f"| {m} | {layers} | {len(seeds)} | {mean:.4f}{ci} | {mean - s_base:+.4f} | {ftxt} | "
                         f"{wall:.0f} | {np.mean(mem):.0f} |" if mem else
                         f"| {m} | {layers} | {len(seeds)} | {mean:.4f}{ci} | {mean - s_base:+.4f} | {ftxt} | {wall:.0f} | - |")
            rows.append({"domain": d, "method": m, "layers": layers, "seeds": seeds, "scores": scores, "mean": mean,
                         "ci": [lo, hi], "gain": mean - s_base, "base": s_base,
                         "fraction_of_full": None if frac is None or not frac.defined else
                         {"mean": frac.mean, "ci": [frac.ci_low, frac.ci_high]},
                         "wall_s": wall, "peak_mb": float(np.mean(mem)) if mem else None})
        lines.append("")
    text = "\n".join(lines)
    head = ""
    if (out / SETTINGS_FILE).is_file():
        st = json.loads((out / SETTINGS_FILE).read_text())
        head = (f"Ranking: {st['sweep']}" + (f", domain {st['rank_domain']}" if st.get("rank_domain") else
                                             ", each domain its own") +
                (f"; settings of preset {st['preset']}" if st.get("preset") else "; the sweep's settings") + ".\n\n")
    atomic_write_text(out / "compare.md", "# Layer-aware methods vs full-parameter RL\n\n" + head + text + "\n")
    atomic_write_json(out / "compare.json", {"rows": rows})
    atomic_write_text(out / "summary.txt", text + "\n")
    return out / "compare.md"
