"""Training configuration: every option, its default and what it means.

Names follow TRL where TRL has one (``num_generations``, ``beta``,
``epsilon``, ``num_iterations``, ``max_grad_norm``). The defaults form a CPU
preset on the default model (smollm2-135m) that learns procedural math in
~20 steps: 8 tasks x 8 samples, 20-token answers, one shared lr of 3e-5
(the paper's rule: the same lr for full and single-layer runs).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from onelayer.errors import UserError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """All options of ``onelayer train`` (CLI flags use the same names with dashes)."""

    model: str = _f("smollm2-135m", "Model: an HF id, a local directory, a .gguf file, or the alias smollm2-135m.")
    env: str = _f("onelayer/Math-v0", "Gymnasium env id to train on (its train split).")
    env_kwargs: dict = _f({}, "Keyword arguments for the env, e.g. {'level': 2} or {'source': 'gsm8k'}.")
    layers: str = _f("middle", "Layer selection: 15, -1, 12,14,16, 12-16, middle, mid:K, all, none, 15.mlp, re:PATTERN.")
    also_train: list = _f([], "Non-block parameters to train as well: embeddings, final_norm, lm_head.")
    algo: str = _f("grpo", "Advantage estimator: gigpo, grpo or drgrpo.")
    steps: int = _f(20, "Number of RL steps (each: sample a batch, then update).")
    num_tasks: int = _f(8, "Tasks (prompts / env resets) per step.")
    num_generations: int = _f(8, "Rollouts per task (the group size G); at least 2.")
    max_new_tokens: int = _f(20, "Longest response per LLM call, in tokens.")
    max_prompt_length: int = _f(1024, "Longest prompt in tokens; longer prompts end the episode as truncated.")
    max_turns: int | None = _f(None, "Turn limit per episode (default: the env's max_episode_steps).")
    temperature: float = _f(1.0, "Sampling temperature for rollouts.")
    top_p: float = _f(1.0, "Nucleus sampling for rollouts.")
    prompt_template: str | None = _f(None, "User-message template with {observation}; default per domain.")
    system_prompt: str | None = _f(None, "System message; default keeps the chat template's own.")
    history_length: int = _f(2, "Recent (observation, action) pairs shown in each multi-turn prompt.")
    invalid_action_penalty: float | None = _f(None, "Subtracted from a step's reward when its action is invalid (default: 0.1 for agentic envs, 0 otherwise).")
    gamma: float = _f(0.95, "GiGPO: discount for step-level returns.")
    omega: float = _f(1.0, "GiGPO: weight of the step-level advantage.")
    gigpo_mode: str = _f("mean_std_norm", "GiGPO normalisation: mean_std_norm or mean_norm.")
    anchor: str = _f("observation", "GiGPO step grouping key: observation (verl-agent) or state (the env's true-state key).")
    similarity_threshold: float | None = _f(None, "GiGPO: group anchors whose difflib ratio >= this (default: exact match).")
    episode_stats: str = _f("trajectory", "GiGPO episode-level statistics: trajectory (one return each) or step (verl-agent pooling).")
    lr: float = _f(3e-5, "AdamW learning rate, shared by every selection (the paper's rule).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_steps: int = _f(0, "Linear lr warm-up steps.")
    beta: float = _f(0.0, "KL coefficient to the frozen reference model (0: no KL loss, as TRL's default).")
    epsilon: float = _f(0.2, "PPO clip range (lower).")
    epsilon_high: float | None = _f(None, "PPO clip range (upper); default equals epsilon.")
    loss_agg: str | None = _f(None, "token-mean, seq-mean-token-mean or seq-mean-token-sum-norm (default per algo).")
    num_iterations: int = _f(1, "Policy updates per sampled batch (PPO epochs).")
    mini_batch_size: int | None = _f(None, "Rollouts per optimizer step within an iteration (default: the whole batch).")
    micro_batch_size: int = _f(16, "Rollouts per forward/backward pass (gradient accumulation).")
    reuse_lower_hidden: bool = _f(True, "Run the frozen blocks below the lowest trained block once per batch and reuse their output.")
    logprob_chunk_size: int = _f(1024, "Tokens per chunk when computing log-probs (bounds logits memory).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    kl_metric: bool = _f(True, "Log the KL to the reference even when beta is 0 (one extra no-grad forward).")
    seed: int = _f(0, "Seed for task selection, sampling and evaluation.")
    eval_every: int = _f(10, "Evaluate on the env's eval split every N steps and at the end (0: only at the end).")
    eval_size: int = _f(256, "Evaluation items (a fixed list: items 0..N-1 of the eval split).")
    eval_at_start: bool = _f(False, "Also evaluate before the first step (the base model's score).")
    eval_max_new_tokens: int | None = _f(None, "Response length for evaluation (default: max_new_tokens).")
    save_every: int = _f(10, "Checkpoint every N steps (and at the end).")
    save_total_limit: int = _f(2, "Checkpoints to keep (the newest).")
    out: str | None = _f(None, "Run directory (default: runs/<env>-<algo>-<layers>-s<seed>).")
    device: str = _f("auto", "auto (CUDA if present), cpu, cuda, cuda:N.")
    dtype: str = _f("auto", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    report_to: list = _f([], "Extra metric sinks besides metrics.jsonl: tensorboard, wandb.")
    reward_funcs: list = _f([], "Extra rewards added to the env's: 'module:function' callables (TRL reward_funcs style).")
    rollout_batch_size: int = _f(64, "Sequences per engine forward when sampling.")
    engine: str = _f("hf", "Rollout engine: hf (transformers, everywhere) or another registered engine (vllm on GPU).")

    def to_dict(self) -> dict:
        """Plain dict of every option."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        """Every option name."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> TrainConfig:
        """Build from a dict (keys may use dashes), rejecting unknown keys."""
        norm = {k.replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - set(cls.field_names()))
        if unknown:
            raise UserError(f"unknown option(s) in {where}: {', '.join(unknown)}; valid options: {', '.join(cls.field_names())}")
        return cls(**norm)

    def resolved_loss_agg(self) -> str:
        """The loss aggregation in effect."""
        from onelayer.training.advantages import DEFAULT_LOSS_AGG

        return self.loss_agg or DEFAULT_LOSS_AGG[self.algo]

    def default_out(self) -> str:
        """Default run directory name."""
        env = self.env.split("/")[-1]
        layers = self.layers.replace(",", "_").replace(":", "").replace("re", "re")[:24]
        return str(Path("runs") / f"{env}-{self.algo}-L{layers}-s{self.seed}")

    def validate(self) -> None:
        """Raise UserError naming the first bad value (everything checkable before loading the model)."""
        from onelayer.envs import check_env_id
        from onelayer.training.advantages import ALGORITHMS
        from onelayer.training.layers import parse_layer_spec
        from onelayer.training.losses import LOSS_AGG_MODES

        if self.algo not in ALGORITHMS:
            raise UserError(f"unknown algorithm {self.algo!r}: choose one of {', '.join(ALGORITHMS)}")
        if self.gigpo_mode not in ("mean_std_norm", "mean_norm"):
            raise UserError(f"unknown gigpo_mode {self.gigpo_mode!r}: use mean_std_norm or mean_norm")
        if self.anchor not in ("observation", "state"):
            raise UserError(f"unknown anchor {self.anchor!r}: use observation or state")
        if self.episode_stats not in ("trajectory", "step"):
            raise UserError(f"unknown episode_stats {self.episode_stats!r}: use trajectory or step")
        if self.similarity_threshold is not None and not 0 < self.similarity_threshold <= 1:
            raise UserError(f"similarity_threshold must be in (0, 1], got {self.similarity_threshold}")
        if not 0 <= self.gamma <= 1:
            raise UserError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.history_length < 0:
            raise UserError(f"history_length must be >= 0, got {self.history_length}")
        check_env_id(self.env)
        if not isinstance(self.env_kwargs, dict):
            raise UserError(f"env_kwargs must be a mapping, got {self.env_kwargs!r}")
        if self.num_generations < 2:
            raise UserError(f"num_generations (group size) must be at least 2 for group-relative advantages, got {self.num_generations}")
        checks = [("steps", self.steps, 0), ("num_tasks", self.num_tasks, 1), ("max_new_tokens", self.max_new_tokens, 1),
                  ("max_prompt_length", self.max_prompt_length, 1), ("num_iterations", self.num_iterations, 1),
                  ("micro_batch_size", self.micro_batch_size, 1), ("eval_size", self.eval_size, 1),
                  ("logprob_chunk_size", self.logprob_chunk_size, 1), ("rollout_batch_size", self.rollout_batch_size, 1),
                  ("eval_every", self.eval_every, 0), ("save_every", self.save_every, 0), ("save_total_limit", self.save_total_limit, 1)]
        for name, value, low in checks:
            if not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_turns is not None and self.max_turns < 1:
            raise UserError(f"max_turns must be >= 1, got {self.max_turns}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UserError(f"temperature must be >= 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.temperature == 0:
            raise UserError("temperature 0 (greedy) gives every rollout of a group the same answer: use a temperature > 0 for training")
        if self.beta < 0 or self.epsilon <= 0:
            raise UserError(f"beta must be >= 0 and epsilon > 0, got {self.beta}, {self.epsilon}")
        if self.loss_agg is not None and self.loss_agg not in LOSS_AGG_MODES:
            raise UserError(f"unknown loss_agg {self.loss_agg!r}: choose one of {', '.join(LOSS_AGG_MODES)}")
        batch = self.num_tasks * self.num_generations
        if self.mini_batch_size is not None and (self.mini_batch_size < 1 or batch % self.mini_batch_size):
            raise UserError(f"mini_batch_size {self.mini_batch_size} must divide the batch of num_tasks x num_generations = {batch}")
        for sink in self.report_to:
            if sink not in ("tensorboard", "wandb", "jsonl"):
                raise UserError(f"unknown report_to sink {sink!r}: use tensorboard or wandb (metrics.jsonl is always written)")
        for fn in self.reward_funcs:
            if ":" not in fn:
                raise UserError(f"reward function {fn!r} must be 'module:function'")
        parse_layer_spec(self.layers, 10**6)  # syntax only; the range is checked once the model is loaded
        from onelayer.agents.engine import ENGINES

        if self.engine not in ENGINES:
            raise UserError(f"unknown engine {self.engine!r}: choose one of {', '.join(sorted(ENGINES))}")


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file of option names (same names as the CLI flags)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise UserError(f"cannot parse config file {p}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of option names to values")
    return data
