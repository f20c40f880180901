"""``onelayer probe``: cheap per-layer scores on the base model that rank layers without a sweep (issue 25).

A sweep measures each layer's contribution ``C_l`` by RL-training it alone (L runs). A probe scores
every block of the untrained model in a small fraction of that time, with the sweep's own settings
(env, preset, algorithm, batch, lr; ``benchmarks/sweep.py``) and onelayer's own sampling, advantage
and log-prob code (``Trainer.sample`` / ``Trainer.advantages``, ``training/rows.py``,
``training/losses.py``, ``training/optim.py``). Methods, each a score per block (higher = more worth
training):

- ``grad-norm``: ``||g_l||_2``, the policy gradient of the run's loss restricted to block l's
  parameters, at the base model on ``batches`` sampled batches (mean over batches). At the sampling
  policy the PPO ratio is 1 and the clip is inactive, so ``g = -grad sum_i,t A_i log pi(y_it | x_i, y_i<t) / norm``
  with the run's advantages (GRPO / Dr. GRPO / GiGPO) and loss aggregation: the gradient of a sweep's first step.
- ``grad-rel``: ``||g_l|| / ||W_l||``, the relative gradient norm (surgical fine-tuning's layer score).
- ``fisher``: ``tr F_l = sum_i E[(d log pi(y|x) / d theta_i)^2]`` over block l's parameters: the
  diagonal of the policy's Fisher information, on the env's own sampled responses of the first batch
  (one backward per response, ``y`` the whole response of one LLM call; the score action format: the chosen
  action).
- ``skip``: ``S_base - S_skip(l)``, the in-domain suite score lost when block l is skipped (its output
  replaced by its input, which is zeroing its residual branch), on the suite's first ``panel_items`` items.
- ``lookahead``: one RL step on block l alone, then the change of reward on a fixed panel. The step is
  AdamW's first step on block l from the first batch's gradient, clipped and scaled as a sweep's
  single-layer job takes it (the gradient of a block does not depend on which other blocks train, so one
  backward serves every layer; a test checks the step equals ``Trainer.update`` on that block). The panel
  is ``panel_batches`` further batches sampled once from the base model (``Trainer.sample`` at steps
  0, -1, ...: never a training step); the reward change is estimated on those fixed rollouts with
  self-normalised importance weights ``w = pi_new(tau) / pi_base(tau)``:
  ``dR_l = sum w R / sum w - mean R`` (no new generation, so one step's small change is not lost in
  sampling noise or greedy ties).

``DIR/ranking.json`` is ``{"model", "num_layers", "domain", "env", "methods": {METHOD: {"scores":
{"0": s, ...}, "ranking": [best first], "seconds"}}}`` with the methods in :data:`METHODS` order, the
recommended one first; ``--layers top:K@DIR[:METHOD]`` trains its top K. ``DIR/probe.json`` holds the
settings, every stage's time, the estimate of the sweep's cost and each method's fraction of it;
``DIR/probe.md`` and ``DIR/probe.png`` the table and the plot.

Cost: a method's ``seconds`` is everything it needs (the batches it samples included, the model load
not), as if it ran alone, so methods that share a batch each count it. The sweep it replaces is the
one-seed sweep of every block on the same settings: ``L`` single-layer jobs, one full-parameter job and
the base evaluation, estimated as ``(L + 1) x steps x (t_sample + t_grad) + (L + 2) x t_eval`` from this
probe's own first batch (``t_sample``: sampling it, ``t_grad``: its all-block backward, an upper bound for
a single-layer step, which stops at its block) and the suites' evaluation time (measured on the panel by
``skip`` and scaled to the suites' item counts, else scaled from ``t_sample`` per rollout). ``onelayer
report SWEEP_DIR --probe DIR`` compares with the sweep's measured job times instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from onelayer.errors import UserError
from onelayer.io import atomic_write_json, atomic_write_text

METHODS = ("lookahead", "grad-rel", "grad-norm", "fisher", "skip")
"""Every probe method, the recommended one first: ranking.json lists the methods in this order, and
``top:K@PROBE_DIR`` without ``:METHOD`` uses the first one computed. Set by the validation against measured
sweeps (docs/probe.md, results/RESULTS.md): on math the one-step look-ahead ranked the 30 layers of the
default model with Spearman 0.91 against the measured C_l over 2 seeds (the gradient norms and Fisher
0.62-0.66, skipping a layer -0.06) for 3% of the sweep's cost, and its top 3 trained on new seeds scored
as the sweep's top 3. Code and ALFWorld are not validated yet."""

