"""The ``onelayer`` command: train, eval, export, envs."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from pathlib import Path
from typing import Optional

import typer
import typer.core

from onelayer.errors import TrainingError, UserError


def _raw_value(args: list[str], opts: list[str]) -> str | None:
    """The text given for an option on the command line (``--flag VALUE`` or ``--flag=VALUE``)."""
    for i, a in enumerate(args):
        for o in opts:
            if a == o and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(o + "="):
                return a[len(o) + 1:]
    return None


class _OneLineErrors(typer.core.TyperGroup):
    """Command-line usage errors (bad flag, wrong value type) print one line and exit 2, like UserError."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        import sys

        try:  # newer typer vendors click; its parser raises these
            from typer._click import exceptions as cx
        except ImportError:
            from click import exceptions as cx

        argv = list(sys.argv[1:] if args is None else args)
        try:
            argv = _load_cli_plugins(argv)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)
        try:
            rv = super().main(argv, prog_name, complete_var, False, **extra)
        except getattr(cx, "NoArgsIsHelpError", ()) as e:
            typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
            sys.exit(2)
        except cx.ClickException as e:
            where = e.ctx.command_path if getattr(e, "ctx", None) else "onelayer"
            msg = e.format_message().rstrip(".")
            param = getattr(e, "param", None)
            raw = _raw_value(argv, list(param.opts)) if param is not None and getattr(param, "opts", None) else None
            if raw is not None and repr(raw) not in msg:
                msg += f" (got {raw!r})"
            typer.echo(f"error: {msg}; see '{where} --help'", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _load_cli_plugins(argv: list[str]) -> list[str]:
    """Import every ``--plugin MODULE`` (any command, repeatable) and return the command line without them.

    The modules are also put in ``$ONELAYER_PLUGINS``, so the processes a command starts (sweep
    workers, Ray tasks on this machine, torchrun ranks) import them when they import onelayer.
    """
    import os

    from onelayer import plugins

    modules, rest = plugins.argv_plugins(argv)
    for m in modules:
        plugins.load_plugin(m)
    if modules:
        have = [m for m in os.environ.get("ONELAYER_PLUGINS", "").split(",") if m]
        os.environ["ONELAYER_PLUGINS"] = ",".join(dict.fromkeys(have + modules))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    return rest


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Layer-targeted RL for LLM agents: train one transformer layer and measure what it recovers.\n\n"
                       "Every command takes --plugin MODULE (repeatable): a module to import first, which registers "
                       "envs (gymnasium.register) and suites (onelayer.register_suite). Installed packages with an "
                       "'onelayer.plugins' entry point are imported always.")
envs_app = typer.Typer(no_args_is_help=True, help="List and check onelayer environments.")
app.add_typer(envs_app, name="envs")
alfworld_app = typer.Typer(no_args_is_help=True, help="ALFWorld data: generate offline games.")
app.add_typer(alfworld_app, name="alfworld")


