"""``onelayer tune-lr``: the full-parameter learning rate over a small grid, on a sweep's budget.

The paper's rule (MISSION.md): tune the full-parameter lr once, then train every
single-layer and layer-aware configuration with that same lr. This runs
full-parameter RL at each lr of the grid with the same data, budget, seeds and
evaluation as the sweep would, and picks the lr with the best mean in-domain score.

``OUT/lr-<lr>/`` is an ordinary sweep directory per lr (base + full), so
``onelayer sweep --out OUT/lr-<best> --layers ...`` extends the winner into the
sweep itself, reusing its base and full jobs. The base model is evaluated once and
its result copied into every lr's directory (it does not depend on the lr).
``OUT/tune_lr.json`` holds the grid's numbers and the choice; ``OUT/tune_lr.md``
the table. Rerunning resumes: finished jobs are skipped; more lrs, seeds, domains or
algorithms extend the search, other budget, data or evaluation settings are refused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path

from onelayer.benchmarks.sweep import SweepSpec, log_stderr, run_sweep, validate_spec
from onelayer.benchmarks.sweep_results import JobResult, append_result, load_results, results_path
from onelayer.errors import UserError
from onelayer.io import atomic_write_json, atomic_write_text

RESULT_FILE = "tune_lr.json"


def lr_dir(out: Path, lr: float) -> Path:
    return out / f"lr-{lr:g}"


def tune_spec(spec: SweepSpec) -> SweepSpec:
    """The sweep settings of every grid point: base and full only (no single layers, no inserted block), and no
    per-domain ``lr`` in ``train`` (cpu-three-domains records its tuned lrs there; the grid sets the lr)."""
    train = {k: ({o: v for o, v in opts.items() if o != "lr"} if isinstance(opts, dict) else opts)
             for k, opts in spec.train.items()}
    return dataclasses.replace(spec, layers="", insert_layer=None, insert_at=[], baseline=True, full=True,
                               train=train)


def preset_lr(spec: SweepSpec) -> float | None:
    """The lr the spec gives its domains when they share one (a per-domain lr or ``lr``), else None."""
    lrs = {spec.domain_lr(d) for d in spec.domains}
    return lrs.pop() if len(lrs) == 1 else None


def check_grid(lrs: list[float]) -> list[float]:
    if len(lrs) < 2:
        raise UserError(f"--lrs needs at least two learning rates to compare, got {lrs}")
    if any(not lr > 0 for lr in lrs):
        raise UserError(f"--lrs takes positive learning rates, got {lrs}")
    if len(set(lrs)) != len(lrs):
        raise UserError(f"--lrs lists a learning rate twice: {lrs}")
    return sorted(lrs)


def _check_settings(out: Path, spec: SweepSpec, lrs: list[float]) -> None:
    p = out / RESULT_FILE
    if not p.is_file():
        return
    old = json.loads(p.read_text())
    new = json.loads(json.dumps(_identity(spec)))
    old_identity = old.get("identity", {})
    diff = [k for k in new if k in old_identity and old_identity[k] != new[k]]
    if diff:  # (other domains, algorithms, seeds or lrs extend the search)
        raise UserError(f"{out} holds an lr search with other settings ({', '.join(diff)}): use a new --out, "
                        "or the same settings to resume it")


def _identity(spec: SweepSpec) -> dict:
    return dataclasses.replace(tune_spec(spec), lr=None).identity()  # the grid sets the lr


def default_grid(lr: float) -> list[float]:
    """Three points around ``lr``: a third of it, it, and three times it (2 significant digits)."""
    return [float(f"{x:.2g}") for x in (lr / 3, lr, lr * 3)]


def _has_base(sweep_dir: Path, domains: list[str]) -> bool:
    if not results_path(sweep_dir).is_file():
        return False
    have = {r.domain for r in load_results(sweep_dir) if r.method == "base"}
    return set(domains) <= have


def _copy_base(src: Path, dst: Path, domains: list[str]) -> None:
    """The base model's evaluation (run once, in one lr's directory ``src``) into another lr's directory."""
    done = {r.job for r in load_results(dst)} if results_path(dst).is_file() else set()
    for r in load_results(src):
        if r.method != "base" or r.domain not in domains or r.job in done:
            continue
        run_dir = dst / "jobs" / r.job
        if r.run_dir and Path(r.run_dir).is_dir():
            shutil.copytree(r.run_dir, run_dir, dirs_exist_ok=True)
        append_result(dst, dataclasses.replace(r, run_dir=str(run_dir), extra={**r.extra, "copied_from": str(src)}))