RANKING_FILE = "ranking.json"
PROBE_FILE = "probe.json"


def log_stderr(msg: str) -> None:
    """Progress lines go to stderr (stdout carries the result table)."""
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- records
@dataclass
class MethodResult:
    """One method's per-block scores (higher = more worth training) and what they cost."""

    scores: dict[int, float]
    seconds: float
    details: dict = field(default_factory=dict)

    @property
    def ranking(self) -> list[int]:
        """Block indices, best first (ties: the lower index first, as ``top:K`` picks them)."""
        return sorted(self.scores, key=lambda layer: (-self.scores[layer], layer))


@dataclass
class SweepEstimate:
    """The estimated cost of the one-seed sweep of every block that a probe replaces."""

    seconds: float
    num_layers: int
    steps: int
    step_seconds: float
    eval_seconds: float
    how: str


@dataclass
class ProbeRanking:
    """A probe directory as ``onelayer report --probe`` and ``top:K@PROBE_DIR`` read it."""

    path: Path
    model: str
    num_layers: int
    domain: str
    env: str | None
    methods: dict[str, MethodResult]
    info: dict
    """``probe.json`` (settings, stage times, sweep estimate, machine); empty when absent."""


def read_probe(probe_dir: str | Path) -> ProbeRanking:
    """Read and check ``PROBE_DIR/ranking.json`` (and ``probe.json`` when present); a UserError says what is wrong."""
    d = Path(probe_dir)
    path = d / RANKING_FILE
    if not d.is_dir():
        raise UserError(f"probe directory {d} does not exist: run `onelayer probe --out {d}` first, or fix the path")
    if not path.is_file():
        raise UserError(f"{d} has no {RANKING_FILE}: run `onelayer probe --out {d}` (an interrupted probe writes none)")
    try:
        data = json.loads(path.read_text())
        if "domains" in data:
            raise UserError(f"{d} is a sweep directory, not a probe's: pass a directory of `onelayer probe`")
        num_layers = int(data["num_layers"])
        methods = {}
        for name, m in data["methods"].items():
            scores = {int(k): float(v) for k, v in m["scores"].items()}
            methods[name] = MethodResult(scores, float(m["seconds"]))
        model, domain = str(data["model"]), str(data["domain"])
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {e}): rerun `onelayer probe --out {d}`") from None
    for name, m in methods.items():
        if sorted(m.scores) != list(range(num_layers)) or not all(math.isfinite(v) for v in m.scores.values()):
            raise UserError(f"{path}: method {name!r} must score every layer 0..{num_layers - 1} with a finite number: "
                            f"rerun `onelayer probe --out {d}`")
    info = {}
    if (d / PROBE_FILE).is_file():
        try:
            info = json.loads((d / PROBE_FILE).read_text())
        except ValueError:
            raise UserError(f"{d / PROBE_FILE} is damaged: rerun `onelayer probe --out {d}`") from None
    return ProbeRanking(d, model, num_layers, domain, data.get("env"), methods, info)


# ----------------------------------------------------------------------------- settings
def probe_settings(env: str | None, *, model: str | None = None, preset: str | None = None, algo: str | None = None,
                   seed: int = 0, train: dict | None = None, suite: str | None = None):
    """The sweep whose first step the probe looks at: ``(SweepSpec, domain, suite)``.

    The preset's settings (or the sweep defaults) with ``model``, ``algo`` and the ``train`` options
    given here on top; ``env`` defaults to the preset's only domain. ``suite`` replaces the domain's
    in-domain suite and must score the same env.
    """
    from onelayer.benchmarks.suites import get_suite
    from onelayer.benchmarks.sweep import SweepSpec, preset_spec, validate_spec
    from onelayer.envs.domain import domain_spec

    data = preset_spec(preset) if preset else {}
    if env is None:
        if len(data.get("domains", [])) != 1:
            raise UserError("--env ID is required (e.g. --env onelayer/Math-v0), unless --preset names one domain")
        env = data["domains"][0]
    spec_env = domain_spec(env)  # an unknown env is a one-line error naming the registered ones
    if preset:
        names = {domain_spec(d).name for d in data.get("domains", [])}
        if spec_env.name not in names:
            raise UserError(f"preset {preset!r} sweeps {', '.join(sorted(names))}, not {spec_env.name!r} ({env}): "
                            "use a preset of this env's domain, or none")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    stored_train = dict(data.get("train", {}))
    key = next((k for k in (env, spec_env.name, spec_env.env_id) if isinstance(stored_train.get(k), dict)), env)
    if train:
        stored_train[key] = {**stored_train.get(key, {}), **train}  # the options given here win over the preset's
    data.update(domains=[env], seeds=[seed], layers="all", train=stored_train, executor="local")
    if model is not None:
        data["model"] = model
    if algo is not None:
        data["algos"] = [algo]
    spec = SweepSpec.from_dict({k: v for k, v in data.items() if k != "preset"} | {"preset": preset})
    validate_spec(spec)
    own = get_suite(suite) if suite else get_suite(spec.domain_suites(env)[0])
    if own.env != spec_env.env_id:
        raise UserError(f"suite {own.name} scores {own.env}, not {spec_env.env_id}: the probe's skip damage is measured "
                        "on the probed env's own suite")
    if spec.eval_items:
        own = own.with_overrides(num_items=spec.eval_items)
    return spec, env, own


