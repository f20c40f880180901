"""``onelayer compare``: layer-aware methods against full-parameter RL on the same budget.

Methods (K is any positive integer):

- ``full``: every parameter (the paper's baseline).
- ``only-topK``: only the K layers with the highest contribution in the sweep (Only-Bk).
- ``only-bottomK``: only the K lowest (the control).
- ``boost-topK``: every layer trains; the top K at twice the lr (Boost-Bk).
- ``midK``: the K middle layers ``floor(L/2 - K/2) <= l < floor(L/2 + K/2)``; no sweep needed (Mid-k).
- ``lora-matched``: LoRA (peft) on every layer with a rank whose trainable parameter
  count matches K blocks' (K from the first ``...K`` method listed, else 5).
- ``probe-only-topK``, ``probe-only-bottomK``, ``probe-boost-topK``: the same three with the
  layers ranked by ``--rank-by PROBE_DIR[:METHOD]`` (a probe's ranking.json, or another sweep's)
  instead of the sweep. Their own names give them their own job ids, so one directory holds
  Only-top-3 by a probe, Only-top-3 by the sweep and full RL side by side.

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

_METHOD = re.compile(r"^(?:(full|lora-matched)|(probe-)?(only-top|only-bottom|boost-top)(\d+)|mid(\d+))$")
METHOD_NAMES = "full, only-topK, only-bottomK, boost-topK, midK, lora-matched, probe-only-topK, probe-only-bottomK, " \
               "probe-boost-topK"


def _parse_method(method: str) -> tuple[str, int | None, bool]:
    """``(kind, K or None, ranked by --rank-by)`` of a checked method name: ``probe-only-top3`` -> ``(only-top, 3,
    True)``, ``mid5`` -> ``(mid, 5, False)``, ``full`` -> ``(full, None, False)``."""
    m = _METHOD.match(method)
    if m is None:
        raise UserError(f"unknown method {method!r}: use {METHOD_NAMES} (K >= 1)")
    if m.group(1):
        return m.group(1), None, False
    if m.group(3):
        return m.group(3), int(m.group(4)), bool(m.group(2))
    return "mid", int(m.group(5)), False


def parse_methods(text: str) -> list[str]:
    """Comma list of method names, each checked."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise UserError(f"--methods needs at least one of {METHOD_NAMES}")
    for m in methods:
        if _parse_method(m)[1] == 0:
            raise UserError(f"unknown method {m!r}: use {METHOD_NAMES} (K >= 1)")
    return list(dict.fromkeys(methods))


def method_options(method: str, sweep_dir: str, k_default: int, rank_domain: str | None = None,
                   rank_by: str | None = None) -> tuple[str, tuple]:
    """(layer spec, extra TrainConfig options) of a method; ``rank_domain``: the domain whose ranking the ranked
    methods (only-top, only-bottom, boost-top) use (default: the trained domain); ``rank_by``: ``DIR[:METHOD]``
    whose ranking the ``probe-`` methods use in place of ``sweep_dir``'s (a UserError when they have none)."""
    kind, k, by_probe = _parse_method(method)
    ranked = (("rank_domain", rank_domain),) if rank_domain else ()
    if by_probe and not rank_by:
        raise UserError(f"method {method} ranks the layers by a probe: pass --rank-by PROBE_DIR[:METHOD]")
    source = rank_by if by_probe else sweep_dir
    if kind == "full":
        return "all", ()
    if kind == "lora-matched":
        return "all", (("lora_matched_to", f"mid:{k_default}"),)
    if kind == "only-top":
        return f"top:{k}@{source}", ranked
    if kind == "only-bottom":
        return f"bottom:{k}@{source}", ranked
    if kind == "boost-top":
        return "all", (("layer_lr", f"top:{k}@{source}=2x"), *ranked)
    return f"mid:{k}", ()


def compare_jobs(methods: list[str], sweep_dir: str, domains: list[str], algos: list[str], seeds: list[int],
                 rank_domain: str | None = None, rank_by: str | None = None) -> list[Job]:
    """The base model once per domain, then every method per domain, seed and algorithm (job ids keyed by the
    method's name: ``math/grpo/s3/only-top3``, ``math/grpo/s3/probe-only-top3``)."""
    ks = [k for m in methods for k in [_parse_method(m)[1]] if k]
    k_default = ks[0] if ks else 5
    jobs = [Job(d, "none", -1, "base", "none") for d in domains]
    for d in domains:
        for seed in seeds:
            for algo in algos:
                for method in methods:
                    spec, opts = method_options(method, str(sweep_dir), k_default, rank_domain, rank_by)
                    jobs.append(Job(d, algo, seed, method, spec, None, opts))
    return jobs


# The settings a --preset replaces: what a domain trains on and how it is scored (the model stays the sweep's).
SETTINGS_FILE = "compare_settings.json"
PRESET_FIELDS = ("algos", "steps", "lr", "single_layer_lr_scale", "suites", "eval_items", "train")