def _user_errors(fn):
    """User errors print one line and exit with code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except TrainingError as e:
            typer.echo(f"training error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_mapping(text: str, flag: str) -> dict:
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = _parse_value(text)
        if not isinstance(value, dict):
            raise UserError(f"{flag} must be a JSON object or key=value pairs, got {text!r}")
        return value
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise UserError(f"{flag} takes key=value pairs separated by commas (or a JSON object), got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _train_signature():
    from onelayer.training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--config", help="YAML/JSON file of options (same names as the flags); flags override it.")),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--quiet", help="No progress bar.")),
    ]
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        base = typing.get_origin(base[0]) or base[0]
        flag = "--" + f.name.replace("_", "-")
        if base is bool:
            opt = typer.Option(None, f"{flag}/--no-{f.name.replace('_', '-')}", help=f.metadata["help"])
            ann = Optional[bool]
        else:
            ann = Optional[base] if base in (int, float) else Optional[str]
            opt = typer.Option(None, flag, help=f.metadata["help"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=opt))
    return inspect.Signature(params)


def _config_from_flags(config: Path | None, flags: dict, resume: bool = False):
    from onelayer.training.config import TrainConfig, load_config_file

    hints = typing.get_type_hints(TrainConfig)
    data = load_config_file(config) if config else {}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    out = flags.get("out") or data.get("out")
    if resume and out and (Path(out) / "config.json").is_file():
        # --resume starts from the run's stored options; the file and flags given now go on top
        from onelayer.training.checkpoint import read_run_config

        data = {**read_run_config(out)["config"], **data}
    for name, value in flags.items():
        if value is None:
            continue
        hint = hints[name]
        base = typing.get_origin(hint) or hint
        args = typing.get_args(hint)
        if base is dict or dict in args:
            value = _parse_mapping(value, "--" + name.replace("_", "-"))
        elif base is list or list in args:
            value = [v.strip() for v in value.split(",") if v.strip()]
        data[name] = value
    for name in ("also_train", "report_to", "reward_funcs"):
        if isinstance(data.get(name), str):
            data[name] = [v.strip() for v in data[name].split(",") if v.strip()]
    if "layers" in data:
        data["layers"] = str(data["layers"])
    try:
        return TrainConfig.from_dict(data, where=str(config) if config else "flags")
    except TypeError as e:
        raise UserError(f"bad option value: {e}") from None


def _refresh_rankings(texts: list) -> None:
    """Bring SWEEP_DIR/ranking.json up to date for every ``top:K@SWEEP_DIR[:METHOD]`` /
    ``bottom:K@SWEEP_DIR[:METHOD]`` named (in ``--layers``, or ``--layer-lr`` as ``SPEC=LR;SPEC=LR`` or a
    config file's mapping)."""
    import re
    from pathlib import Path as _Path

    from onelayer.benchmarks.sweep_results import RESULTS_FILE, write_ranking

    for text in texts:
        for where in re.findall(r"(?:top|bottom):\d+@([^,=\s;'\"]+)", str(text or ""), re.IGNORECASE):
            # DIR or DIR:METHOD (a directory whose own name ends in :word is tried as itself first, as
            # training.layers reads it)
            for d in dict.fromkeys((where, re.sub(r":[A-Za-z][\w-]*$", "", where))):
                if (_Path(d) / RESULTS_FILE).is_file():
                    write_ranking(d)
                    break


def _train_impl(*, config=None, resume=False, quiet=False, **flags):
    from onelayer.training.trainer import Trainer

    cfg = _config_from_flags(config, flags, resume)
    _refresh_rankings([cfg.layers, cfg.layer_lr or ""])
    if quiet:  # no weight-loading bar either: the output is the result line (or one error line)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    trainer = Trainer(cfg, resume=resume)
    result = trainer.train(progress=not quiet)
    ev = result.final_eval or {}
    metric = trainer.metric
    line = f"run: {result.run_dir}  steps: {result.steps}  {trainer.selection.describe()}"
    if metric in ev:
        base = next((m.get(f"eval/{metric}") for m in result.metrics if m.get("step") == 0), None)
        before = f"base {base:.4f} -> " if base is not None else ""
        line += (f"\neval {metric} on {ev.get('num_items')} held-out items: {before}final {ev[metric]:.4f} "
                 f"({result.run_dir / 'eval.json'})")
    if trainer.dist is None or trainer.dist.is_main:  # --fsdp: one result line for the job
        typer.echo(line)


_train_impl.__signature__ = _train_signature()
app.command("train", help="RL-train the selected layers of a model on an env; writes a run directory.")(_user_errors(_train_impl))


@app.command("eval")
@_user_errors
def eval_cmd(
    run: Optional[Path] = typer.Option(None, "--run", help="Run directory of `onelayer train` (base model + trained.safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to evaluate instead of a run (HF id, dir, .gguf, smollm2-135m)."),
    env: Optional[str] = typer.Option(None, "--env", help="Env id (default: the run's env, else onelayer/Math-v0)."),
    env_kwargs: Optional[str] = typer.Option(None, "--env-kwargs", help="Env options: key=value,... or a JSON object."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the result JSON."),
    num_items: Optional[int] = typer.Option(None, "--num-items", help="Items 0..N-1 of the eval split (default: the run's eval_size, else 256)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Response length (default: the run's, else 20)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (default)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (when temperature > 0)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per engine batch (default: the run's, else 64)."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    suite: Optional[str] = typer.Option(None, "--suite", help="Named suite(s) NAME[,NAME...] instead of --env (see `onelayer suites`)."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="With --suite: passes per item (default: the suite's); the score is their mean (pass@k for code). Greedy choice-format ALFWorld passes differ in action order."),
    vote: Optional[str] = typer.Option(None, "--vote", help="RUN1,RUN2,...: majority vote over these runs' final answers (or saved eval JSONs), with their pairwise Jaccard overlap."),
    self_consistency: Optional[str] = typer.Option(None, "--self-consistency", help="With --vote: a run or model sampled once per vote member and voted, the equal-budget baseline."),
    sc_temperature: float = typer.Option(0.7, "--sc-temperature", help="Sampling temperature for --self-consistency."),
):
    """Score a trained run or a base model on an env's evaluation split; print the metric and write JSON."""
    from onelayer.benchmarks.evaluate import evaluate

    if vote is not None:
        if run or model:
            raise UserError("--vote names the runs itself: drop --run/--model")
        if num_samples is not None:
            raise UserError("--vote members answer once each: drop --num-samples")
        if temperature or seed:
            raise UserError("--vote members answer greedily: drop --temperature/--seed (use --sc-temperature for "
                            "the self-consistency baseline)")
        _eval_vote(vote, suite, env, env_kwargs, num_items, max_new_tokens, batch_size, self_consistency,
                   sc_temperature, device, dtype, out)
        return
    if self_consistency is not None:
        raise UserError("--self-consistency is the baseline of a --vote: add --vote RUN1,RUN2,...")
    if suite is not None:
        if env or env_kwargs or max_new_tokens or temperature or seed:
            raise UserError("--suite fixes the env, item list and sampling settings: drop --env/--env-kwargs/"
                            "--max-new-tokens/--temperature/--seed (or evaluate with --env instead of --suite)")
        _eval_suites(suite, run, model, out, num_items, num_samples, batch_size, device, dtype)
        return
    if num_samples is not None:
        raise UserError("--num-samples goes with --suite (with --env, sample with --temperature/--seed)")
    kwargs = _parse_mapping(env_kwargs, "--env-kwargs") if env_kwargs else None
    res = evaluate(run=str(run) if run else None, model=model, env=env, env_kwargs=kwargs,
                   out=str(out) if out else None, num_items=num_items, max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=seed, batch_size=batch_size, device=device, dtype=dtype)
    what = f"run {run}" if run else f"model {model}"
    typer.echo(f"{what} on {res['env']}: {res['metric']} = {res[res['metric']]:.4f} ({res['num_items']} items)"
               + (f" -> {out}" if out else ""))


def _eval_vote(vote, suite, env, env_kwargs, num_items, max_new_tokens, batch_size, self_consistency, sc_temperature,
               device, dtype, out) -> None:
    from onelayer.benchmarks.vote import VoteResult, run_vote

    if suite is not None and (env or env_kwargs or max_new_tokens):
        raise UserError("--suite fixes the env, item list and sampling settings: drop --env/--env-kwargs/--max-new-tokens")
    members = [m.strip() for m in vote.split(",") if m.strip()]
    kwargs = _parse_mapping(env_kwargs, "--env-kwargs") if env_kwargs else None
    res = run_vote(members, suite=suite, env=env, env_kwargs=kwargs, num_items=num_items,
                   max_new_tokens=max_new_tokens, batch_size=batch_size, self_consistency=self_consistency,
                   sc_temperature=sc_temperature, device=device, dtype=dtype, out=str(out) if out else None)
    v = res["vote"]
    typer.echo(VoteResult(**{k: v[k] for k in v if k != "items"}).summary())
    sc = res["self_consistency"]
    if sc is not None:
        score = sc["vote_score"] if sc["vote_score"] is not None else sc["any_score"]
        what = "majority vote" if sc["vote_score"] is not None else "solved by any sample"
        typer.echo(f"self-consistency of {sc['source']} ({sc['num_samples']} samples at T={sc['temperature']:g}): "
                   f"{what} {score:.4f}; mean pairwise Jaccard "
                   + ("n/a" if sc["mean_jaccard"] is None else f"{sc['mean_jaccard']:.3f}"))
    if out:
        typer.echo(f"-> {out}")


def _eval_suites(suite, run, model, out, num_items, num_samples, batch_size, device, dtype) -> None:
    from onelayer.benchmarks.evaluate import evaluate_suites

    res = evaluate_suites(suite, run=str(run) if run else None, model=model, out=str(out) if out else None,
                          batch_size=batch_size, device=device, dtype=dtype, num_items=num_items,
                          num_samples=num_samples)
    results = res["suites"] if "suites" in res else {res["suite"]: res}
    what = f"run {run}" if run else f"model {model}"
    typer.echo(f"{what}\n{'suite':20s} {'metric':14s} {'value':>8s} {'items':>6s}")
    for name, r in results.items():
        typer.echo(f"{name:20s} {r['metric']:14s} {r[r['metric']]:8.4f} {r['num_items']:6d}")
    for name, why in res.get("missing", {}).items():
        typer.echo(f"{name:20s} {'(missing)':14s} {'-':>8s} {'-':>6s}  {why}")
    if out:
        typer.echo(f"-> {out}")


@app.command("suites")
def suites_cmd():
    """List the named evaluation suites with their env, metric and source (built in or a plugin)."""
    from onelayer.benchmarks.suites import SUITES

    for s in SUITES.values():
        typer.echo(f"{s.name:26s} {s.env:24s} {s.metric:12s} {s.source:12s} {s.description}")


def _parse_seeds(text: str) -> list[int]:
    """``3`` = seeds 0, 1, 2; ``0,5,7`` (or ``5,``) lists them."""
    parts = [t.strip() for t in text.split(",")]
    try:
        if len(parts) == 1:
            n = int(parts[0])
            if n < 1:
                raise UserError(f"--seeds {text}: a count must be >= 1 (or list seeds: 0,5,7)")
            return list(range(n))
        return [int(t) for t in parts if t]
    except ValueError:
        raise UserError(f"--seeds takes a count (3 = seeds 0,1,2) or a comma list (0,5,7), got {text!r}") from None


def _parse_scales(text: str) -> float | list[float]:
    """``4`` = one single-layer lr scale; ``1,4`` lists several (SweepSpec.lr_scales checks the values)."""
    try:
        scales = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--single-layer-lr-scale takes a number or a comma list (1,4), got {text!r}") from None
    return scales[0] if len(scales) == 1 else scales


def _sweep_spec(data: dict, flags: dict, suites: str | None):
    """A SweepSpec from stored/preset settings ``data`` with the command line's ``flags`` (None = not given) on top.

    ``--suites`` is a comma list: a plain ``SUITE`` is used for its own env's domain; ``DOMAIN=SUITE`` (a domain
    name or env id) assigns it, and the plain names after it join that domain (``my/Env-v0=s1,s2,math-l1`` is
    wrong: write ``math-l1,my/Env-v0=s1,s2``)."""
    from onelayer.benchmarks.sweep import SweepSpec

    if suites:
        from onelayer.benchmarks.suites import get_suite
        from onelayer.envs.domain import resolve_env_id

        by_domain: dict = {}
        current = None
        for token in (n.strip() for n in suites.split(",") if n.strip()):
            if "=" in token:
                current, _, token = (t.strip() for t in token.partition("="))
                resolve_env_id(current)  # an unknown domain is a one-line error here
            suite = get_suite(token)
            by_domain.setdefault(current or suite.domain, []).append(token)
        flags = {**flags, "suites": by_domain}
    merged = {**data, **{k: v for k, v in flags.items() if v is not None}}
    given = [k for k in ("steps", "lr") if flags.get(k) is not None]
    if given and isinstance(merged.get("train"), dict):  # --steps / --lr on the command line apply to every domain
        merged["train"] = {d: ({k: v for k, v in o.items() if k not in given} if isinstance(o, dict) else o)
                           for d, o in merged["train"].items()}
    if flags.get("domains") is not None and flags.get("transfer_items") is None and merged.get("transfer_items"):
        from onelayer.envs.domain import domain_spec

        # a preset's item counts for the domains --domains left out go
        names = {n for d in merged["domains"] for n in (d, domain_spec(d).name, domain_spec(d).env_id)}
        merged["transfer_items"] = {k: v for k, v in merged["transfer_items"].items() if k in names}
    return SweepSpec.from_dict(merged)


def _comma_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command("sweep")
@_user_errors
def sweep_cmd(
    out: Path = typer.Option(..., "--out", help="Sweep directory (results.jsonl, jobs/, report/); rerun to resume or extend."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named settings: cpu-math-demo, cpu-math, cpu-code, cpu-agentic, gpu-... (flags override)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model (HF id, dir, .gguf, smollm2-135m)."),
    domains: Optional[str] = typer.Option(None, "--domains", help="math,code,agentic (or env ids). Default: math."),
    algo: Optional[str] = typer.Option(None, "--algo", help="gigpo, grpo, drgrpo, or a comma list to compare algorithms. Default: gigpo."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Single-layer targets: all, or a list/ranges like 0,6,12 or 0-29, 15.mlp, top:K@PROBE_DIR[:METHOD]."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="3 = seeds 0,1,2; 0,5,7 lists them. Default: 3."),
    steps: Optional[int] = typer.Option(None, "--steps", help="RL steps per training job. Default: 10."),
    lr: Optional[float] = typer.Option(None, "--lr", help="The full-parameter lr, used for every job (the paper's rule)."),
    single_layer_lr_scale: Optional[str] = typer.Option(None, "--single-layer-lr-scale", help="Multiply lr for single-layer jobs (recorded); a list (1,4) runs each and the report compares the rankings. Default: 1."),
    suites: Optional[str] = typer.Option(None, "--suites", help="Evaluation suites: SUITE (for its env's domain) or DOMAIN=SUITE[,SUITE] (first = in-domain score)."),
    extra_suites: Optional[str] = typer.Option(None, "--extra-suites", help="Suites evaluated on every job too (transfer)."),
    transfer: Optional[bool] = typer.Option(None, "--transfer/--no-transfer", help="Evaluate every job on every swept domain's in-domain suite (C_all)."),
    eval_items: Optional[int] = typer.Option(None, "--eval-items", help="Items per suite (overrides the suites' own count)."),
    transfer_items: Optional[str] = typer.Option(None, "--transfer-items", help="DOMAIN=N,...: score a domain's in-domain suite on its first N items when it is another domain's transfer target (agentic=10,code=64)."),
    train: Optional[str] = typer.Option(None, "--train", help="TrainConfig options for every job: key=value,... or JSON ({\"math\": {...}} per domain)."),
    insert_layer: Optional[str] = typer.Option(None, "--insert-layer", help="module:factory building a new block to insert and train (e.g. onelayer.training.insert:identity_copy)."),
    at: Optional[str] = typer.Option(None, "--insert-at", "--at", help="Where --insert-layer puts its block: one index or a comma list (as train's --insert-at)."),
    only_inserted: bool = typer.Option(False, "--only-inserted", help="Benchmark only the inserted blocks: no single-layer jobs of existing layers (needs --insert-layer)."),
    baseline: Optional[bool] = typer.Option(None, "--baseline/--no-baseline", help="Evaluate the untrained model (needed for contribution)."),
    full: Optional[bool] = typer.Option(None, "--full/--no-full", help="Run full-parameter RL (needed for contribution)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="local (one job at a time here) or ray (a Ray task per job)."),
    cpus_per_job: Optional[int] = typer.Option(None, "--cpus-per-job", help="Ray: CPUs (and torch threads) per job."),
    gpus_per_job: Optional[float] = typer.Option(None, "--gpus-per-job", help="Ray: GPUs per job."),
    keep_checkpoints: Optional[bool] = typer.Option(None, "--keep-checkpoints/--no-keep-checkpoints", help="Keep each finished job's checkpoints/ (weights again + optimizer state); default: removed once its result is recorded (trained.safetensors stays)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs and exit."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write SWEEP_DIR/report/ at the end."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-job progress bars."),
):
    """Layer sweep: base, full-parameter RL and single-layer RL per domain and seed; layer contribution report."""
    from onelayer.benchmarks.sweep import (
        SPEC_FILE,
        log_stderr,
        plan_jobs,
        preset_spec,
        run_sweep,
    )

    data: dict = {}
    stored = out / SPEC_FILE
    if stored.is_file():
        data = json.loads(stored.read_text())["spec"]
    if preset:
        data.update(preset_spec(preset))
    flags = {
        "model": model, "steps": steps, "lr": lr,
        "single_layer_lr_scale": _parse_scales(single_layer_lr_scale) if single_layer_lr_scale else None,
        "transfer": transfer, "eval_items": eval_items, "insert_layer": insert_layer, "baseline": baseline,
        "full": full, "executor": executor, "cpus_per_job": cpus_per_job, "gpus_per_job": gpus_per_job,
        "keep_checkpoints": keep_checkpoints, "layers": layers,
        "domains": _comma_list(domains), "algos": _comma_list(algo),
        "seeds": _parse_seeds(seeds) if seeds else None,
        "extra_suites": _comma_list(extra_suites),
        "train": _parse_mapping(train, "--train") if train else None,
        "transfer_items": _parse_mapping(transfer_items, "--transfer-items") if transfer_items else None,
    }
    if at:
        try:
            flags["insert_at"] = [int(a) for a in at.split(",") if a.strip()]
        except ValueError:
            raise UserError(f"--insert-at takes block indices (15 or 12,15), got {at!r}") from None
    if only_inserted:
        if layers:
            raise UserError("--only-inserted runs no single-layer jobs: drop --layers")
        flags["layers"] = "none"
    spec = _sweep_spec(data, flags, suites)
    _refresh_rankings([spec.layers])  # a sweep named in --layers is ranked from its current results
    if dry_run:
        from onelayer.benchmarks.sweep import validate_spec

        validate_spec(spec)
        from onelayer.benchmarks.sweep import _num_layers_of

        n = json.loads(stored.read_text()).get("num_layers") if stored.is_file() else _num_layers_of(spec.model)
        from onelayer.benchmarks.sweep import cost_lines
        from onelayer.benchmarks.sweep_results import done_job_ids, load_results, results_path

        done = load_results(out) if results_path(out).is_file() else []
        ids = done_job_ids(done)
        jobs = plan_jobs(spec, n)
        for j in jobs:
            typer.echo(j.id)
        for line in cost_lines(spec, [j for j in jobs if j.id not in ids], done):
            log_stderr(line)
        return
    run_sweep(spec, out, progress=not quiet, log=log_stderr)
    if report:
        _write_and_print_report(out)


@app.command("tune-lr")
@_user_errors
def tune_lr_cmd(
    out: Path = typer.Option(..., "--out", help="Directory of the search (tune_lr.json, tune_lr.md, one sweep directory per lr); rerun to resume."),
    lrs: Optional[str] = typer.Option(None, "--lrs", help="Comma list of full-parameter lrs. Default: a third of, once and three times the preset's (or the trainer's) lr."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Take the budget, data, suites and algorithm of this sweep preset (flags override)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model (HF id, dir, .gguf, smollm2-135m)."),
    domains: Optional[str] = typer.Option(None, "--domains", help="math,code,agentic (or env ids). Default: the preset's, else math."),
    algo: Optional[str] = typer.Option(None, "--algo", help="gigpo, grpo, drgrpo (a comma list tunes each). Default: the preset's, else gigpo."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds per lr: 2 = seeds 0,1; 0,5 lists them. Default: 1 (seed 0)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="RL steps per job (the sweep's budget). Default: the preset's, else 10."),
    suites: Optional[str] = typer.Option(None, "--suites", help="Evaluation suites (first per domain = the score compared)."),
    eval_items: Optional[int] = typer.Option(None, "--eval-items", help="Items per suite (overrides the suites' own count)."),
    train: Optional[str] = typer.Option(None, "--train", help="TrainConfig options for every job: key=value,... or JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-job progress bars."),
):
    """Full-parameter lr over a small grid on a sweep's budget (tune once, then use it for every job: the paper's rule)."""
    from onelayer.benchmarks.tune_lr import RESULT_FILE, default_grid, preset_lr, run_tune_lr
    from onelayer.training.config import TrainConfig

    data: dict = {"seeds": [0]}
    stored = out / RESULT_FILE
    previous = json.loads(stored.read_text()) if stored.is_file() else None
    if previous:
        data.update(previous["spec"])
    if preset:
        from onelayer.benchmarks.sweep import preset_spec

        data.update({k: v for k, v in preset_spec(preset).items() if k not in ("seeds", "layers")})
    flags = {"model": model, "steps": steps, "eval_items": eval_items, "domains": _comma_list(domains),
             "algos": _comma_list(algo), "seeds": _parse_seeds(seeds) if seeds else None,
             "train": _parse_mapping(train, "--train") if train else None}
    spec = _sweep_spec(data, flags, suites)
    if lrs:
        try:
            grid = [float(x) for x in _comma_list(lrs)]
        except ValueError:
            raise UserError(f"--lrs takes a comma list of learning rates (1e-5,3e-5,1e-4), got {lrs!r}") from None
    elif previous:
        grid = previous["grid"]
    else:
        lr = preset_lr(spec)
        grid = default_grid(lr if lr is not None else TrainConfig.lr)
    record = run_tune_lr(spec, grid, out, progress=not quiet)
    typer.echo(record["table"])
    typer.echo(f"lr search: {out / RESULT_FILE}")


@app.command("compare")
@_user_errors
def compare_cmd(
    sweep: Path = typer.Option(..., "--sweep", help="Sweep directory whose layer ranking the methods use."),
    methods: str = typer.Option("full,only-top5,boost-top5,mid5,only-bottom5,lora-matched", "--methods",
                                help="full, only-topK, only-bottomK, boost-topK, midK, lora-matched, and with --rank-by "
                                     "probe-only-topK, probe-only-bottomK, probe-boost-topK (comma list)."),
    out: Path = typer.Option(..., "--out", help="Directory for the comparison (results.jsonl, jobs/, compare.md); rerun to resume."),
    domains: Optional[str] = typer.Option(None, "--domains", help="Domains to compare on (default: the sweep's)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="3 = seeds 0,1,2; 10,11,12 lists them (default: 3 seeds the sweep did not use)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="RL steps per job (default: the sweep's)."),
    rank_domain: Optional[str] = typer.Option(None, "--rank-domain", help="Rank layers by this domain of the sweep (default: each compared domain's own)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Take algorithm, budget, lr, train options, suites and domains from this sweep preset (e.g. cpu-agentic with --rank-domain math)."),
    rank_by: Optional[str] = typer.Option(None, "--rank-by", help="PROBE_DIR[:METHOD] (`onelayer probe`) ranking the probe-* methods' layers; the other methods keep the sweep's ranking."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-job progress bars."),
):
    """Layer-aware methods (Only-Bk, Boost-Bk, Mid-k, LoRA-matched) vs full RL on the same data, budget and seeds."""
    from onelayer.benchmarks.compare import parse_methods, run_compare

    path = run_compare(sweep, parse_methods(methods), out,
                       domains=[d.strip() for d in domains.split(",") if d.strip()] if domains else None,
                       seeds=_parse_seeds(seeds) if seeds else None, steps=steps, progress=not quiet,
                       rank_domain=rank_domain, preset=preset, rank_by=rank_by)
    typer.echo((path.parent / "summary.txt").read_text())
    typer.echo(f"comparison: {path}")


def _write_and_print_report(sweep_dir: Path, probes: list[Path] | None = None) -> None:
    from onelayer.benchmarks.report import write_report

    path = write_report(sweep_dir, probes or ())
    typer.echo((path.parent / "summary.txt").read_text())
    typer.echo(f"report: {path}")


@app.command("report")
@_user_errors
def report_cmd(
    sweep_dir: Path = typer.Argument(..., help="A sweep directory of `onelayer sweep`."),
    probe: Optional[list[Path]] = typer.Option(None, "--probe", help="A probe directory of `onelayer probe` (repeatable, e.g. one per domain): how well each of its methods ranks the sweep's layers (Spearman, Kendall with CIs over seeds, top-K overlap, cost)."),
):
    """Write SWEEP_DIR/report/: Markdown report, CSV/JSON of every number, PNG plots."""
    _write_and_print_report(sweep_dir, probe)


@app.command("probe")
@_user_errors
def probe_cmd(
    out: Path = typer.Option(..., "--out", help="Directory for ranking.json (what --layers top:K@DIR[:METHOD] reads), probe.json, probe.md, probe.png."),
    env: Optional[str] = typer.Option(None, "--env", help="Env id or domain to probe (e.g. onelayer/Math-v0); default: the preset's only domain."),
    model: Optional[str] = typer.Option(None, "--model", help="Model (HF id, dir, .gguf, smollm2-135m); default: the preset's, else smollm2-135m."),
    suite: Optional[str] = typer.Option(None, "--suite", help="In-domain suite the skip damage is measured on (default: the env's, or the preset's)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma list of lookahead, grad-rel, grad-norm, fisher, skip (default: all; the first listed is the recommended)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled batches (the sweep job's seed: batch 1 is its first step's)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Take the sweep preset's settings (model, algorithm, lr, train options, suites): the sweep the probe replaces."),
    algo: Optional[str] = typer.Option(None, "--algo", help="gigpo, grpo or drgrpo (default: the preset's, else gigpo as sweeps)."),
    train: Optional[str] = typer.Option(None, "--train", help="TrainConfig options on top (key=value,... or JSON), as sweep --train."),
    batches: int = typer.Option(2, "--batches", help="Sampled batches the gradient norms average over."),
    panel_batches: int = typer.Option(1, "--panel-batches", help="Batches of base-model rollouts the look-ahead's reward change is measured on."),
    panel_items: int = typer.Option(64, "--panel-items", help="Suite items the skip damage is measured on."),
    fisher_samples: int = typer.Option(32, "--fisher-samples", help="Responses the Fisher estimate averages over."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
):
    """Cheap per-layer scores on the base model (gradient norms, Fisher, skip damage, one-step look-ahead) that rank
    layers without a sweep; --layers top:K@OUT trains the top K."""
    from onelayer.benchmarks.probe import probe_table, read_probe, run_probe

    results = run_probe(env, out, model=model, methods=_comma_list(methods), seed=seed, suite=suite, preset=preset,
                        algo=algo, train=_parse_mapping(train, "--train") if train else None, batches=batches,
                        panel_batches=panel_batches, panel_items=panel_items, fisher_samples=fisher_samples,
                        device=device, dtype=dtype)
    typer.echo(probe_table(results, read_probe(out).info))
    typer.echo(f"probe: {out / 'probe.md'}; train the top K with --layers top:K@{out}[:METHOD]")


@app.command("export")
@_user_errors
def export_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory of `onelayer train`."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model (new, empty, or a previous export)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: the run's --dtype; auto = float32)."),
):
    """Write the base model with the run's trained layers merged in, loadable by plain transformers (checked)."""
    from onelayer.benchmarks.export import export_run

    res = export_run(run_dir, out, dtype)
    typer.echo(f"wrote merged model ({res.dtype}, {res.num_tensors} tensors checked after reloading) to {res.out}")


@envs_app.command("list")
def envs_list():
    """Every registered onelayer env with its domain and data source."""
    from onelayer.envs import ENVS

    for e in ENVS.values():
        typer.echo(f"{e.env_id:24s} {e.domain:8s} max_steps={e.max_episode_steps:<4d} {e.data}")


@envs_app.command("check")
@_user_errors
def envs_check(
    target: str = typer.Argument(..., help="A registered env id (onelayer/Math-v0) or MODULE:CLASS_OR_ID."),
    env_kwargs: Optional[str] = typer.Option(None, "--env-kwargs", help="Constructor options: key=value,... or JSON."),
    max_steps: int = typer.Option(200, "--max-steps", help="Step budget for the termination check."),
    eval_items: Optional[int] = typer.Option(None, "--eval-items", help="Eval items a run or sweep will ask for (default: the env's default suite's)."),
):
    """Run Gymnasium's check_env, onelayer's contract checks and what training needs (both splits, eval size, the
    env's DomainSpec); exit 1 when any check fails."""
    from onelayer.envs.checker import CheckResult, check, check_splits, format_report, load_env

    if max_steps < 1:
        raise UserError(f"--max-steps must be >= 1, got {max_steps}")
    kwargs = _parse_mapping(env_kwargs, "--env-kwargs") if env_kwargs else {}
    load_env(target, **kwargs).close()  # a bad target fails here with a clear message
    results = check(lambda: load_env(target, **kwargs), max_steps=max_steps)
    import gymnasium as gym

    if target in gym.registry:  # a registered id: what the harness will do with it
        from onelayer.benchmarks.suites import default_suite
        from onelayer.envs.domain import domain_spec

        spec = domain_spec(target)
        results.append(CheckResult("onelayer domain record", True, (
            f"domain {spec.name!r}: {'acting (<action> replies)' if spec.actions else 'text answers'}, "
            f"{'multi-turn' if spec.multi_turn else 'single-turn'}, metric {spec.metric}")))
        suite = default_suite(target)
        asked = eval_items or suite.num_items
        by = "--eval-items" if eval_items else f"its default suite {suite.name}"
        results += check_splits(lambda split: load_env(target, **{**kwargs, "split": split}), asked, by)
    typer.echo(format_report(target, results))
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@alfworld_app.command("generate")
@_user_errors
def alfworld_generate(
    out: Path = typer.Option(..., "--out", help="Empty directory for the games (ALFWorld format)."),
    n: int = typer.Option(..., "--n", help="Number of games (all six task types present when N >= 6)."),
    seed: int = typer.Option(0, "--seed", help="Seed: equal arguments give byte-identical games."),
    task_types: Optional[str] = typer.Option(None, "--task-types", help="Comma-separated task types or ids 1-6."),
    min_receptacles: int = typer.Option(3, "--min-receptacles"),
    max_receptacles: int = typer.Option(3, "--max-receptacles"),
    min_distractors: int = typer.Option(0, "--min-distractors"),
    max_distractors: int = typer.Option(2, "--max-distractors"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a set this command wrote earlier."),
    exclude: Optional[list[Path]] = typer.Option(None, "--exclude",
                                                 help="A set written by this command whose layouts the new games avoid "
                                                      "(held-out evaluation games); repeatable."),
):
    """Write N ALFWorld-format games, each verified solvable by ALFWorld's planner expert through the engine."""
    from onelayer.envs.alfworld_gen import generate_games, read_signatures

    types = [t.strip() for t in task_types.split(",") if t.strip()] if task_types else None
    avoid: set = set()
    for d in exclude or []:
        avoid |= read_signatures(d)
    games = generate_games(out, n, seed, task_types=types, min_receptacles=min_receptacles,
                           max_receptacles=max_receptacles, min_distractors=min_distractors,
                           max_distractors=max_distractors, overwrite=overwrite, progress=True,
                           exclude_signatures=avoid)
    typer.echo(f"wrote {len(games)} games to {out}")


@app.command("bench")
@_user_errors
def bench_cmd(
    sections: str = typer.Option("rollout,train,alfworld,gpu", "--sections",
                                 help="Comma-separated: rollout, train, alfworld, gpu (skipped without CUDA + vLLM)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Model for every section."),
    batch_sizes: str = typer.Option("1,8,64", "--batch-sizes", help="Rollout batch sizes."),
    engines: str = typer.Option("hf,llamacpp", "--engines", help="Rollout engines compared with plain generate."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Rollout: tokens per response at most."),
    repeats: int = typer.Option(2, "--repeats", help="Rollout: timed calls per engine and batch size."),
    workers: Optional[str] = typer.Option(None, "--workers", help="ALFWorld worker counts (default: 1 and the core count)."),
    alfworld_engine: str = typer.Option("llamacpp", "--alfworld-engine", help="Engine acting in the ALFWorld section."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results (and the machine) to this JSON file."),
):
    """Speed on this machine: engine vs plain generate, training step by layer, ALFWorld with 1 and N workers."""
    import sys

    from onelayer.benchmarks.bench import print_tables, run_sections
    from onelayer.io import atomic_write_json

    result = run_sections([s.strip() for s in sections.split(",") if s.strip()], model,
                          [int(b) for b in batch_sizes.split(",")], [e.strip() for e in engines.split(",")],
                          max_new_tokens, repeats,
                          alfworld_workers=[int(w) for w in workers.split(",")] if workers else None,
                          alfworld_engine=alfworld_engine)
    result["command"] = "onelayer " + " ".join(sys.argv[1:])
    print_tables(result)
    if json_out is not None:
        atomic_write_json(json_out, result)
        typer.echo(f"wrote {json_out}", err=True)


def main() -> None:
    """Console entry point."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    main()