# ----------------------------------------------------------------------------- gradients
def row_logprobs(trainer):
    """The policy's log-probs over update rows, computed as the trainer's update computes them (training/rows.py),
    a group's responses packed after one copy of their prompt when the run does (``share_prompts``, the default)."""
    from onelayer.training.rows import RowLogprobs

    c = trainer.config
    return RowLogprobs(trainer.model, trainer.engine.pad_id, scoring=trainer.scoring, temperature=c.temperature,
                       chunk_size=c.logprob_chunk_size, share_prompts=c.share_prompts)


def accumulate_policy_gradient(logprobs, rows, config) -> None:
    """Add the gradient of the run's policy loss on ``rows`` at the sampling policy to every trainable ``.grad``.

    ``logprobs`` is a ``training.rows.RowLogprobs`` (:func:`row_logprobs`), ``rows`` the batch's
    ``training.rows.rows_from(trajs, advantages)``. The PPO-clip token loss ``-min(r A, clip(r) A)`` at
    ``r = 1`` (old log-probs = current ones, as in ``training.ppo.ppo_update``'s first pass), aggregated with
    the run's ``loss_agg`` over the whole batch and micro-batched as ``config.micro_batch_size``: the gradient
    the trainer's first optimizer step on this batch sees.
    """
    from onelayer.training.losses import agg_norm, aggregate, ppo_clip_token_loss

    logprobs.start(rows)
    mb = config.micro_batch_size
    resp = logprobs.batch(list(range(len(rows)))).resp
    norm = agg_norm(resp, config.resolved_loss_agg(), 1.0 if logprobs.scoring else config.max_new_tokens)
    for s in range(0, len(rows), mb):
        idx = list(range(s, min(len(rows), s + mb)))
        if all(rows[i].advantage == 0.0 for i in idx):
            continue  # zero advantage: zero gradient (its tokens still count in `norm`)
        b = logprobs.batch(idx)
        lp, _ = logprobs(b)
        tok_loss, _ = ppo_clip_token_loss(lp, lp.detach(), b.adv, config.epsilon, config.epsilon_high)
        aggregate(tok_loss, b.resp, norm).backward()


def _sequence_logprobs(logprobs, rows, micro_batch_size: int) -> np.ndarray:
    """``log pi(y | x)`` of every row's response (the sum over its tokens; no grad), float64."""
    logprobs.start(rows)
    out = []
    with torch.no_grad():
        for s in range(0, len(rows), micro_batch_size):
            b = logprobs.batch(list(range(s, min(len(rows), s + micro_batch_size))))
            lp, _ = logprobs(b)
            out += (lp * b.resp).sum(-1).double().tolist()
    return np.asarray(out, dtype=np.float64)


def _block_sq(block, what: str) -> float:
    """Sum of squares of a block's gradients (``grad``) or weights (``weight``), in float64."""
    total = 0.0
    for p in block.parameters():
        t = p.grad if what == "grad" else p.detach()
        if t is not None:
            total += float(t.double().pow(2).sum())
    return total


