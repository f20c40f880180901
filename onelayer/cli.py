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

from onelayer.errors import TrainingError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Layer-targeted RL for LLM agents: train one transformer layer and measure what it recovers.")
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


def _train_impl(*, config=None, resume=False, quiet=False, **flags):
    from onelayer.training.trainer import Trainer

    cfg = _config_from_flags(config, flags, resume)
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
):
    """Score a trained run or a base model on an env's evaluation split; print the metric and write JSON."""
    from onelayer.benchmarks.evaluate import evaluate

    kwargs = _parse_mapping(env_kwargs, "--env-kwargs") if env_kwargs else None
    res = evaluate(run=str(run) if run else None, model=model, env=env, env_kwargs=kwargs,
                   out=str(out) if out else None, num_items=num_items, max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=seed, batch_size=batch_size, device=device, dtype=dtype)
    what = f"run {run}" if run else f"model {model}"
    typer.echo(f"{what} on {res['env']}: {res['metric']} = {res[res['metric']]:.4f} ({res['num_items']} items)"
               + (f" -> {out}" if out else ""))


@app.command("export")
@_user_errors
def export_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory of `onelayer train`."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model (save_pretrained format)."),
):
    """Write the base model with the run's trained layers merged in, loadable by any HF tool."""
    from onelayer.benchmarks.evaluate import load_run_model

    model, tok, _ = load_run_model(run_dir, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    typer.echo(f"wrote merged model to {out}")


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
):
    """Run Gymnasium's check_env plus onelayer's contract checks; exit 1 when any check fails."""
    from onelayer.envs.checker import check, format_report, load_env

    kwargs = _parse_mapping(env_kwargs, "--env-kwargs") if env_kwargs else {}
    load_env(target, **kwargs).close()  # a bad target fails here with a clear message
    results = check(lambda: load_env(target, **kwargs), max_steps=max_steps)
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
):
    """Write N ALFWorld-format games, each verified solvable by ALFWorld's planner expert through the engine."""
    from onelayer.envs.alfworld_gen import generate_games

    types = [t.strip() for t in task_types.split(",") if t.strip()] if task_types else None
    games = generate_games(out, n, seed, task_types=types, min_receptacles=min_receptacles,
                           max_receptacles=max_receptacles, min_distractors=min_distractors,
                           max_distractors=max_distractors, overwrite=overwrite, progress=True)
    typer.echo(f"wrote {len(games)} games to {out}")


def main() -> None:
    """Console entry point."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    app()


if __name__ == "__main__":
    main()
