"""The group RL trainer: sample G rollouts per task, compute advantages, update the selected layers.

One step::

    rollouts (engine, no grad) -> rewards -> group advantages (the run's registered estimator)
    -> PPO-clipped loss on response tokens (micro-batched) -> AdamW on the
    selected parameters only -> proof that they moved -> metrics.jsonl

Read top to bottom: 1. the run directory and resume, 2. the metric sinks, 3. the
trainer: its setup, then the loop (sample -> advantages -> update -> evaluate -> save).
The update itself is ``ppo_update`` (training/ppo.py); what FSDP changes sits behind
``SingleProcess`` / ``FSDPHooks`` (training/fsdp_hooks.py), the log-prob path behind
``RowLogprobs`` (training/rows.py), the one-off setup checks in training/run_setup.py.

Only the selected parameters require grad, so no autograd graph is built for
the blocks below the lowest trained one and the optimizer holds state for the
selection alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from onelayer.agents.engine import SamplingParams, make_engine
from onelayer.agents.evaluation import EvalResult, evaluate_policy
from onelayer.agents.models import load_model, resolve_model
from onelayer.agents.prompts import PromptBuilder
from onelayer.agents.rollout import EpisodeSpec, collect
from onelayer.agents.trajectory import Trajectory
from onelayer.agents.weight_sync import trained_tensors
from onelayer.envs.domain import domain_spec
from onelayer.errors import UserError
from onelayer.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from onelayer.training import checkpoint as ckpt
from onelayer.training import distributed as fsdp
from onelayer.training import run_setup
from onelayer.training.advantages import ESTIMATORS
from onelayer.training.config import TrainConfig
from onelayer.training.engine_logprobs import EngineLogprobs
from onelayer.training.fsdp_hooks import FSDPHooks, SingleProcess
from onelayer.training.insert import insert_block
from onelayer.training.layers import (
    LayerSelection,
    apply_selection,
    explicit_spec,
    find_decoder_blocks,
)
from onelayer.training.memory import checkpoint_blocks, keep_fp32_master, release_freed_memory
from onelayer.training.optim import (
    build_param_groups,
    describe_groups,
    make_optimizer,
    parse_layer_lr,
    single_layer_scale,
)
from onelayer.training.ppo import ppo_update
from onelayer.training.rows import RowLogprobs, rows_from

# Options that may differ when resuming (everything else must match the stored run).
RESUMABLE_CHANGES = {"steps", "eval_every", "save_every", "save_total_limit", "report_to", "eval_size", "device",
                     "kl_metric"}  # kl_metric: a metric only (its default changed; older runs resume)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts: per-step seeds make resumed runs sample exactly as uninterrupted ones."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    selection: LayerSelection
    final_eval: dict | None
    metrics: list[dict]


# ----------------------------------------------------------------- 1. the run directory and resume
def _prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool) -> None:
    """Create the run directory; refuse to start over a run, or to resume one with other options."""
    rd = run_dir
    if resume:
        if not (rd / ckpt.CONFIG_FILE).is_file():
            if ckpt.checkpoint_dirs(rd) or (rd / ckpt.METRICS_FILE).exists():
                raise UserError(f"cannot resume {rd}: {rd / ckpt.CONFIG_FILE} (the run's options) is missing; restore "
                                "it from a copy, or start a new run with another --out")
            raise UserError(f"cannot resume: {rd} has no {ckpt.CONFIG_FILE}; start the run without --resume")
        stored = TrainConfig.from_dict(ckpt.read_run_config(rd)["config"], where=str(rd / ckpt.CONFIG_FILE))
        diffs = [k for k in TrainConfig.field_names()
                 if k not in RESUMABLE_CHANGES | {"out"} and getattr(stored, k) != getattr(config, k)]
        if diffs:
            raise UserError(
                f"cannot resume {rd} with different options: {', '.join(diffs)} "
                f"(stored: {', '.join(f'{k}={getattr(stored, k)!r}' for k in diffs)}); only "
                f"{', '.join(sorted(RESUMABLE_CHANGES))} may change")
    elif (rd / ckpt.METRICS_FILE).exists() or (rd / ckpt.CONFIG_FILE).exists():
        raise UserError(f"run directory {rd} already holds a run: pass --resume to continue it, or choose another --out")
    rd.mkdir(parents=True, exist_ok=True)


def _load_newest_checkpoint(run_dir: Path, load: Callable[[Path], None]) -> tuple[Path, dict] | None:
    """Load the newest usable checkpoint with ``load``; its folder and state, or None when none is complete.

    A damaged checkpoint falls back to the one before it; when complete ones exist but none loads,
    resuming is refused (restarting from step 0 would silently throw the run away).
    """
    skipped = []
    for d in reversed(ckpt.checkpoint_dirs(run_dir)):  # newest first
        problem = ckpt.checkpoint_problem(d)
        if problem is None:
            try:
                state = ckpt.load_state(d)
                load(d)
                return d, state
            except Exception as e:  # any unreadable file means: try the checkpoint before it
                problem = f"cannot be loaded ({' '.join(str(e).split())[:200]})"
        skipped.append(f"{d} {problem}")
        print(f"resume: skipping checkpoint {d}: it {problem}", file=sys.stderr)
    if any("incomplete" not in s for s in skipped):
        raise UserError(f"cannot resume {run_dir}: no usable checkpoint ({'; '.join(skipped)}); move "
                        f"{run_dir / 'checkpoints'} away to restart from step 0, or start a new run with another --out")
    return None


def _keep_metrics_up_to(run_dir: Path, step: int) -> None:
    """Drop metrics.jsonl lines of steps after the checkpoint: they will be redone identically."""
    metrics = run_dir / ckpt.METRICS_FILE
    try:
        kept = [m for m in read_jsonl(metrics) if isinstance(m, dict) and m.get("step", 0) <= step]
    except ValueError as e:  # a damaged line other than a torn last one
        raise UserError(f"cannot resume {run_dir}: {' '.join(str(e).split())[:200]}; delete or fix that "
                        "line, then --resume again") from None
    if len({m["step"] for m in kept if isinstance(m.get("step"), int) and m["step"] > 0}) < step:
        print(f"resume: {metrics} lacks lines for some of steps 1..{step} (missing or cut short); "
              "training goes on, those steps keep no metrics", file=sys.stderr)
    atomic_write_text(metrics, "".join(json.dumps(m) + "\n" for m in kept))


def _store_resumable_options(run_dir: Path, config: TrainConfig) -> None:
    """config.json takes this invocation's values of the options a resume may change."""
    stored = ckpt.read_run_config(run_dir)
    stored["config"].update({k: getattr(config, k) for k in RESUMABLE_CHANGES})
    atomic_write_json(run_dir / ckpt.CONFIG_FILE, stored)