def lookahead_step(model, layer: int, config) -> list[torch.Tensor]:
    """One RL optimizer step on block ``layer`` alone, from the gradient in its parameters' ``.grad``.

    The step a sweep's single-layer job takes on the same batch: its lr (``lr x single_layer_lr_scale``,
    warm-up at step 1), gradient clipping over the block (``max_grad_norm``) and a fresh AdamW (the
    trainer's ``make_optimizer``). The ``.grad`` tensors are left as they were; returns the block's old
    values, which :func:`restore_block` puts back.
    """
    from onelayer.training.layers import select_parameters
    from onelayer.training.optim import build_param_groups, make_optimizer, single_layer_scale

    selection = select_parameters(model, str(layer))
    lr = config.lr * single_layer_scale(selection, config.single_layer_lr_scale)
    if config.warmup_steps:
        lr *= min(1.0, 1 / config.warmup_steps)  # the trainer's warm-up at step 1
    opt = make_optimizer(model, build_param_groups(model, selection, lr, []), config.weight_decay)
    params = [p for g in opt.param_groups for p in g["params"]]
    old = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    try:
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g.clone()  # clipping below works in place
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
    finally:
        for p, g in zip(params, grads):
            p.grad = g
    return old


def restore_block(model, layer: int, old: list[torch.Tensor]) -> None:
    """Put back the values :func:`lookahead_step` returned."""
    from onelayer.training.layers import select_parameters

    named = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in zip(select_parameters(model, str(layer)).param_names, old):
            named[n].copy_(v)