def run_compare(sweep_dir: str | Path, methods: list[str], out: str | Path, domains: list[str] | None = None,
                seeds: list[int] | None = None, steps: int | None = None, progress: bool = True,
                log=log_stderr, rank_domain: str | None = None, preset: str | None = None,
                rank_by: str | None = None) -> Path:
    """Run every method on the sweep's settings; write and return ``compare.md`` (arguments: ``plan_compare``)."""
    spec, jobs, rank_by = _plan(sweep_dir, methods, domains, seeds, steps, rank_domain, preset, rank_by, log)
    out = Path(out)
    settings = out / SETTINGS_FILE
    previous = json.loads(settings.read_text()).get("rank_by") if settings.is_file() else None
    # A probe-* job id does not say which ranking picked its layers: a directory holds one ranking's.
    if rank_by and previous and previous != rank_by and any((out / "jobs").glob("*/*/*/probe-*")):
        raise UserError(f"{out} holds probe-* runs ranked by {previous}, not {rank_by}: use a new --out, or "
                        f"--rank-by {previous} to resume or extend them")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings, {"sweep": str(Path(sweep_dir).resolve()), "rank_domain": rank_domain,
                                 "preset": preset, "methods": methods, "rank_by": rank_by or previous})
    run_sweep(spec, out, progress=progress, log=log, jobs=jobs)
    return write_compare(out, methods)


def plan_compare(sweep_dir: str | Path, methods: list[str], domains: list[str] | None = None,
                 seeds: list[int] | None = None, steps: int | None = None, rank_domain: str | None = None,
                 preset: str | None = None, log=log_stderr, rank_by: str | None = None) -> tuple[SweepSpec, list[Job]]:
    """The comparison's settings and jobs.

    ``rank_domain``: rank the layers by that domain of the sweep (e.g. math) while
    training on ``domains`` (e.g. agentic): does a ranking transfer across domains?
    ``preset``: take the algorithm, budget, lr, train options and suites from that
    sweep preset instead of the sweep (its domains are the default ``domains``), so a
    domain the sweep never trained gets its own settings; the model stays the sweep's.
    ``rank_by``: ``PROBE_DIR[:METHOD]`` (``onelayer probe``'s directory, or another sweep's) whose ranking the
    ``probe-`` methods use; it must rank the sweep's model and the ranked domain, and is checked here, before
    any job runs. Its jobs name it as ``DIR:METHOD`` with DIR absolute and METHOD explicit (default: the first
    listed), so every job and a resumed one rank by the same scores.
    """
    return _plan(sweep_dir, methods, domains, seeds, steps, rank_domain, preset, rank_by, log)[:2]


_RANKED_KINDS = ("only-top", "only-bottom", "boost-top")


def _plan(sweep_dir, methods, domains, seeds, steps, rank_domain, preset, rank_by, log):
    """``plan_compare``'s spec and jobs, and ``rank_by`` as its jobs name it (None without one)."""
    parsed = [_parse_method(m) for m in methods]
    by_probe = [k for kind, k, probe in parsed if probe]
    by_sweep = any(kind in _RANKED_KINDS and not probe for kind, _, probe in parsed)
    if rank_by is not None and not by_probe:
        raise UserError("--rank-by ranks only the probe-* methods (probe-only-topK, probe-only-bottomK, "
                        "probe-boost-topK) and --methods lists none: e.g. --methods full,only-top3,probe-only-top3")
    if by_probe and rank_by is None:
        raise UserError(f"{', '.join(m for m, p in zip(methods, parsed) if p[2])} rank the layers by a probe: "
                        "pass --rank-by PROBE_DIR[:METHOD]")
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
    if rank_domain is not None and (by_sweep or not by_probe):
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
    if rank_by is not None:
        rank_by = _check_rank_by(rank_by, max(by_probe), spec, rank_domain, meta.get("num_layers"))
    return spec, compare_jobs(methods, str(sweep_dir), spec.domains, spec.algos, seeds, rank_domain, rank_by), rank_by


def _check_rank_by(rank_by: str, k: int, spec: SweepSpec, rank_domain: str | None, num_layers: int | None) -> str:
    """``rank_by`` as ``ABSOLUTE_DIR:METHOD`` once it ranks ``k`` layers of every ranked domain of ``spec.model``."""
    from onelayer.benchmarks.sweep import domain_name
    from onelayer.benchmarks.sweep_results import RESULTS_FILE
    from onelayer.training.layers import RANKING_FILE, resolve_ranked_spec

    for candidate in (rank_by, re.sub(r":[A-Za-z][\w-]*$", "", rank_by)):  # DIR[:METHOD]
        if (Path(candidate) / RESULTS_FILE).is_file():
            write_ranking(candidate)  # another sweep: rank by its current results (as `train` does)
            break
    for d in spec.domains:  # a missing probe, another domain, an unknown method or too few layers: one line here
        where = resolve_ranked_spec(f"top:{k}@{rank_by}", rank_domain or domain_name(d))
    info = json.loads((Path(where.sweep_dir) / RANKING_FILE).read_text())
    if info.get("model") is not None and info["model"] != spec.model:
        raise UserError(f"--rank-by {rank_by} ranked the layers of {info['model']}, the sweep trains {spec.model}: a "
                        "ranking only holds for its model; probe the sweep's model")
    if info.get("num_layers") is not None and num_layers is not None and int(info["num_layers"]) != int(num_layers):
        raise UserError(f"--rank-by {rank_by} ranked {info['num_layers']} layers, the sweep's model has {num_layers}")
    return f"{Path(where.sweep_dir).resolve()}:{where.method}"


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
                (f"; probe-* methods: {st['rank_by']}" if st.get("rank_by") else "") +
                (f"; settings of preset {st['preset']}" if st.get("preset") else "; the sweep's settings") + ".\n\n")
    atomic_write_text(out / "compare.md", "# Layer-aware methods vs full-parameter RL\n\n" + head + text + "\n")
    atomic_write_json(out / "compare.json", {"rows": rows})
    atomic_write_text(out / "summary.txt", text + "\n")
    return out / "compare.md"