def _read_eval(path: Path, fallback: dict | None) -> dict | None:
    """The run's eval.json, or ``fallback`` when it is absent or damaged (it is rewritten by the next evaluation)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return fallback
    except (ValueError, UnicodeDecodeError):
        print(f"warning: {path} is damaged (not valid JSON); the next evaluation rewrites it", file=sys.stderr)
        return fallback


# ----------------------------------------------------------------- 2. the metric sinks
class MetricSinks:
    """Where each step's metrics go: metrics.jsonl in the run directory, and TensorBoard / W&B on request.

    Only the process that writes the run directory (FSDP: rank 0) is ``enabled``.
    """

    def __init__(self, run_dir: Path, config: TrainConfig, enabled: bool = True):
        self.path = run_dir / ckpt.METRICS_FILE if enabled else None
        report_to = config.report_to if enabled else []
        self.tb = self.wandb = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise UserError("--report-to wandb needs the wandb package: pip install wandb") from None
            import os

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "onelayer"), dir=str(run_dir),
                                    mode=os.environ.get("WANDB_MODE", "offline"), config=config.to_dict(),
                                    name=run_dir.name)

    def append(self, record: dict) -> None:
        """Add ``record`` to metrics.jsonl only (the base model's evaluation at step 0)."""
        if self.path is not None:
            append_jsonl(self.path, record)

    def log(self, record: dict, step: int) -> None:
        """Add a step's ``record`` to metrics.jsonl and send its numbers to TensorBoard / W&B."""
        self.append(record)
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                if self.tb is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        """Flush and close TensorBoard / W&B."""
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# ----------------------------------------------------------------- 3. the trainer
class Trainer:
    """Holds the model, optimizer and run directory of one RL run."""

    def __init__(self, config: TrainConfig, resume: bool = False, model=None, tokenizer=None):
        config.validate()
        self.dist = fsdp.init_distributed(config.device, config.num_tasks) if config.fsdp else None
        self._main = self.dist is None or self.dist.is_main  # the process that writes the run directory
        self.config = config
        self.run_dir = Path(config.out or config.default_out())

        # Whatever can be refused is checked before anything is written.
        if model is None:
            resolve_model(config.model)  # a missing model file
        self.domain_spec = domain_spec(config.env)  # what the harness needs to know about the env
        self.domain, self.metric = self.domain_spec.name, self.domain_spec.metric
        self.envs = run_setup.make_envs(config)  # bad env options or a missing dataset
        run_setup.check_eval_size(config)
        self.reward_funcs = run_setup.load_reward_funcs(config.reward_funcs)
        self.ranked = run_setup.resolve_ranked_specs(config, self.run_dir, resume, self.domain_spec.name)  # a missing sweep
        if self._main:
            _prepare_run_dir(self.run_dir, config, resume)
        torch.manual_seed(config.seed)

        # The model and the trained selection.
        if model is None:
            model, tokenizer, source = load_model(config.model, self.dist.device if self.dist else config.device,
                                                  config.dtype)
            self.model_source = source.describe()
        else:
            self.model_source = f"{type(model).__name__} (passed in)"
        self.model, self.tokenizer = model, tokenizer
        if config.insert_layer and getattr(model, "_onelayer_inserted", None) != (config.insert_layer, config.insert_at):
            insert_block(model, config.insert_layer, config.insert_at)
        self.model.eval()
        self.selection, self.lora = run_setup.select_layers(model, config, self.ranked)
        self.params = apply_selection(model, self.selection)
        if config.fp32_master_weights:
            keep_fp32_master(model, self.params)  # a bf16 model trains fp32 tensors with fp32 AdamW state
        if self.dist is not None:  # FSDP replaces every parameter by its shard (a DTensor): select them again
            fsdp.shard_model(model, find_decoder_blocks(model)[1])
            self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        # What FSDP does differently (its share of the batch, batch-wide sums, gathered weights, rank 0 writes).
        self.ranks = FSDPHooks(model, self.dist) if self.dist is not None else SingleProcess(model)
        self.param_names = list(self.selection.param_names)

        # The optimizer, and what the update reuses.
        self.lr_scale = single_layer_scale(self.selection, config.single_layer_lr_scale) if self.lora is None else 1.0
        self.param_groups = build_param_groups(model, self.selection, config.lr * self.lr_scale,
                                               parse_layer_lr(config.layer_lr),
                                               {s: explicit_spec(s, self.ranked) for s in self.ranked})
        self.optimizer = make_optimizer(model, self.param_groups, config.weight_decay)
        run_setup.check_optimizer(model, self.optimizer, self.params)
        # Reference weights: the initial values of the trained tensors only (the rest never change).
        self.ref_values = [p.detach().clone() for p in self.params] if (config.beta > 0 or config.kl_metric) else None
        self.lower = run_setup.lower_stack(model, self.selection, config) if self.dist is None else None
        if config.gradient_checkpointing and self.selection.lowest_layer is not None:
            checkpoint_blocks(find_decoder_blocks(model)[1], self.selection.lowest_layer)

        # The rollout side: engine, prompts, action parsing.
        self.engine = make_engine(config.engine, model, tokenizer, max_batch_size=config.rollout_batch_size,
                                  **config.engine_options())
        self.prompts = PromptBuilder.for_domain(tokenizer, self.domain_spec, config.prompt_template, config.system_prompt,
                                                config.history_length, config.action_format)
        # score format: a step's log-prob is log pi(a | s) over the admissible actions, one value per step
        self.scoring = self.prompts.action_format == "score"
        if self.scoring and not callable(getattr(self.engine, "score_actions", None)):
            raise UserError(f"action_format score needs an engine that scores candidate actions; the {config.engine} "
                            "engine only generates: use --engine hf or another action format")
        self.engine_logprobs = EngineLogprobs(config.logprob_tolerance, self.scoring)
        self.parse_actions = self.domain_spec.actions
        self.invalid_penalty = (config.invalid_action_penalty if config.invalid_action_penalty is not None
                                else self.domain_spec.invalid_action_penalty)
        run_setup.check_prompt_fits(self.envs[0], self.prompts, config)
        spec = self.envs[0].spec
        self.max_turns = config.max_turns or (spec.max_episode_steps if spec and spec.max_episode_steps else 1)

        self.start_step = 0
        self.sinks = MetricSinks(self.run_dir, config, enabled=self._main)
        if resume:
            self._resume()
        elif self._main:
            self._write_config()

    # ------------------------------------------------------------- run directory
    def _write_config(self) -> None:
        """config.json: the run's options and what they resolved to."""
        atomic_write_json(self.run_dir / ckpt.CONFIG_FILE, {
            "config": self.config.to_dict(), "selection": self.selection.to_dict(),
            "model_source": self.model_source, "loss_agg": self.config.resolved_loss_agg(),
            "metric": self.metric, "domain": self.domain, "onelayer_version": _version(),
            "ranked_layers": {s: r.to_dict() for s, r in self.ranked.items()},
            "param_groups": [g.to_dict() for g in self.param_groups],
            "single_layer_lr_scale": self.lr_scale,
            "lora": self.lora.to_dict() if self.lora else None,
            "torch_version": torch.__version__,
        })

    def _resume(self) -> None:
        """Continue from the newest usable checkpoint, or from step 0 when there is none."""
        if self._main:
            ckpt.remove_leftovers(self.run_dir)  # temp files of writes a kill interrupted
        self.ranks.barrier()  # FSDP: no rank reads checkpoints before rank 0 has tidied the run directory
        found = _load_newest_checkpoint(self.run_dir, lambda d: self.ranks.load_checkpoint(d, self.optimizer))
        if found is None:
            print(f"resume: {self.run_dir} has no complete checkpoint; starting from step 0", file=sys.stderr)
            if self._main:
                atomic_write_text(self.run_dir / ckpt.METRICS_FILE, "")
                self._write_config()
            return
        last, state = found
        self._sync_engine()
        self.start_step = int(state["step"])
        if self._main:
            _keep_metrics_up_to(self.run_dir, self.start_step)
            _store_resumable_options(self.run_dir, self.config)
            print(f"resumed {self.run_dir} at step {self.start_step} (from {last})", file=sys.stderr)

    # ------------------------------------------------------------------ the loop
    def train(self, progress: bool = True) -> RunResult:
        """Run from ``start_step`` to ``config.steps``; evaluate, log and checkpoint along the way."""
        c = self.config
        self._print_selection()
        final_eval = None
        with _FinishStepOnInterrupt() as interrupt:
            bar = _progress(c.steps, self.start_step, progress and self._main)
            try:
                if c.eval_at_start and c.eval_size and self.start_step == 0:
                    self.sinks.append({"step": 0, **self._run_eval(0)})  # the base model's score
                for step in range(self.start_step + 1, c.steps + 1):
                    record = self.train_step(step)  # sample -> advantages -> update
                    last = step == c.steps
                    if c.eval_size and ((c.eval_every and step % c.eval_every == 0) or last):
                        final_eval = self._run_eval(step)
                        record.update(final_eval)
                    self.sinks.log(record, step)
                    if last or (c.save_every and step % c.save_every == 0) or interrupt.requested:
                        self._save(step)
                    _advance(bar, record)
                    if interrupt.requested:
                        print(f"saved checkpoint at step {step}; continue with --resume", file=sys.stderr)
                        raise SystemExit(130)
                if c.steps == 0 or self.start_step >= c.steps:  # no step ran: trained.safetensors still holds the weights
                    full = self.ranks.full_model(self.param_names)  # FSDP: gathered on every rank (a collective)
                    if self._main:
                        ckpt.save_trained(self.run_dir / ckpt.TRAINED_FILE, full, self.param_names,
                                          {"step": self.start_step})
                self.ranks.barrier()  # FSDP: rank 0 has written everything the others read back below
            finally:
                if bar is not None:
                    bar.close()
                self.sinks.close()
        return RunResult(self.run_dir, c.steps, self.selection,
                         _read_eval(self.run_dir / "eval.json", final_eval),
                         read_jsonl(self.run_dir / ckpt.METRICS_FILE))

    def train_step(self, step: int) -> dict:
        """One RL step: sample, score, update. Returns the step's flat metrics."""
        c = self.config
        for g in (self.optimizer.param_groups if self.optimizer else []):
            g["lr"] = g["base_lr"] * min(1.0, step / c.warmup_steps) if c.warmup_steps else g["base_lr"]
        t0 = time.time()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trajs = self.sample(step)
        t1 = time.time()
        if hasattr(self.engine, "release"):
            self.engine.release()  # a colocated vLLM frees its KV cache and weights for the update
        failed = [t for t in trajs if t.error is not None]
        trajs = [t for t in trajs if t.error is None]  # a crashed env's episode is left out, the batch goes on
        adv, group_stats = self.advantages(trajs)
        returns = [t.episode_return for t in trajs]
        stats = self.update(trajs, adv)
        if stats.get("optimizer_steps"):
            stats.update(self._sync_engine())
        if torch.cuda.is_available():
            stats["memory/peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        flat_adv = np.concatenate(adv) if adv else np.zeros(0)
        no_signal = sum(1 for g in {t.group for t in trajs}
                        if all(np.all(a == 0) for t, a in zip(trajs, adv) if t.group == g))
        t2 = time.time()
        steps = [s for t in trajs for s in t.steps]
        record = {
            "step": step,
            "reward": float(np.mean(returns)) if returns else 0.0,
            "reward_std": float(np.std(returns)) if returns else 0.0,
            "success_rate": float(np.mean([t.success for t in trajs])) if trajs else 0.0,
            "advantage_abs_mean": float(np.mean(np.abs(flat_adv))) if len(flat_adv) else 0.0,
            "no_signal_groups": no_signal,
            "truncated_fraction": float(np.mean([s.response_truncated for s in steps])) if steps else 0.0,
            "episode_truncated_fraction": float(np.mean([t.truncated for t in trajs])) if trajs else 0.0,
            "invalid_action_rate": float(np.mean([s.invalid_action for s in steps])) if steps else 0.0,
            "response_length": float(np.mean([len(s.response_ids) for s in steps])) if steps else 0.0,
            "episode_length": float(np.mean([t.length for t in trajs])) if trajs else 0.0,
            "env_errors": len(failed),
            "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer else 0.0,
            **({f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups}
               if self.optimizer and len(self.optimizer.param_groups) > 1 else {}),
            "single_layer_lr_scale": self.lr_scale,
            **stats,
            **group_stats,
            "time/sampling_s": t1 - t0,
            "time/training_s": t2 - t1,
        }
        return self.ranks.merge_records(record, returns, set(stats))  # FSDP: one record from every rank's

    def sample(self, step: int) -> list[Trajectory]:
        """Collect ``num_tasks x num_generations`` episodes for ``step`` (deterministic in seed and step)."""
        c = self.config
        # FSDP: this rank's share of the groups, its own sampling stream, the full weights
        episodes = self.ranks.my_episodes(self._episodes(step), c.num_tasks)
        params = SamplingParams(c.max_new_tokens, c.temperature, c.top_p,
                                derive_seed("sample", c.seed, step, *self.ranks.seed_parts))
        envs = self.envs[: len(episodes)]
        # An engine that can keep the states entering the lowest trained block while it samples (HFEngine)
        # does: the update then replays them instead of running the frozen blocks below it again.
        capture = self.lower is not None and hasattr(self.engine, "capture_block")
        if capture:
            self.engine.capture_block = self.lower.first
        # On a CPU, the C heap's free pages go back to the OS before and after sampling: what loading the model
        # or the previous update freed does not sit under the KV cache, and the freed cache does not sit under
        # the update (glibc keeps freed blocks otherwise), so the step peaks at the larger phase, not their sum.
        on_cpu = next(self.model.parameters()).device.type == "cpu"
        if on_cpu:
            release_freed_memory()
        try:
            with self.ranks.sampling_weights():
                trajs = collect(self.engine, self.prompts, envs, episodes, params,
                                max_turns=self.max_turns, max_prompt_tokens=c.max_prompt_length,
                                parse_actions=self.parse_actions, invalid_action_penalty=self.invalid_penalty,
                                env_factory=lambda: gym.make(c.env, **c.env_kwargs))
        finally:
            if capture:
                self.engine.capture_block = None  # evaluation samples without keeping states
        self.envs[: len(episodes)] = envs  # collect replaces crashed envs in the list it is given
        self._add_reward_funcs(trajs)
        if on_cpu:
            release_freed_memory()
        return trajs

    def advantages(self, trajs: list[Trajectory]) -> tuple[list[np.ndarray], dict]:
        """Per-step advantages for every trajectory (one array each) and estimator diagnostics.

        The estimator is the registered one of ``config.algo`` (training/advantages.py); groups
        are the batch's tasks (``Trajectory.group``).
        """
        return ESTIMATORS[self.config.algo](trajs, self.config)

    def update(self, trajs: list[Trajectory], adv: list[np.ndarray]) -> dict:
        """PPO-clipped policy update of the selected parameters on one sampled batch; returns step metrics.

        ``adv`` holds one array per trajectory with one advantage per step; each step's
        response tokens get that step's advantage (training/ppo.py has the update itself).
        """
        logprobs = RowLogprobs(self.model, self.engine.pad_id, scoring=self.scoring, temperature=self.config.temperature,
                               chunk_size=self.config.logprob_chunk_size, lower=self.lower,
                               share_prompts=self.config.share_prompts)
        with self.ranks.update_weights():  # FSDP: the root's frozen tensors stay gathered
            return ppo_update(logprobs, rows_from(trajs, adv), self.config, self.optimizer, self.params,
                              engine=self.engine_logprobs, ref_values=self.ref_values, ranks=self.ranks,
                              selection=self.selection.describe())

    def evaluate(self) -> EvalResult:
        """Greedy score on items 0..eval_size-1 of the env's eval split."""
        c = self.config
        return evaluate_policy(self.engine, self.prompts, c.env, c.env_kwargs, num_items=c.eval_size,
                               max_new_tokens=c.eval_max_new_tokens or c.max_new_tokens, temperature=0.0,
                               seed=c.seed, batch_size=c.rollout_batch_size, max_turns=c.max_turns, metric=self.metric,
                               parse_actions=self.parse_actions)

    def _run_eval(self, step: int) -> dict:
        """Evaluate, write eval.json, and return the metrics for the step's record."""
        t = time.time()
        res = self.ranks.on_main(self.evaluate)  # FSDP: rank 0 evaluates with the full weights, the others wait
        if res is None:
            return {}
        out = res.to_dict()
        out.update(step=step, env=self.config.env, model=self.config.model, layers=self.config.layers,
                   run_dir=str(self.run_dir))
        atomic_write_json(self.run_dir / "eval.json", out)
        return {f"eval/{res.metric}": res.value, "time/eval_s": time.time() - t}

    def _save(self, step: int) -> None:
        """Checkpoint after ``step`` (FSDP: every rank gathers the full tensors and optimizer state, rank 0 writes)."""
        model = self.ranks.full_model(self.param_names)
        optimizer = self.ranks.optimizer_to_save(self.optimizer)
        if self._main:
            ckpt.save_checkpoint(self.run_dir, step, model, self.param_names, optimizer,
                                 {"selection": self.selection.to_dict()}, self.config.save_total_limit)
        self.ranks.barrier()

    # ------------------------------------------------------------- loop helpers
    def _episodes(self, step: int) -> list[EpisodeSpec]:
        """The step's task groups: ``num_tasks`` task seeds, each sampled ``num_generations`` times."""
        c = self.config
        rng = random.Random(derive_seed("tasks", c.seed, step))
        specs = []
        for g in range(c.num_tasks):
            task_seed = rng.randrange(2**31)
            specs += [EpisodeSpec(group=g, sample=k, seed=task_seed) for k in range(c.num_generations)]
        return specs

    def _add_reward_funcs(self, trajs: list[Trajectory]) -> None:
        """Add the ``reward_funcs`` rewards to each step's reward (TRL's reward_funcs call)."""
        if not self.reward_funcs:
            return
        steps = [s for t in trajs for s in t.steps]
        prompts = [self.tokenizer.decode(s.prompt_ids) for s in steps]
        completions = [s.response_text for s in steps]
        for fn in self.reward_funcs:
            extra = fn(prompts=prompts, completions=completions, task_ids=[t.task_id for t in trajs for _ in t.steps])
            if len(extra) != len(steps):
                raise UserError(f"reward function {fn.__name__} returned {len(extra)} values for {len(steps)} completions")
            for s, r in zip(steps, extra):
                s.reward += float(r)

    def _sync_engine(self) -> dict:
        """Send the trained tensors, and nothing else, to the rollout engine (the HF engine shares the model: no-op)."""
        t = time.perf_counter()
        sent = self.engine.sync_weights(trained_tensors(self.model, self.param_names))
        return {"sync/bytes": getattr(sent, "bytes", 0), "time/sync_s": time.perf_counter() - t}

    def _print_selection(self) -> None:
        """Say what trains, and at which learning rates."""
        print(self.selection.describe(), file=sys.stderr)
        if len(self.param_groups) > 1 or self.lr_scale != 1.0:
            print(describe_groups(self.param_groups), file=sys.stderr)
        elif self.config.single_layer_lr_scale != 1.0:
            print(f"single_layer_lr_scale {self.config.single_layer_lr_scale:g} does not apply: the selection is not "
                  "one block", file=sys.stderr)


def train(config: TrainConfig | dict | None = None, resume: bool = False, progress: bool = True, model=None,
          tokenizer=None, **overrides) -> RunResult:
    """Python entry point: ``onelayer.train(layers="15", steps=20, out="runs/x")``."""
    if config is None:
        config = TrainConfig()
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    return Trainer(config, resume=resume, model=model, tokenizer=tokenizer).train(progress=progress)


class _FinishStepOnInterrupt:
    """Ctrl-C finishes the current step, saves a checkpoint and exits cleanly; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not in the main thread
            self._old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _progress(total: int, start: int, enabled: bool):
    """A tqdm bar on stderr, or None."""
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="onelayer train", unit="step", file=sys.stderr)


def _advance(bar, record: dict) -> None:
    """One step done: the bar shows the step's reward and eval scores."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}",
                        **{k.split("/")[1]: f"{v:.3f}" for k, v in record.items() if k.startswith("eval/")})


def _version() -> str:
    """The installed onelayer's version (read from its metadata: training sits below the top package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onelayer")
    except PackageNotFoundError:
        return "unknown"