@contextlib.contextmanager
def skipped(block):
    """Inside, ``block`` passes its input through unchanged (its residual branch zeroed: the block skipped)."""
    def hook(module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = block.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- the probe
def _check_methods(methods) -> list[str]:
    chosen = list(METHODS) if not methods else [m.strip() for m in methods if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise UserError(f"unknown probe method(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(METHODS)}")
    return [m for m in METHODS if m in chosen]  # the recommended order, whatever order was asked


def run_probe(env: str | None, out: str | Path, *, model: str | None = None, methods=None, seed: int = 0,
              suite: str | None = None, preset: str | None = None, algo: str | None = None, train: dict | None = None,
              batches: int = 2, panel_batches: int = 1, panel_items: int = 64, fisher_samples: int = 32,
              device: str = "auto", dtype: str = "auto", log=log_stderr) -> dict[str, MethodResult]:
    """Score every block of ``model`` on ``env`` with ``methods`` (default: all of :data:`METHODS`); write ``out``.

    ``batches``: sampled batches the gradient norms average over (the first one also gives the Fisher
    samples and the look-ahead's gradient); ``panel_batches``: the look-ahead's fixed panel;
    ``panel_items``: the suite items the skip damage is measured on; ``fisher_samples``: responses of the
    first batch whose log-likelihood gradient the Fisher averages. Returns each method's result.
    """
    from onelayer.agents.models import load_model
    from onelayer.benchmarks.machine import describe_machine
    from onelayer.benchmarks.sweep import SPEC_FILE, Job, job_train_config
    from onelayer.envs.domain import domain_spec
    from onelayer.training.layers import find_decoder_blocks
    from onelayer.training.trainer import Trainer

    chosen = _check_methods(methods)
    for name, value, low in (("--batches", batches, 1), ("--panel-batches", panel_batches, 1),
                             ("--panel-items", panel_items, 1), ("--fisher-samples", fisher_samples, 1)):
        if not isinstance(value, int) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    out = Path(out)
    if (out / SPEC_FILE).is_file() or (out / "results.jsonl").is_file():
        raise UserError(f"{out} holds a sweep: a probe would overwrite its ranking.json; choose another --out")
    spec, domain_arg, own_suite = probe_settings(env, model=model, preset=preset, algo=algo, seed=seed, train=train,
                                                 suite=suite)
    dspec = domain_spec(domain_arg)
    algo_name, scale = spec.algos[0], spec.lr_scales()[0]
    t0 = time.perf_counter()
    mdl, tok, _ = load_model(spec.model, device, dtype)
    load_s = time.perf_counter() - t0
    blocks = find_decoder_blocks(mdl)[1]
    num_layers = len(blocks)
    log(f"probe: {spec.model} ({num_layers} blocks) on {dspec.env_id}, {algo_name}, seed {seed}; methods "
        f"{', '.join(chosen)} (model loaded in {load_s:.0f} s)")
    stages: dict[str, float] = {}
    results: dict[str, MethodResult] = {}
    with tempfile.TemporaryDirectory(prefix="onelayer-probe-") as tmp:
        # The sweep's own single-layer job settings, with every block trainable so one backward gives every
        # block's gradient; no KL term (its gradient is 0 at the reference, which the base model is).
        cfg = job_train_config(spec, Job(domain_arg, algo_name, seed, "layer", "all", None, lr_scale=scale),
                               Path(tmp) / "sampler")
        cfg = dataclasses.replace(cfg, beta=0.0, kl_metric=False, single_layer_lr_scale=scale)
        trainer = Trainer(cfg, model=mdl, tokenizer=tok)
        try:
            results = _score(trainer, blocks, chosen, cfg, own_suite, batches, panel_batches, panel_items,
                             fisher_samples, stages, log)
        finally:
            for e in trainer.envs:
                e.close()
    estimate = estimate_sweep(spec, domain_arg, num_layers, stages, own_suite, cfg)
    info = {
        "model": spec.model, "num_layers": num_layers, "domain": dspec.name, "env": dspec.env_id, "seed": seed,
        "algo": algo_name, "preset": preset, "suite": own_suite.name, "methods_order": list(METHODS),
        "settings": {"batches": batches, "panel_batches": panel_batches, "panel_items": panel_items,
                     "fisher_samples": fisher_samples, "lr": cfg.lr, "single_layer_lr_scale": scale,
                     "steps": spec.steps, "train_options": spec.train_options(domain_arg),
                     "num_tasks": cfg.num_tasks, "num_generations": cfg.num_generations,
                     "max_new_tokens": cfg.max_new_tokens, "loss_agg": cfg.resolved_loss_agg(),
                     "num_iterations": cfg.num_iterations, "mini_batch_size": cfg.mini_batch_size},
        "stages_s": stages, "model_load_s": load_s,
        "sweep_estimate": dataclasses.asdict(estimate),
        "methods": {m: {"seconds": r.seconds, "fraction_of_sweep": r.seconds / estimate.seconds if estimate.seconds else None,
                        "ranking": r.ranking, "details": r.details} for m, r in results.items()},
        "machine": describe_machine(),
    }
    write_probe(out, spec.model, num_layers, dspec.name, dspec.env_id, results, info)
    return results


def _score(trainer, blocks, chosen, cfg, own_suite, batches, panel_batches, panel_items, fisher_samples, stages,
           log) -> dict[str, MethodResult]:
    """Every chosen method's scores; ``stages`` gets each stage's seconds."""
    from onelayer.training.rows import rows_from

    model, logprobs = trainer.model, row_logprobs(trainer)
    num_layers = len(blocks)
    out: dict[str, MethodResult] = {}
    need_grad = {"grad-norm", "grad-rel", "lookahead"} & set(chosen)
    need_batch = need_grad | ({"fisher"} & set(chosen))
    panel = None
    if "lookahead" in chosen:  # sampled from the base model, before any weight moves
        t = time.perf_counter()
        trajs = [tr for step in range(0, -panel_batches, -1) for tr in trainer.sample(step) if tr.error is None]
        prows = rows_from(trajs, [np.zeros(tr.length) for tr in trajs])
        owner = np.asarray([k for k, tr in enumerate(trajs) for s in tr.steps if s.response_ids])
        returns = np.asarray([tr.episode_return for tr in trajs], dtype=np.float64)
        if len(returns) < 2 or np.ptp(returns) == 0:
            raise UserError(f"the look-ahead's panel of {len(returns)} rollouts has one reward for all "
                            f"({returns[0] if len(returns) else 'none'}): no reward change can show on it; raise "
                            "--panel-batches, or probe a task the base model sometimes solves")
        base_lp = _sequence_logprobs(logprobs, prows, cfg.micro_batch_size)
        stages["panel_s"] = time.perf_counter() - t
        panel = (prows, owner, returns, base_lp)
        log(f"probe: look-ahead panel of {len(trajs)} rollouts, mean reward {returns.mean():.4f} "
            f"({stages['panel_s']:.0f} s)")
    norms_per_batch, first_rows = [], None
    for b in range(1, (batches if need_grad else 1 if need_batch else 0) + 1):
        t = time.perf_counter()
        trajs = [tr for tr in trainer.sample(b) if tr.error is None]
        adv, _ = trainer.advantages(trajs)
        rows = rows_from(trajs, adv)
        stages[f"sample_{b}_s"] = time.perf_counter() - t
        if b == 1:
            first_rows = rows
        if not need_grad:
            continue
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        accumulate_policy_gradient(logprobs, rows, cfg)
        norms_per_batch.append([math.sqrt(_block_sq(blk, "grad")) for blk in blocks])
        stages[f"grad_{b}_s"] = time.perf_counter() - t
        log(f"probe: batch {b}: {len(rows)} responses, mean reward {np.mean([tr.episode_return for tr in trajs]):.4f}, "
            f"policy gradient {math.sqrt(sum(n * n for n in norms_per_batch[-1])):.3g} "
            f"({stages[f'sample_{b}_s']:.0f} s sampling, {stages[f'grad_{b}_s']:.0f} s gradient)")
        if b == 1 and "lookahead" in chosen:
            if not any(norms_per_batch[0]):
                raise UserError("the look-ahead's batch (the first) carries no learning signal (every group's rewards "
                                "are equal, so every advantage is 0): probe with another --seed, or a task the base "
                                "model sometimes solves")
            out["lookahead"] = _lookahead(model, blocks, cfg, logprobs, panel, stages)
    if need_grad and not any(n > 0 for norms in norms_per_batch for n in norms):
        raise UserError(f"the {len(norms_per_batch)} sampled batch(es) carry no learning signal (every group's rewards "
                        "are equal, so every advantage is 0): raise --batches, or probe a task the base model "
                        "sometimes solves")
    grad_s = sum(stages[f"sample_{b}_s"] + stages[f"grad_{b}_s"] for b in range(1, len(norms_per_batch) + 1))
    if "grad-norm" in chosen or "grad-rel" in chosen:
        mean_norm = np.mean(np.asarray(norms_per_batch), axis=0)
        details = {"per_batch": [[float(v) for v in n] for n in norms_per_batch]}
        if "grad-norm" in chosen:
            out["grad-norm"] = MethodResult({i: float(v) for i, v in enumerate(mean_norm)}, grad_s, details)
        if "grad-rel" in chosen:
            t = time.perf_counter()
            w = [math.sqrt(_block_sq(blk, "weight")) for blk in blocks]
            rel = {i: float(mean_norm[i] / w[i]) if mean_norm[i] > 0 else 0.0 for i in range(num_layers)}
            out["grad-rel"] = MethodResult(rel, grad_s + time.perf_counter() - t, {"weight_norm": w})
    if "lookahead" in out:
        out["lookahead"].seconds += stages["sample_1_s"] + stages["grad_1_s"] + stages["panel_s"]
    if "fisher" in chosen:
        out["fisher"] = _fisher(model, blocks, first_rows[:fisher_samples], logprobs, stages)
        out["fisher"].seconds += stages["sample_1_s"]
    model.zero_grad(set_to_none=True)
    if "skip" in chosen:
        out["skip"] = _skip(trainer, blocks, own_suite, panel_items, cfg, stages, log)
    return {m: out[m] for m in METHODS if m in out}


def _lookahead(model, blocks, cfg, logprobs, panel, stages) -> MethodResult:
    """Per block: one RL step on it alone, the panel's importance-weighted reward change, the block restored."""
    prows, owner, returns, base_lp = panel
    t = time.perf_counter()
    scores, weights_spread = {}, []
    for layer in range(len(blocks)):
        old = lookahead_step(model, layer, cfg)
        try:
            new_lp = _sequence_logprobs(logprobs, prows, cfg.micro_batch_size)
        finally:
            restore_block(model, layer, old)
        log_w = np.bincount(owner, weights=new_lp - base_lp, minlength=len(returns))  # log pi_new/pi_base per rollout
        w = np.exp(log_w - log_w.max())
        scores[layer] = float(np.sum(w * returns) / np.sum(w) - returns.mean())
        weights_spread.append(float(np.std(log_w)))
    stages["lookahead_s"] = time.perf_counter() - t
    return MethodResult(scores, stages["lookahead_s"], {"panel_rollouts": len(returns),
                                                        "panel_mean_reward": float(returns.mean()),
                                                        "log_weight_sd": weights_spread})


def _fisher(model, blocks, rows, logprobs, stages) -> MethodResult:
    """``tr F_l``: the mean over responses of the squared gradient of ``log pi(y|x)``, summed over block l's weights."""
    t = time.perf_counter()
    total = np.zeros(len(blocks))
    for row in rows:  # one backward per response: the Fisher needs per-sample gradients
        model.zero_grad(set_to_none=True)
        logprobs.start([row])
        b = logprobs.batch([0])
        lp, _ = logprobs(b)
        (lp * b.resp).sum().backward()
        total += [_block_sq(blk, "grad") for blk in blocks]
    model.zero_grad(set_to_none=True)
    stages["fisher_s"] = time.perf_counter() - t
    fisher = total / max(len(rows), 1)
    return MethodResult({i: float(v) for i, v in enumerate(fisher)}, stages["fisher_s"], {"samples": len(rows)})


def _skip(trainer, blocks, suite, panel_items, cfg, stages, log) -> MethodResult:
    """``S_base - S_skip(l)`` on the suite's first ``panel_items`` items (greedy or as the suite samples)."""
    from onelayer.agents.engine import HFEngine
    from onelayer.benchmarks.suites import run_suite

    panel = suite.with_overrides(num_items=panel_items if suite.num_items is None else min(panel_items, suite.num_items))
    engine = HFEngine(trainer.model, trainer.tokenizer, max_batch_size=cfg.rollout_batch_size)
    kw = dict(prompt_template=cfg.prompt_template, system_prompt=cfg.system_prompt, history_length=cfg.history_length,
              batch_size=cfg.rollout_batch_size, action_format=cfg.action_format)
    t = time.perf_counter()
    base = run_suite(panel, engine, trainer.tokenizer, **kw)
    stages["skip_base_eval_s"] = time.perf_counter() - t
    stages["skip_panel_evals"] = base["num_items"] * panel.num_samples
    s_base = float(base[base["metric"]])
    base_answers = [i["response"] for i in base["items"]]
    scores, skipped_scores, changed = {}, {}, {}
    for layer, block in enumerate(blocks):
        with skipped(block):
            res = run_suite(panel, engine, trainer.tokenizer, **kw)
        skipped_scores[layer] = float(res[res["metric"]])
        scores[layer] = s_base - skipped_scores[layer]
        changed[layer] = float(np.mean([a != i["response"] for a, i in zip(base_answers, res["items"])]))
    stages["skip_s"] = time.perf_counter() - t
    log(f"probe: skip: base {base['metric']} {s_base:.4f} on {base['num_items']} items of {suite.name}; "
        f"{stages['skip_s']:.0f} s")
    return MethodResult(scores, stages["skip_s"], {
        "suite": suite.name, "items": base["num_items"], "metric": base["metric"], "base": s_base,
        "skipped": skipped_scores, "changed_answers": changed})


def estimate_sweep(spec, domain: str, num_layers: int, stages: dict, own_suite, cfg) -> SweepEstimate:
    """The one-seed sweep of every block on the probe's settings (see the module docstring for the formula)."""
    from onelayer.benchmarks.suites import get_suite

    suites = [get_suite(n) for n in spec.eval_suites(domain)]
    suites = [s.with_overrides(num_items=spec.eval_items) if spec.eval_items else s for s in suites]
    rollouts = cfg.num_tasks * cfg.num_generations
    step_s = stages.get("sample_1_s", 0.0) + stages.get("grad_1_s", 0.0)
    measured = "skip_base_eval_s" in stages
    if measured:  # the skip method timed the base model on the in-domain suite's panel
        per_item = stages["skip_base_eval_s"] / max(stages["skip_panel_evals"], 1)
        source = f"measured on {own_suite.name}'s panel by the skip method"
    else:  # an evaluated item costs about what a sampled rollout does, per generated token
        per_item = stages.get("sample_1_s", 0.0) / max(rollouts, 1)
        source = "the first batch's sampling time per rollout, scaled by each suite's max_new_tokens"
    eval_s = 0.0
    for s in suites:
        n = s.num_items if s.num_items is not None else _suite_size(s)
        tokens = 1.0 if measured else s.max_new_tokens / max(cfg.max_new_tokens, 1)
        eval_s += per_item * n * s.num_samples * tokens
    seconds = (num_layers + 1) * spec.steps * step_s + (num_layers + 2) * eval_s
    how = (f"({num_layers} single-layer jobs + 1 full) x {spec.steps} steps x {step_s:.1f} s per step (this probe's "
           f"first batch: sampling + all-block gradient) + {num_layers + 2} evaluations x {eval_s:.1f} s (suites "
           f"{', '.join(s.name for s in suites)}; per item: {source})")
    return SweepEstimate(seconds, num_layers, spec.steps, step_s, eval_s, how)


def _suite_size(suite) -> int:
    from onelayer.agents.evaluation import make_eval_env
    from onelayer.benchmarks.suites import env_kwargs_of

    env = make_eval_env(suite.env, env_kwargs_of(suite))
    try:
        return int(getattr(env.unwrapped, "num_tasks", 0) or 0)
    finally:
        env.close()


# ----------------------------------------------------------------------------- output
def write_probe(out: str | Path, model: str, num_layers: int, domain: str, env: str | None,
                results: dict[str, MethodResult], info: dict | None = None) -> Path:
    """Write ``ranking.json`` (atomically), ``probe.json``, ``probe.md`` and ``probe.png``; return ranking.json."""
    for m, r in results.items():
        if sorted(r.scores) != list(range(num_layers)) or not all(math.isfinite(v) for v in r.scores.values()):
            raise ValueError(f"probe method {m!r} must score every layer 0..{num_layers - 1} with a finite number")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = info or {}
    ordered = {m: results[m] for m in [*METHODS, *results] if m in results}
    if info:
        atomic_write_json(out / PROBE_FILE, info)
    atomic_write_text(out / "probe.md", probe_markdown(model, num_layers, domain, env, ordered, info) + "\n")
    try:
        _plot(out / "probe.png", ordered, f"{model} on {env or domain}")
    except ImportError:  # matplotlib is a core dependency; a broken install loses the plot, not the ranking
        pass
    # Written last: a ranking.json means a finished probe (top:K@DIR reads it).
    return atomic_write_json(out / RANKING_FILE, {
        "model": model, "num_layers": num_layers, "domain": domain, "env": env,
        "methods": {m: {"scores": {str(k): r.scores[k] for k in sorted(r.scores)}, "ranking": r.ranking,
                        "seconds": r.seconds} for m, r in ordered.items()}})


def probe_table(results: dict[str, MethodResult], info: dict) -> str:
    """The methods' cost and top layers as a Markdown table (printed by ``onelayer probe``)."""
    est = info.get("sweep_estimate") or {}
    frac = {m: v.get("fraction_of_sweep") for m, v in info.get("methods", {}).items()}
    lines = ["| method | seconds | fraction of the sweep | top 5 layers (best first) |", "| --- | --- | --- | --- |"]
    for i, (m, r) in enumerate(results.items()):
        f = frac.get(m)
        name = f"{m} (top:K default)" if i == 0 else m
        lines.append(f"| {name} | {r.seconds:.1f} | {'-' if f is None else f'{100 * f:.2f}%'} | "
                     f"{', '.join(map(str, r.ranking[:5]))} |")
    if est:
        lines.append(f"\nsweep replaced (one seed, every block), estimated {est['seconds'] / 3600:.2f} h: {est['how']}")
    return "\n".join(lines)


def probe_markdown(model: str, num_layers: int, domain: str, env: str | None, results: dict[str, MethodResult],
                   info: dict) -> str:
    """``probe.md``: the settings, the cost table and every block's score under every method."""
    s = info.get("settings", {})
    md = [f"# Layer probe: {model} on {env or domain}", "",
          f"- {num_layers} blocks; domain {domain}; algorithm {info.get('algo', '?')}, seed {info.get('seed', '?')}, "
          f"preset {info.get('preset') or 'none'}; suite {info.get('suite', '?')}",
          f"- {s.get('batches', '?')} batch(es) of {s.get('num_tasks', '?')} x {s.get('num_generations', '?')} "
          f"rollouts; look-ahead panel {s.get('panel_batches', '?')} batch(es); skip panel {s.get('panel_items', '?')} "
          f"suite items; Fisher on {s.get('fisher_samples', '?')} responses; lr {s.get('lr', '?')} x "
          f"{s.get('single_layer_lr_scale', '?')}", "",
          "Higher scores rank first. `--layers top:K@DIR` without `:METHOD` uses the first method listed: the "
          "recommended one of those computed (the order of onelayer.benchmarks.probe.METHODS).", "",
          probe_table(results, info), "",
          "| layer | " + " | ".join(results) + " |", "| --- | " + " | ".join("---" for _ in results) + " |"]
    for layer in range(num_layers):
        md.append(f"| {layer} | " + " | ".join(f"{r.scores[layer]:.4g}" for r in results.values()) + " |")
    md += ["", "Every number and setting: `probe.json`; the ranking `--layers top:K@DIR[:METHOD]` reads: "
           "`ranking.json`."]
    return "\n".join(md)


def _plot(path: Path, results: dict[str, MethodResult], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 1.8 * len(results) + 0.6), squeeze=False, sharex=True)
    for ax, (m, r) in zip(axes[:, 0], results.items()):
        layers = sorted(r.scores)
        ax.bar(layers, [r.scores[i] for i in layers], color="tab:blue")
        for i in r.ranking[:3]:
            ax.bar([i], [r.scores[i]], color="tab:orange")
        ax.set_ylabel(m, fontsize=8)
        ax.axhline(0, color="gray", lw=0.6)
    axes[-1, 0].set_xlabel("layer (orange: top 3)")
    fig.suptitle(f"Layer probe: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
