"""``onelayer eval``: score a base model or a trained run on an env's evaluation split, reproducibly.

The item list is fixed (items ``0..N-1`` of the eval split) and decoding is
greedy by default, so the same model gives the same number every time. The
result JSON has the domain's metric as a top-level key (``accuracy`` for
math, ``pass@1`` for code, ``success_rate`` for agentic envs), the settings,
and every item's outcome.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from onelayer.agents.engine import HFEngine
from onelayer.agents.evaluation import evaluate_policy
from onelayer.agents.models import load_model
from onelayer.agents.prompts import PromptBuilder
from onelayer.envs import check_env_id
from onelayer.envs.domain import domain_spec
from onelayer.errors import UserError
from onelayer.io import atomic_write_json
from onelayer.training import checkpoint as ckpt
from onelayer.training.config import TrainConfig


def read_run_train_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig stored in a run directory."""
    return TrainConfig.from_dict(ckpt.read_run_config(run_dir)["config"], where=f"{run_dir}/config.json")


def load_run_model(run_dir: str | Path, device: str = "auto", dtype: str = "auto", config: TrainConfig | None = None):
    """Load a run's base model with its trained tensors applied; returns (model, tokenizer, config)."""
    config = config or read_run_train_config(run_dir)
    model, tok, _ = load_model(config.model, device, dtype)
    if config.insert_layer:
        from onelayer.training.insert import insert_block

        insert_block(model, config.insert_layer, config.insert_at)
    lora = ckpt.read_run_config(run_dir).get("lora")
    if lora:  # adapters: rebuild them, load their values and merge them into the base weights
        from safetensors.torch import load_file

        from onelayer.training.lora import LoraSpec, merge_lora

        path = Path(run_dir) / ckpt.TRAINED_FILE
        if not path.is_file():
            raise UserError(f"{path} does not exist: a run directory holds trained.safetensors once a step has finished")
        model = merge_lora(model, LoraSpec.from_dict(lora), load_file(str(path)))
    else:
        ckpt.load_trained(model, Path(run_dir) / ckpt.TRAINED_FILE)
    return model, tok, config


def evaluate(
    run: str | None = None, model: str | None = None, env: str | None = None, env_kwargs: dict | None = None,
    out: str | None = None, num_items: int | None = None, max_new_tokens: int | None = None, temperature: float = 0.0,
    seed: int = 0, batch_size: int | None = None, device: str = "auto", dtype: str = "auto",
    prompt_template: str | None = None, system_prompt: str | None = None, max_turns: int | None = None,
) -> dict:
    """Evaluate a run directory (``run``) or a model (``model``); write JSON to ``out`` when given; return the result."""
    if (run is None) == (model is None):
        raise UserError("pass exactly one of --run RUN_DIR or --model MODEL")
    config = None
    if run is not None:
        config = read_run_train_config(run)
        env = env or config.env
        env_kwargs = config.env_kwargs if env_kwargs is None else env_kwargs
        if max_new_tokens is None:
            max_new_tokens = config.eval_max_new_tokens or config.max_new_tokens
        prompt_template = prompt_template or config.prompt_template
        system_prompt = system_prompt or config.system_prompt
        max_turns = max_turns or config.max_turns
        num_items = config.eval_size if num_items is None else num_items
        batch_size = config.rollout_batch_size if batch_size is None else batch_size
    env = env or "onelayer/Math-v0"
    check_env_id(env)
    num_items = 256 if num_items is None else num_items
    batch_size = 64 if batch_size is None else batch_size
    if num_items < 1:
        raise UserError(f"--num-items must be >= 1, got {num_items}")
    max_new_tokens = 20 if max_new_tokens is None else max_new_tokens
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    from onelayer.envs.checker import load_env

    load_env(env, **(env_kwargs or {})).close()  # bad env options or a missing dataset fail before the model loads
    if run is not None:
        mdl, tok, _ = load_run_model(run, device, dtype, config)
    else:
        mdl, tok, _ = load_model(model, device, dtype)
    spec = domain_spec(env)
    history_length = config.history_length if config else 2
    prompts = PromptBuilder.for_domain(tok, spec, prompt_template, system_prompt, history_length,
                                       config.action_format if config else "text")
    engine = HFEngine(mdl, tok, max_batch_size=batch_size)
    t = time.time()
    res = evaluate_policy(engine, prompts, env, env_kwargs, num_items=num_items, max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, batch_size=batch_size, max_turns=max_turns,
                          metric=spec.metric, parse_actions=spec.actions)
    result = res.to_dict()
    result.update({
        "metric": res.metric, "env": env, "env_kwargs": env_kwargs or {}, "domain": spec.name,
        "model": config.model if config else model, "run": str(run) if run else None,
        "layers": config.layers if config else None,
        "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
                     "num_items": num_items, "item_list": f"eval split items 0..{num_items - 1}",
                     "torch": torch.__version__},
        "time_s": time.time() - t,
    })
    if out:
        atomic_write_json(out, result)
    return result


def evaluate_suites(suite_names: str, run: str | None = None, model: str | None = None, out: str | None = None,
                    batch_size: int | None = None, device: str = "auto", dtype: str = "auto",
                    num_items: int | None = None, num_samples: int | None = None) -> dict:
    """Evaluate a run or a model on named suites (``NAME[,NAME...]``); write JSON to ``out`` when given.

    One suite: its result with the metric as a top-level key (as ``evaluate``).
    Several: ``{"suites": {NAME: result}, "missing": {NAME: why}}``. A suite
    whose data is missing is listed under ``missing`` and the others still run;
    when every suite is missing, a UserError says why. ``num_items`` and
    ``num_samples`` override every suite's (a pass@k suite still needs at least
    k samples).
    """
    from onelayer.benchmarks.suites import parse_suites, run_suites

    if (run is None) == (model is None):
        raise UserError("pass exactly one of --run RUN_DIR or --model MODEL")
    suites = parse_suites(suite_names)
    if num_items is not None:
        if num_items < 1:
            raise UserError(f"--num-items must be >= 1, got {num_items}")
        suites = [s.with_overrides(num_items=num_items) for s in suites]
    if num_samples is not None:
        short = [f"{s.name} (pass@{max(s.k)})" for s in suites if num_samples < max(s.k)]
        if num_samples < 1 or short:
            raise UserError(f"--num-samples must be >= 1 and >= every suite's largest k, got {num_samples}"
                            + (f": {', '.join(short)}" if short else ""))
        suites = [s.with_overrides(num_samples=num_samples) for s in suites]
    config = read_run_train_config(run) if run is not None else None
    if run is not None:
        mdl, tok, _ = load_run_model(run, device, dtype, config)
    else:
        mdl, tok, _ = load_model(model, device, dtype)
    engine = HFEngine(mdl, tok, max_batch_size=batch_size or (config.rollout_batch_size if config else 64))
    kw = {}
    if config is not None:
        kw = {"prompt_template": config.prompt_template, "system_prompt": config.system_prompt,
              "history_length": config.history_length, "action_format": config.action_format}
    results, missing = run_suites(suites, engine, tok, batch_size=engine.max_batch_size, **kw)
    if not results:
        raise UserError("no suite could run: " + "; ".join(missing.values()))
    who = {"model": config.model if config else model, "run": str(run) if run else None,
           "layers": config.layers if config else None, "torch": torch.__version__}
    for r in results.values():
        r.update(who)
    if len(suites) == 1:
        result = next(iter(results.values()))
    else:
        result = {"suites": results, "missing": missing, **who}
    if out:
        atomic_write_json(out, result)
    return result