def summarize(spec: SweepSpec, lrs: list[float], results: dict[float, list[JobResult]]) -> dict:
    """Per domain and algorithm: each lr's full-parameter scores over seeds, their mean, sd and gain over the base
    model, and the best lr (highest mean; a tie goes to the smaller lr). ``at_edge`` flags a best lr at either end
    of the grid (the optimum may lie outside it)."""
    out: dict = {}
    for domain in spec.domains:
        for algo in spec.algos:
            base = [r.score for rs in results.values() for r in rs if r.domain == domain and r.method == "base"]
            rows = []
            for lr in lrs:
                scores = {r.seed: r.score for r in results.get(lr, []) if r.domain == domain and r.algo == algo
                          and r.method == "full" and r.seed in spec.seeds}
                mean = statistics.fmean(scores.values()) if scores else None
                rows.append({"lr": lr, "scores": {str(s): v for s, v in sorted(scores.items())},
                             "seeds": len(scores), "mean": mean,
                             "sd": statistics.stdev(scores.values()) if len(scores) > 1 else None,
                             "gain": None if mean is None or not base else mean - base[0],
                             "sweep_dir": None})
            scored = [r for r in rows if r["mean"] is not None and r["seeds"] == len(spec.seeds)]
            best = max(scored, key=lambda r: (r["mean"], -r["lr"])) if len(scored) == len(rows) else None
            out[f"{domain}/{algo}"] = {
                "domain": domain, "algo": algo, "base": base[0] if base else None, "lrs": rows,
                "best_lr": best["lr"] if best else None,
                "at_edge": bool(best) and best["lr"] in (lrs[0], lrs[-1]),
                "complete": best is not None}
    return out


def write_tables(out: Path, spec: SweepSpec, lrs: list[float], summary: dict) -> str:
    lines = []
    for key, s in summary.items():
        base = "-" if s["base"] is None else f"{s['base']:.4f}"
        lines += [f"{key}: full-parameter RL, {spec.steps} steps, seeds {spec.seeds}; base {base}", "",
                  "| lr | seeds | score (mean ± sd) | gain over base |", "| --- | --- | --- | --- |"]
        for r in s["lrs"]:
            if r["mean"] is None:
                lines.append(f"| {r['lr']:g} | 0 | - | - |")
                continue
            sd = f" ± {r['sd']:.4f}" if r["sd"] is not None else ""
            mark = " **best**" if r["lr"] == s["best_lr"] else ""
            lines.append(f"| {r['lr']:g} | {r['seeds']} | {r['mean']:.4f}{sd}{mark} | {r['gain']:+.4f} |")
        lines.append("")
        if s["best_lr"] is None:
            lines.append("not finished: rerun the same command to complete the grid")
        else:
            lines.append(f"best lr {s['best_lr']:g}: use `--lr {s['best_lr']:g}` for the sweep and every layer-aware "
                         f"run (or extend `{lr_dir(out, s['best_lr'])}` with `onelayer sweep --out "
                         f"{lr_dir(out, s['best_lr'])} --layers ...`)")
            if s["at_edge"]:
                side = "smallest" if s["best_lr"] == lrs[0] else "largest"
                lines.append(f"the best lr is the grid's {side}: the optimum may lie beyond it; extend --lrs")
        lines.append("")
    text = "\n".join(lines)
    atomic_write_text(out / "tune_lr.md", "# Full-parameter lr search\n\n" + text + "\n")
    return text


def run_tune_lr(spec: SweepSpec, lrs: list[float], out: str | Path, progress: bool = True, log=log_stderr) -> dict:
    """Run (or resume) the grid and return what ``OUT/tune_lr.json`` holds."""
    lrs = check_grid(list(lrs))
    base_spec = tune_spec(spec)
    validate_spec(base_spec)
    out = Path(out)
    _check_settings(out, spec, lrs)
    out.mkdir(parents=True, exist_ok=True)
    record = {"identity": _identity(spec), "domains": spec.domains, "algos": spec.algos, "seeds": spec.seeds,
              "spec": dataclasses.asdict(base_spec)}
    atomic_write_json(out / RESULT_FILE, {**record, "grid": lrs, "results": None})  # what a rerun must match
    results: dict[float, list[JobResult]] = {}
    # The base model is evaluated in one lr's directory (one that has it already, when the grid grows) and copied.
    source = next((d for d in (lr_dir(out, lr) for lr in lrs) if _has_base(d, spec.domains)), None)
    for i, lr in enumerate(lrs):
        d = lr_dir(out, lr)
        if source is not None and d != source:
            d.mkdir(parents=True, exist_ok=True)
            _copy_base(source, d, spec.domains)
        log(f"tune-lr: lr {lr:g} ({i + 1}/{len(lrs)}) in {d}")
        results[lr] = run_sweep(dataclasses.replace(base_spec, lr=lr), d, progress=progress, log=log)
        source = source or d
    summary = summarize(spec, lrs, results)
    for s in summary.values():
        for r in s["lrs"]:
            r["sweep_dir"] = str(lr_dir(out, r["lr"]))
    record.update(grid=lrs, results=summary, table=write_tables(out, spec, lrs, summary))
    atomic_write_json(out / RESULT_FILE, record)
    return record
