"""What a training run builds and checks once, before its first step.

Every check here runs before the run directory is written or the first step starts,
so a bad option costs seconds, not a half-finished run: env options and the eval
split's size, reward functions, ranked layer specs (their sweep), the prompt length,
and that the optimizer holds exactly the selected tensors.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import gymnasium as gym

from onelayer.agents.evaluation import make_eval_env
from onelayer.agents.prompts import PromptBuilder
from onelayer.errors import TrainingError, UserError
from onelayer.training import checkpoint as ckpt
from onelayer.training.config import TrainConfig
from onelayer.training.layers import (
    LayerSelection,
    RankedLayers,
    explicit_spec,
    find_decoder_blocks,
    is_ranked_spec,
    resolve_ranked_spec,
    select_parameters,
)
from onelayer.training.logprobs import LowerStack
from onelayer.training.lora import LoraSpec, attach_lora, lora_selection, plan_lora
from onelayer.training.optim import parse_layer_lr


def make_envs(config: TrainConfig) -> list[gym.Env]:
    """One train-split env per rollout of a step (``num_tasks x num_generations``); bad env options are a UserError."""
    kwargs = dict(config.env_kwargs)
    try:
        return [gym.make(config.env, **kwargs) for _ in range(config.num_tasks * config.num_generations)]
    except UserError:  # the env's own one-line refusal (e.g. no sandbox isolation) stands as it is
        raise
    except (TypeError, ValueError) as e:
        raise UserError(f"bad env_kwargs {kwargs} for {config.env}: {e}") from None


def check_eval_size(config: TrainConfig) -> None:
    """The eval split must hold the ``eval_size`` items the run will score (checked before any step)."""
    if not config.eval_size:
        return
    env = make_eval_env(config.env, config.env_kwargs)
    n = getattr(env.unwrapped, "num_tasks", None)
    env.close()
    if n is not None and n < config.eval_size:
        raise UserError(f"{config.env}'s eval split has {n} tasks but --eval-size is {config.eval_size}: pass "
                        f"--eval-size {n} or less (0: no evaluation)")


def load_reward_funcs(specs: list[str]) -> list:
    """The ``module:function`` reward callables, imported (one that cannot be is a UserError)."""
    funcs = []
    for spec in specs:
        mod, _, name = spec.partition(":")
        try:
            funcs.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot import reward function {spec!r}: {e}") from None
    return funcs


def resolve_ranked_specs(config: TrainConfig, run_dir: Path, resume: bool, domain: str) -> dict[str, RankedLayers]:
    """Resolve every top:K@DIR / bottom:K@DIR spec of the config against its sweep, once.

    ``domain`` is the training env's domain (``rank_domain`` overrides it). A resumed run
    reuses the lists stored in its config.json and never reads the sweep again.
    """
    c = config
    specs = [s for s in (c.layers, c.lora_matched_to, *(r.spec for r in parse_layer_lr(c.layer_lr)))
             if s is not None and is_ranked_spec(s)]
    if not specs:
        return {}
    stored_path = run_dir / ckpt.CONFIG_FILE
    stored = ckpt.read_run_config(run_dir).get("ranked_layers", {}) if resume and stored_path.is_file() else {}
    out = {}
    for spec in dict.fromkeys(s.strip() for s in specs):
        if spec in stored:
            out[spec] = RankedLayers.from_dict(stored[spec])
            print(f"{out[spec].describe()} (stored in {stored_path})", file=sys.stderr)
        else:
            out[spec] = resolve_ranked_spec(spec, c.rank_domain or domain)
            print(out[spec].describe(), file=sys.stderr)
    return out


def select_layers(model, config: TrainConfig, ranked: dict[str, RankedLayers]) -> tuple[LayerSelection, LoraSpec | None]:
    """The trained tensors: the --layers selection, or LoRA adapters on its blocks (attached here) and their plan."""
    c = config
    layers = explicit_spec(c.layers, ranked)
    lora = None
    if c.lora_rank is None and c.lora_matched_to is None:
        selection = select_parameters(model, layers, c.also_train)
    else:
        matched = explicit_spec(c.lora_matched_to, ranked) if c.lora_matched_to else None
        lora = plan_lora(model, layers, c.lora_rank, matched, c.lora_alpha, c.lora_dropout)
        attach_lora(model, lora)
        selection = lora_selection(model, lora)
    for r in ranked.values():
        if max(r.layers) >= selection.num_layers:
            raise UserError(f"{r.spec} names layer {max(r.layers)} but the model has {selection.num_layers} "
                            "layers: was the sweep run on another model?")
    if is_ranked_spec(c.layers) and lora is None:
        selection.spec = c.layers.strip()
    return selection, lora


def check_optimizer(model, optimizer, params: list) -> None:
    """The optimizer's parameter set must be exactly the selection (a silent no-train guard)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]} if optimizer else set()
    selected = {id(p) for p in params}
    if not (trainable == in_opt == selected):
        raise TrainingError(
            f"optimizer holds {len(in_opt)} tensors, {len(trainable)} require grad, the selection has "
            f"{len(selected)}: they must be the same set")


def lower_stack(model, selection: LayerSelection, config: TrainConfig) -> LowerStack | None:
    """Reuse the frozen blocks' output below the lowest trained block (when everything trained is a block)."""
    low = selection.lowest_layer
    if not config.reuse_lower_hidden or not low or not selection.blocks_path:
        return None
    if not all(n.startswith(selection.blocks_path + ".") for n in selection.param_names):
        return None
    return LowerStack(model, find_decoder_blocks(model)[1], low)


def check_prompt_fits(env: gym.Env, prompts: PromptBuilder, config: TrainConfig) -> None:
    """A first prompt longer than max_prompt_length would truncate every episode: say so up front."""
    obs, info = env.reset(seed=config.seed)
    n = len(prompts.encode(obs, admissible=info.get("admissible_actions"), task=info.get("task"), step=1))
    if n > config.max_prompt_length:
        raise UserError(f"max_prompt_length {config.max_prompt_length} is shorter than the env's first prompt "
                        f"({n} tokens): raise --max-prompt-length")
