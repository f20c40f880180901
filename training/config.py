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


def _coerce(name: str, value, kind: type):
    """``value`` as ``kind`` (int, float, bool, str, list, dict), or a UserError naming the option and the value."""
    what = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
            dict: "a mapping"}.get(kind)
    if what is None:  # a type this check does not know: validate() has the last word
        return value
    bad = UserError(f"option {name} must be {what}, got {value!r}: fix it in the config file or flag --{name.replace('_', '-')}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise bad
    if kind in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value) if kind is float else int(value)
            except ValueError:
                raise bad from None
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise bad
        return kind(value)
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise bad
        return value
    if kind is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return list(value)
    if kind is dict and not isinstance(value, dict):
        raise bad
    return value


@dataclass
class TrainConfig:
    """All options of ``onelayer train`` (CLI flags use the same names with dashes)."""

    model: str = _f("smollm2-135m", "Model: an HF id, a local directory, a .gguf file, or the alias smollm2-135m.")
    env: str = _f("onelayer/Math-v0", "Gymnasium env id to train on (its train split).")
    env_kwargs: dict = _f({}, "Keyword arguments for the env, e.g. {'level': 2} or {'source': 'gsm8k'}.")
    layers: str = _f("middle", "Layer selection: 15, -1, 12,14,16, 12-16, middle, mid:K, all, none, 15.mlp, re:PATTERN, top:K@SWEEP_DIR, bottom:K@SWEEP_DIR.")
    rank_domain: str | None = _f(None, "Domain whose sweep ranking top:K@SWEEP_DIR / bottom:K@SWEEP_DIR use (default: the training env's domain).")
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
    action_format: str = _f("text", "Agentic envs: text (the action inside <action></action>, as verl-agent), choice (numbered admissible actions, the model writes a number after an <action> prefix) or score (nothing generated: a softmax over the model's likelihood of each admissible action's text; always valid). choice and score are the easy settings for small models.")
    invalid_action_penalty: float | None = _f(None, "Subtracted from a step's reward when its action is invalid (default: 0.1 for agentic envs, 0 otherwise).")
    gamma: float = _f(0.95, "GiGPO: discount for step-level returns.")
    omega: float = _f(1.0, "GiGPO: weight of the step-level advantage.")
    gigpo_mode: str = _f("mean_std_norm", "GiGPO normalisation: mean_std_norm or mean_norm.")
    anchor: str = _f("observation", "GiGPO step grouping key: observation (verl-agent) or state (the env's true-state key).")
    similarity_threshold: float | None = _f(None, "GiGPO: group anchors whose difflib ratio >= this (default: exact match).")
    episode_stats: str = _f("trajectory", "GiGPO episode-level statistics: trajectory (one return each) or step (verl-agent pooling).")
    lr: float = _f(3e-5, "AdamW learning rate, shared by every selection (the paper's rule).")
    layer_lr: str | None = _f(None, "Per-layer learning rates 'SPEC=LR;SPEC=LR': LR absolute (1e-5) or a multiple of --lr (2x); unnamed trained layers keep --lr. Boost-Bk: --layers all --layer-lr top:5@SWEEP_DIR=2x.")
    single_layer_lr_scale: float = _f(1.0, "Multiplier on --lr when the selection is one block (1.0: the paper's same-lr rule); recorded in config.json and metrics.")
    lora_rank: int | None = _f(None, "Train LoRA adapters (peft) of this rank on every linear layer of the --layers blocks instead of their weights.")
    lora_matched_to: str | None = _f(None, "Train LoRA adapters whose rank matches this layer spec's parameter count (lora-matched: --layers all --lora-matched-to 15).")
    lora_alpha: float | None = _f(None, "LoRA alpha (default: 2 x rank).")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_steps: int = _f(0, "Linear lr warm-up steps.")
    beta: float = _f(0.0, "KL coefficient to the frozen reference model (0: no KL loss, as TRL's default).")
    epsilon: float = _f(0.2, "PPO clip range (lower).")
    epsilon_high: float | None = _f(None, "PPO clip range (upper); default equals epsilon.")
    loss_agg: str | None = _f(None, "token-mean, seq-mean-token-mean or seq-mean-token-sum-norm (default per algo).")
    num_iterations: int = _f(1, "Policy updates per sampled batch (PPO epochs).")
    mini_batch_size: int | None = _f(None, "Rollouts per optimizer step within an iteration (default: the whole batch).")
    micro_batch_size: int = _f(8, "Rollouts per forward/backward pass (gradient accumulation; the gradient is the same for any size). 8 (one group of 8, packed after its prompt): on the default model 25% faster and lighter than 16, benchmarks/train_step.py.")
    reuse_lower_hidden: bool = _f(True, "Run the frozen blocks below the lowest trained block once per batch and reuse their output.")
    share_prompts: bool = _f(True, "Forward each distinct prompt of a micro-batch once: a group's responses are packed after one copy of their prompt and attend to it (a block mask). False: one full sequence per row (the exact reference path).")
    logprob_chunk_size: int = _f(1024, "Tokens per chunk when computing log-probs (bounds logits memory).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    kl_metric: bool = _f(False, "Log the KL to the reference even when beta is 0 (one extra no-grad forward of the trained blocks and those above; off by default, as in TRL).")
    seed: int = _f(0, "Seed for task selection, sampling and evaluation.")
    eval_every: int = _f(10, "Evaluate on the env's eval split every N steps and at the end (0: only at the end).")
    eval_size: int = _f(256, "Evaluation items (a fixed list: items 0..N-1 of the eval split); 0: no evaluation.")
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
    insert_layer: str | None = _f(None, "Insert a new block built by 'module:factory' (e.g. onelayer.training.insert:identity_copy) before training; train it with --layers AT.")
    insert_at: int | None = _f(None, "Block index where --insert-layer puts the new block (the old block there moves up by one).")
    engine: str = _f("hf", "Rollout engine: hf (transformers, everywhere) or another registered engine (vllm on GPU).")
    vllm_gpu_memory_utilization: float = _f(0.3, "vllm engine: fraction of the GPU's memory vLLM may take (weights + KV cache).")
    vllm_mode: str = _f("colocate", "vllm engine: colocate (the trainer's GPU, sleeping during updates) or separate (another GPU).")
    vllm_device: str | None = _f(None, "vllm engine in separate mode: its GPU (default cuda:1).")
    vllm_enable_sleep_mode: bool = _f(True, "vllm engine, colocate: free the KV cache and offload weights during each update.")
    use_engine_logprobs: bool = _f(False, "Use the engine's sampling log-probs as PPO's old log-probs when they agree with the trainer's (logprob_tolerance); else the trainer's.")
    logprob_tolerance: float = _f(0.02, "Largest mean |engine - trainer| log-prob per token (nats) for use_engine_logprobs.")
    fp32_master_weights: bool = _f(True, "With a 16-bit model (--dtype bfloat16): keep the trained tensors and their optimizer state in fp32.")
    gradient_checkpointing: bool = _f(False, "Recompute the activations of the lowest trained block and those above it during backward (less memory, one more forward).")
    fsdp: bool = _f(False, "Shard the model over the processes of a torchrun job with FSDP (full-parameter baselines on several GPUs): `torchrun --nproc-per-node N -m onelayer.cli train --fsdp ...`; num_tasks must be a multiple of N.")

    def __post_init__(self) -> None:
        self._coerce_types()

    def _coerce_types(self) -> None:
        """Hold every option as its declared type: '3e-5' (YAML reads it as text) becomes 3e-05, 'ten' is a UserError."""
        import typing

        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            kind = typing.get_origin(kinds[0]) or kinds[0]
            if value is None and type(None) in typing.get_args(hint):
                continue
            setattr(self, f.name, _coerce(f.name, value, kind))

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

    def engine_options(self) -> dict:
        """Keyword options for the selected rollout engine beyond ``max_batch_size``."""
        if self.engine != "vllm":
            return {}
        return {"gpu_memory_utilization": self.vllm_gpu_memory_utilization, "mode": self.vllm_mode,
                "device": self.vllm_device, "enable_sleep_mode": self.vllm_enable_sleep_mode, "seed": self.seed,
                "max_model_len": self.max_prompt_length + max(self.max_new_tokens, self.eval_max_new_tokens or 0)}

    def resolved_loss_agg(self) -> str:
        """The loss aggregation in effect."""
        from onelayer.training.advantages import DEFAULT_LOSS_AGG

        return self.loss_agg or DEFAULT_LOSS_AGG.get(self.algo, "token-mean")

    def default_out(self) -> str:
        """Default run directory name."""
        env = self.env.split("/")[-1]
        layers = self.layers.replace(",", "_").replace(":", "").replace("/", "_").replace("\\", "_")[:24]
        return str(Path("runs") / f"{env}-{self.algo}-L{layers}-s{self.seed}")

    def validate(self) -> None:
        """Raise UserError naming the first bad value (everything checkable before loading the model)."""
        from onelayer.envs import check_env_id
        from onelayer.training.advantages import ESTIMATORS as ALGORITHMS
        from onelayer.training.layers import check_layer_spec
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
        from onelayer.agents.prompts import ACTION_FORMATS

        if self.action_format not in ACTION_FORMATS:
            raise UserError(f"unknown action_format {self.action_format!r}: use one of {', '.join(ACTION_FORMATS)}")
        check_env_id(self.env)
        if self.action_format in ("choice", "score"):
            from onelayer.envs.domain import domain_spec

            if not domain_spec(self.env).actions:
                raise UserError(f"action_format {self.action_format} needs an env where the model acts (admissible "
                                f"actions); {self.env} takes text answers: drop --action-format")
        if not isinstance(self.env_kwargs, dict):
            raise UserError(f"env_kwargs must be a mapping, got {self.env_kwargs!r}")
        if self.num_generations < 2:
            raise UserError(f"num_generations (group size) must be at least 2 for group-relative advantages, got {self.num_generations}")
        checks = [("steps", self.steps, 0), ("num_tasks", self.num_tasks, 1), ("max_new_tokens", self.max_new_tokens, 1),
                  ("max_prompt_length", self.max_prompt_length, 1), ("num_iterations", self.num_iterations, 1),
                  ("micro_batch_size", self.micro_batch_size, 1), ("eval_size", self.eval_size, 0),
                  ("logprob_chunk_size", self.logprob_chunk_size, 1), ("rollout_batch_size", self.rollout_batch_size, 1),
                  ("eval_every", self.eval_every, 0), ("save_every", self.save_every, 0), ("save_total_limit", self.save_total_limit, 1)]
        for name, value, low in checks:
            if not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_turns is not None and self.max_turns < 1:
            raise UserError(f"max_turns must be >= 1, got {self.max_turns}")
        if not 0 < self.lr < float("inf"):
            raise UserError(f"lr must be a positive number (e.g. 3e-5), got {self.lr}")
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
        from onelayer.training.layers import EXTRA_TARGETS

        for target in self.also_train:
            if target not in EXTRA_TARGETS:
                raise UserError(f"unknown also_train target {target!r}: choose from {', '.join(EXTRA_TARGETS)}")
        for sink in self.report_to:
            if sink not in ("tensorboard", "wandb", "jsonl"):
                raise UserError(f"unknown report_to sink {sink!r}: use tensorboard or wandb (metrics.jsonl is always written)")
        for fn in self.reward_funcs:
            if ":" not in fn:
                raise UserError(f"reward function {fn!r} must be 'module:function'")
        check_layer_spec(self.layers)  # syntax only; the range is checked once the model is loaded
        self._validate_layer_aware()
        if (self.insert_layer is None) != (self.insert_at is None):
            raise UserError("--insert-layer and --insert-at go together: give both (e.g. --insert-layer "
                            "onelayer.training.insert:identity_copy --insert-at 15) or neither")
        from onelayer.agents.engine import ENGINES

        if self.engine not in ENGINES:
            raise UserError(f"unknown engine {self.engine!r}: choose one of {', '.join(sorted(ENGINES))}")
        if self.engine == "vllm":  # no vLLM or no CUDA: say what is missing before any work starts
            from onelayer.agents.vllm_engine import check_vllm_available

            check_vllm_available()
            if getattr(self, "lora_rank", None) or getattr(self, "lora_matched_to", None):
                raise UserError("--engine vllm syncs plain weight tensors, not LoRA adapters: use --engine hf for LoRA runs")
        if self.vllm_mode not in ("colocate", "separate"):
            raise UserError(f"unknown vllm_mode {self.vllm_mode!r}: use colocate or separate")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise UserError(f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}")
        if self.logprob_tolerance < 0:
            raise UserError(f"logprob_tolerance must be >= 0, got {self.logprob_tolerance}")
        if self.fsdp and (self.engine != "hf" or self.lora_rank is not None or self.lora_matched_to is not None
                          or self.gradient_checkpointing or self.insert_layer is not None or self.also_train):
            raise UserError("--fsdp trains decoder blocks (e.g. --layers all) with the hf engine: drop --engine, "
                            "--lora-rank, --lora-matched-to, --gradient-checkpointing, --insert-layer and --also-train")

    def _validate_layer_aware(self) -> None:
        """Per-layer learning rates, the single-layer lr scale and LoRA options."""
        from onelayer.training.layers import check_layer_spec
        from onelayer.training.optim import parse_layer_lr

        if self.rank_domain is not None and not str(self.rank_domain).strip():
            raise UserError("rank_domain must be a domain name (math, code, agentic) or unset")
        parse_layer_lr(self.layer_lr)
        if not (isinstance(self.single_layer_lr_scale, (int, float)) and self.single_layer_lr_scale > 0):
            raise UserError(f"single_layer_lr_scale must be a positive number, got {self.single_layer_lr_scale!r}")
        if self.lora_rank is None and self.lora_matched_to is None:
            return
        if self.lora_rank is not None and self.lora_matched_to is not None:
            raise UserError("give one of --lora-rank and --lora-matched-to, not both")
        if self.lora_rank is not None and (not isinstance(self.lora_rank, int) or self.lora_rank < 1):
            raise UserError(f"lora_rank must be an integer >= 1, got {self.lora_rank!r}")
        if self.lora_matched_to is not None:
            check_layer_spec(str(self.lora_matched_to))
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise UserError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.also_train or self.layer_lr:
            raise UserError("LoRA runs train only the adapters: drop --also-train and --layer-lr")
        if self.engine != "hf":
            raise UserError(f"LoRA runs sample with the hf engine (the {self.engine!r} engine does not see the adapters): use --engine hf")


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
        raise UserError(f"cannot parse config file {p}: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of option names to values")
    return data
