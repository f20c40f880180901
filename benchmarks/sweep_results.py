"""The results store of a layer sweep: one JSON line per finished job.

``SWEEP_DIR/results.jsonl`` holds one :class:`JobResult` per finished job
(appended atomically with fsync, so a killed sweep loses at most the job that
was running). Everything downstream (the report, ``--layers top:K@SWEEP_DIR``,
``onelayer compare``) reads the sweep through this module only.

Methods: ``base`` (no training), ``full`` (every parameter), ``layer`` (one
target: a block index, a sub-layer such as ``15.mlp``, or an inserted block
``insert@15``), and any other method name a comparison adds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onelayer.errors import UserError
from onelayer.io import append_jsonl, read_jsonl

RESULTS_FILE = "results.jsonl"


@dataclass
class JobResult:
    """What one finished sweep job measured."""

    job: str
    """Unique job id, e.g. ``math/s0/layer-15`` (also its run directory under ``jobs/``)."""
    domain: str
    """Training domain: math, code, agentic (or an env id's domain)."""
    seed: int
    method: str
    """base, full, layer, or a comparison method name (only-top5, mid5, ...)."""
    target: str
    """What was trained: ``none``, ``all``, a layer spec (``15``, ``15.mlp``, ``12,13``) or ``insert@15``."""
    layer: int | None
    """The block index for single-layer jobs (the insertion depth for inserted blocks); None otherwise."""
    algo: str
    score: float
    """The in-domain score (the training domain's suite metric, 0-1)."""
    scores: dict = field(default_factory=dict)
    """Every evaluated suite's primary metric, by suite name (in-domain and transfer)."""
    lr: float | None = None
    lr_scale: float = 1.0
    """Multiplier applied to the sweep lr for this job (1.0 = the paper's same-lr rule)."""
    run_dir: str | None = None
    wall_s: float = 0.0
    peak_rss_mb: float | None = None
    weight_change: dict = field(default_factory=dict)
    """Full-parameter jobs: the L2 norm of each block's weight change, by block index (as a string)."""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> JobResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def scale_suffix(lr_scale: float) -> str:
    """What a single-layer job's id adds for its lr scale: nothing for 1 (the paper's rule), else ``-x4``."""
    return "" if lr_scale == 1.0 else f"-x{lr_scale:g}"


def done_job_ids(results: list[JobResult]) -> set[str]:
    """The ids of finished jobs. A single-layer job of a sweep with one scale other than 1, recorded before scales
    had their own ids, counts as that scale's job."""
    out = set()
    for r in results:
        suffix = scale_suffix(r.lr_scale) if r.method == "layer" else ""
        out.add(r.job if r.job.endswith(suffix) else r.job + suffix)
    return out


def lr_scales_of(results: list[JobResult]) -> list[float]:
    """The single-layer lr scales a sweep's results hold, smallest first."""
    return sorted({float(r.lr_scale) for r in results if r.method == "layer"})


def primary_lr_scale(results: list[JobResult]) -> float:
    """The scale whose single-layer jobs give a sweep's main contributions and ranking: 1 (the paper's rule) when
    present, else the smallest."""
    scales = lr_scales_of(results)
    return 1.0 if not scales or 1.0 in scales else scales[0]


def results_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / RESULTS_FILE


def append_result(sweep_dir: str | Path, result: JobResult) -> None:
    """Record a finished job (atomic append + fsync)."""
    append_jsonl(results_path(sweep_dir), dataclasses.asdict(result))


def load_results(sweep_dir: str | Path) -> list[JobResult]:
    """Every finished job of a sweep; a later row for the same job id replaces an earlier one."""
    p = results_path(sweep_dir)
    if not Path(sweep_dir).is_dir():
        raise UserError(f"sweep directory {sweep_dir} does not exist: run `onelayer sweep --out {sweep_dir}` first")
    if not p.is_file():
        raise UserError(f"{p} does not exist: {sweep_dir} is not a sweep directory, or no job has finished yet")
    by_job: dict[str, JobResult] = {}
    for row in read_jsonl(p):
        r = JobResult.from_dict(row)
        by_job[r.job] = r
    return list(by_job.values())


def layer_contributions(results: list[JobResult], domain: str, suite: str | None = None,
                        algo: str | None = None, method: str = "layer",
                        lr_scale: float | None = None) -> dict[str, dict[int, float]]:
    """Scores per target for one training domain: ``{target: {seed: score}}``, plus ``base`` and ``full``.

    ``suite`` picks a suite's score (``scores[suite]``, e.g. a transfer suite)
    instead of the in-domain one; ``algo`` keeps one algorithm's jobs when a
    sweep ran several. The base model is evaluated once per domain (its
    greedy/seeded suites do not depend on the training seed), so its score is
    paired with every seed. Single-layer jobs come from one lr scale: ``lr_scale``, or
    by default :func:`primary_lr_scale`.
    """
    scale = primary_lr_scale([r for r in results if r.domain == domain]) if lr_scale is None else float(lr_scale)
    out: dict[str, dict[int, float]] = {}
    seeds = sorted({r.seed for r in results if r.domain == domain and r.method != "base"})
    for r in results:
        if r.domain != domain or r.method not in ("base", "full", method):
            continue
        if algo is not None and r.method != "base" and r.algo != algo:
            continue
        if r.method == "layer" and float(r.lr_scale) != scale:
            continue
        value = r.score if suite is None else r.scores.get(suite)
        if value is None:
            continue
        key = r.method if r.method in ("base", "full") else r.target
        for s in (seeds if r.method == "base" and r.seed < 0 else [r.seed]):
            out.setdefault(key, {})[s] = float(value)
    return out


def layer_ranking(sweep_dir: str | Path, domain: str) -> dict[int, float]:
    """Mean layer contribution per block index for ``domain`` (ratio of seed means, paired seeds).

    Used by ``--layers top:K@SWEEP_DIR``. Raises a UserError when the sweep has no
    results for that domain or lacks its base/full runs. A sweep of several
    single-layer lr scales ranks by :func:`primary_lr_scale` (1 when it ran).
    """
    from onelayer.benchmarks.contribution import layer_contribution

    results = load_results(sweep_dir)
    domains = sorted({r.domain for r in results})
    algos = sorted({r.algo for r in results if r.domain == domain and r.method == "layer"})
    scores = layer_contributions(results, domain, algo=algos[0] if len(algos) == 1 else None)
    if len(algos) > 1:
        raise UserError(f"sweep {sweep_dir} ran several algorithms on {domain!r} ({', '.join(algos)}): "
                        "rank from a sweep of one algorithm")
    if not any(r.domain == domain and r.method == "layer" and r.layer is not None for r in results):
        raise UserError(f"sweep {sweep_dir} has no single-layer results for domain {domain!r} "
                        f"(it has: {', '.join(domains) or 'none'}); use --rank-domain or sweep that domain")
    if "base" not in scores or "full" not in scores:
        raise UserError(f"sweep {sweep_dir} lacks the base or full-parameter run for domain {domain!r}: "
                        "resume the sweep so they finish")
    ranking: dict[int, float] = {}
    scale = primary_lr_scale([r for r in results if r.domain == domain])
    for r in results:
        if r.domain != domain or r.method != "layer" or r.layer is None or r.target != str(r.layer):
            continue
        if float(r.lr_scale) != scale:
            continue
        per_layer = scores[r.target]
        seeds = sorted(set(per_layer) & set(scores["base"]) & set(scores["full"]))
        if not seeds:
            continue
        c = layer_contribution(np.mean([per_layer[s] for s in seeds]), np.mean([scores["base"][s] for s in seeds]),
                               np.mean([scores["full"][s] for s in seeds]))
        if c is None:
            raise UserError(f"sweep {sweep_dir}: the full-parameter gain on {domain!r} is too small to rank layers by "
                            "contribution (|S_full - S_base| < 0.01); train longer or with a larger lr")
        ranking[r.layer] = c
    return ranking


RANKING_FILE = "ranking.json"


def write_ranking(sweep_dir: str | Path) -> Path | None:
    """Write ``SWEEP_DIR/ranking.json``: each domain's layers ranked by measured contribution.

    The layout is a probe's (``methods.METHOD.{scores, ranking, seconds}``, ranking best
    first), one entry per domain with the env it trained on, and the sha256 of the
    results.jsonl it was computed from (a reader refuses a stale one); a domain that cannot be
    ranked yet (no single-layer or full run, too small a full-parameter gain) records why
    under ``error``. Training reads this file for ``--layers top:K@SWEEP_DIR`` (it never
    imports the sweep code). None when the directory holds no results.
    """
    import json

    from onelayer.envs.domain import domain_spec
    from onelayer.io import atomic_write_json

    results = load_results(sweep_dir)
    if not results:
        return None
    spec_path = Path(sweep_dir) / "sweep.json"
    stored = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    domains = {}
    for domain in dict.fromkeys(r.domain for r in results):
        try:
            env = domain_spec(domain).env_id
        except UserError:
            env = None  # a plugin env that is not loaded now: its ranking still stands
        entry: dict = {"env": env}
        try:
            ranking = layer_ranking(sweep_dir, domain)
            order = sorted(ranking, key=lambda layer: (-ranking[layer], layer))
            entry["methods"] = {"contribution": {"scores": {str(k): v for k, v in sorted(ranking.items())},
                                                 "ranking": order, "seconds": None}}
        except UserError as e:
            entry["error"] = str(e)
        domains[domain] = entry
    import hashlib

    digest = hashlib.sha256(results_path(sweep_dir).read_bytes()).hexdigest()
    return atomic_write_json(Path(sweep_dir) / RANKING_FILE, {
        "model": stored.get("spec", {}).get("model"), "num_layers": stored.get("num_layers"),
        "results_sha256": digest, "domains": domains})
