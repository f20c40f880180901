"""Layer sweeps: for each domain, algorithm and seed, the base model, full-parameter RL
and single-layer RL of every listed layer, with the same data, budget and evaluation.

A sweep directory holds::

    sweep.json            the spec (what the last invocation asked for) and its identity settings
    results.jsonl         one JobResult per finished job (see sweep_results.py)
    jobs/<job id>/        each training job's run directory (config, metrics, trained layer; checkpoints
                          while it runs, removed once its result is recorded unless keep_checkpoints)
                          plus suites.json (every evaluated suite, item by item)
    report/               written by `onelayer report` (and at the end of a sweep)

Rerunning a sweep on the same directory skips every finished job and resumes an
interrupted one from its last checkpoint (resume is exact), so killing a sweep
costs at most the steps since that job's last checkpoint. Adding layers, seeds,
domains or algorithms later reuses what exists; changing the settings that make
results comparable (model, steps, lr, data, evaluation) is refused.

Learning rates follow the paper's rule: one lr (the full-parameter one) for
every job; ``single_layer_lr_scale`` multiplies it for single-layer jobs and is
recorded in every result. It may list several scales: each runs every
single-layer target (base and full are shared), rerunning a sweep with another
scale adds that scale's jobs, and the report compares the layer rankings of the
scales (Spearman, Kendall). Job ids of scales other than 1 end in ``-xSCALE``.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from onelayer.benchmarks.suites import default_suite, get_suite, run_suites
from onelayer.benchmarks.sweep_results import (
    JobResult,
    append_result,
    done_job_ids,
    load_results,
    results_path,
    scale_suffix,
    write_ranking,
)
from onelayer.envs.alfworld_gen import EASY_HIDDEN_COMMANDS
from onelayer.envs.domain import domain_spec
from onelayer.errors import UserError
from onelayer.io import atomic_write_json

SPEC_FILE = "sweep.json"
EXECUTORS = ("local", "ray")


@dataclass
class SweepSpec:
    """What a sweep runs. Every field has a default that works on the default model."""

    model: str = "smollm2-135m"
    domains: list = field(default_factory=lambda: ["math"])
    """Domain names (math, code, agentic) or registered env ids, a plugin's included: each is trained on its
    env's train split with its DomainSpec's train options and scored on its default suite."""
    algos: list = field(default_factory=lambda: ["gigpo"])
    layers: str = "all"
    """Single-layer targets: ``all`` (every block), a list/range such as ``0,6,12,17,23,29``, ``0-29``, ``15.mlp``,
    ``top:K@DIR[:METHOD]`` / ``bottom:K@DIR[:METHOD]`` (a probe's or sweep's ranking, resolved per domain),
    or ``none`` (only the inserted blocks: ``--only-inserted``)."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    steps: int = 10
    lr: float | None = None
    """The full-parameter lr, used for every job (default: TrainConfig's)."""
    single_layer_lr_scale: float | list = 1.0
    """Multiplier of ``lr`` for single-layer jobs (1.0 = the paper's rule), or a list of them (every single-layer
    target runs at each; the report compares the rankings); recorded in the results."""
    baseline: bool = True
    full: bool = True
    suites: dict = field(default_factory=dict)
    """Suites per domain (``{"math": ["math-l1"]}``); the first of a domain gives its in-domain score."""
    extra_suites: list = field(default_factory=list)
    """Suites evaluated on every job on top of the domains' own (transfer checks)."""
    transfer: bool = True
    """Evaluate every job on every swept domain's in-domain suite (contribution on the other domains, C_all)."""
    eval_items: int | None = None
    """Override every suite's item count (smaller = faster, noisier)."""
    transfer_items: dict = field(default_factory=dict)
    """Items of a domain's in-domain suite when it scores another domain's jobs (transfer), by domain
    (``{"agentic": 10}``): the first N of its eval items. The domain's own jobs keep the suite's full count. Every
    job of one trained domain (base, full, layers) is scored on the same items, so its transfer contributions stay
    paired; a smaller count is cheaper and noisier. Unset: the suite's own count (or ``eval_items``)."""
    train: dict = field(default_factory=dict)
    """TrainConfig options for every job (``{"num_tasks": 8}``); ``{"math": {...}}`` applies to one domain."""
    insert_layer: str | None = None
    insert_at: list = field(default_factory=list)
    executor: str = "local"
    keep_checkpoints: bool = False
    """Keep each finished job's checkpoints/ (its weights again and the optimizer state, there to resume it
    mid-training). Off: removed once the job's result is recorded; trained.safetensors stays (export, report)."""
    cpus_per_job: int = 1
    gpus_per_job: float = 0.0
    preset: str | None = None

    # Settings that must match for results to be comparable (resume / extension check).
    # (The single-layer lr scale is not one: each scale's jobs are apart, with their own ids.)
    IDENTITY = ("model", "steps", "lr", "suites", "extra_suites", "transfer", "eval_items", "transfer_items",
                "train", "insert_layer")

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in self.IDENTITY}

    @classmethod
    def from_dict(cls, d: dict) -> SweepSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown sweep option(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**d)

    def lr_scales(self) -> list[float]:
        """The single-layer lr scales, in the order given."""
        raw = self.single_layer_lr_scale
        scales = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
                raise UserError(f"--single-layer-lr-scale takes positive numbers (1 or 1,4), got {raw!r}")
        if not scales:
            raise UserError("--single-layer-lr-scale needs at least one scale (1 = the paper's rule)")
        return list(dict.fromkeys(float(s) for s in scales))

    # ------------------------------------------------------------ resolution
    def domain_suites(self, domain: str) -> list[str]:
        """The domain's suites as given (by its name or env id), else its default suite."""
        spec = domain_spec(domain)
        names = self.suites.get(domain) or self.suites.get(spec.name) or self.suites.get(spec.env_id)
        return list(names) if names else [default_suite(domain).name]

    def eval_suites(self, domain: str) -> list[str]:
        """Suites evaluated on a job of ``domain``: its own first, then (transfer) each other domain's in-domain
        suite (its first), then extras. A domain's further suites (HumanEval next to the procedural code set)
        score that domain's jobs only."""
        names = list(self.domain_suites(domain))
        if self.transfer:
            for other in self.domains:
                first = self.domain_suites(other)[0]
                if first not in names:
                    names.append(first)
        names += [n for n in self.extra_suites if n not in names]
        return names

    def transfer_suite_items(self, domain: str) -> dict[str, int]:
        """The item count of each transfer suite a job of ``domain`` is scored on (``transfer_items``), by suite."""
        if not self.transfer:
            return {}
        own = set(self.domain_suites(domain))
        out = {}
        for other in self.domains:
            first = self.domain_suites(other)[0]
            if first in own:
                continue
            spec = domain_spec(other)
            n = next((self.transfer_items[k] for k in (other, spec.name, spec.env_id) if k in self.transfer_items),
                     None)
            if n is not None:
                out[first] = int(n)
        return out

    def _own_train(self, domain: str) -> dict:
        """The ``train`` options given for ``domain`` alone (by its name or env id)."""
        spec = domain_spec(domain)
        return self.train.get(domain) or self.train.get(spec.name) or self.train.get(spec.env_id) or {}

    def domain_lr(self, domain: str) -> float:
        """The full-parameter lr of ``domain``'s jobs: an ``lr`` in that domain's own ``train`` options (a per-domain
        tuned lr, as cpu-three-domains records), else ``lr``, else TrainConfig's. Every job of the domain uses it
        (times the single-layer scale): the paper's same-lr rule, per domain."""
        from onelayer.training.config import TrainConfig

        own = self._own_train(domain)
        if "lr" in own:
            return float(own["lr"])
        return self.lr if self.lr is not None else TrainConfig.lr

    def domain_steps(self, domain: str) -> int:
        """Training steps of ``domain``'s jobs: a ``steps`` in that domain's own ``train`` options, else ``steps``."""
        return int(self._own_train(domain).get("steps", self.steps))

    def train_options(self, domain: str) -> dict:
        """TrainConfig options of a domain's jobs: its env and DomainSpec defaults, then ``train``'s."""
        spec = domain_spec(domain)
        common = {k: v for k, v in self.train.items() if not isinstance(v, dict)}
        return {**spec.train_options(), **common, **self._own_train(domain)}

    def targets(self, num_layers: int, domain: str | None = None) -> list[str]:
        """Single-layer targets as layer specs (``15``, ``15.mlp``); ``none``: no single-layer jobs (only inserted
        blocks, ``--only-inserted``).

        An entry ``top:K@DIR[:METHOD]`` / ``bottom:K@DIR[:METHOD]`` gives the K layers that DIR's ranking (a probe's
        or a sweep's ranking.json) ranks best / worst for ``domain`` (needed then), so a sweep can measure the
        layers a probe picked; they are planned as their indices (``layer-12``), the ids those layers' jobs have
        anyway. The ranking is read each time the sweep is planned.
        """
        from onelayer.training.layers import is_ranked_spec, resolve_ranked_spec

        if self.layers.strip() == "none":
            return []
        if self.layers.strip() == "all":
            return [str(i) for i in range(num_layers)]
        out = []
        for part in (p.strip() for p in self.layers.split(",")):
            if not part:
                continue
            if is_ranked_spec(part):
                if domain is None:
                    raise UserError(f"--layers entry {part!r} ranks one domain's layers: plan it per domain")
                ranked = resolve_ranked_spec(part, domain_name(domain))
                beyond = [i for i in ranked.layers if i >= num_layers]
                if beyond:
                    raise UserError(f"--layers {part!r} picks layers {beyond} of {ranked.sweep_dir}'s ranking, but the "
                                    f"model has {num_layers} layers (0..{num_layers - 1}): it ranked another model")
                out += [str(i) for i in ranked.layers]
                continue
            if "-" in part and "." not in part and not part.startswith("-"):
                a, b = part.split("-", 1)
                try:
                    out += [str(i) for i in range(int(a), int(b) + 1)]
                except ValueError:
                    raise UserError(f"bad --layers entry {part!r}: use indices, ranges a-b, i.mlp / i.attn or "
                                    "top:K@PROBE_DIR[:METHOD]") from None
                continue
            head = part.split(".", 1)[0]
            try:
                idx = int(head)
            except ValueError:
                raise UserError(f"bad --layers entry {part!r}: use indices, ranges a-b, i.mlp / i.attn or "
                                "top:K@PROBE_DIR[:METHOD]") from None
            if not -num_layers <= idx < num_layers:
                raise UserError(f"layer {idx} is out of range: the model has {num_layers} layers (0..{num_layers - 1})")
            out.append(str(idx % num_layers) + (part[len(head):] if "." in part else ""))
        return list(dict.fromkeys(out))


def domain_name(domain: str) -> str:
    """The label of a domain name or env id (``onelayer/Math-v0`` -> ``math``; a plugin env: its id)."""
    return domain_spec(domain).name


@dataclass(frozen=True)
class Job:
    """One unit of a sweep."""

    domain: str
    algo: str
    seed: int
    method: str  # base | full | layer
    target: str  # none | all | a layer spec | insert@N
    layer: int | None = None
    options: tuple = ()
    """Extra TrainConfig options as (name, value) pairs (comparison methods: layer_lr, lora_matched_to)."""
    lr_scale: float = 1.0
    """Single-layer jobs: the multiplier of the sweep lr."""

    @property
    def id(self) -> str:
        if self.method == "base":
            return f"{_safe(self.domain)}/base"
        name = (f"layer-{self.target.replace('@', '-')}{scale_suffix(self.lr_scale)}" if self.method == "layer"
                else self.method)
        return f"{_safe(self.domain)}/{self.algo}/s{self.seed}/{name}"


def _safe(text: str) -> str:
    return text.replace("/", "_")


def plan_jobs(spec: SweepSpec, num_layers: int) -> list[Job]:
    """Every job of the spec: per domain the base model once, then per seed and algo full and each target at
    each single-layer lr scale (a ``top:K@DIR`` target: the layers DIR ranks for that domain)."""
    jobs: list[Job] = []
    scales = spec.lr_scales()
    for domain in spec.domains:
        targets = spec.targets(num_layers, domain)
        if spec.baseline:
            jobs.append(Job(domain, "none", -1, "base", "none"))
        for seed in spec.seeds:
            for algo in spec.algos:
                if spec.full:
                    jobs.append(Job(domain, algo, seed, "full", "all"))
                for scale in scales:
                    for t in targets:
                        jobs.append(Job(domain, algo, seed, "layer", t, int(t.split(".")[0]), lr_scale=scale))
                    for at in spec.insert_at:
                        jobs.append(Job(domain, algo, seed, "layer", f"insert@{at}", int(at), lr_scale=scale))
    return jobs


def job_train_config(spec: SweepSpec, job: Job, run_dir: Path):
    """The TrainConfig of one training job (same data, budget and lr rule for every job of a seed)."""
    from onelayer.training.config import TrainConfig

    opts = spec.train_options(job.domain)
    lr, steps = spec.domain_lr(job.domain), spec.domain_steps(job.domain)
    opts.update(model=spec.model, algo=job.algo, seed=job.seed, steps=steps, lr=lr, out=str(run_dir),
                eval_size=0, save_every=opts.get("save_every", max(1, steps // 4)), save_total_limit=1)
    if job.method == "full":  # full-parameter RL: every weight, embeddings, final norm and LM head included
        opts["also_train"] = ["embeddings", "final_norm", "lm_head"]
    if job.method == "layer":  # the trainer applies it to single-block selections and records it
        opts["single_layer_lr_scale"] = job.lr_scale
    if job.target.startswith("insert@"):
        opts.update(layers=str(job.layer), insert_layer=spec.insert_layer, insert_at=job.layer)
    else:
        opts["layers"] = job.target
    opts.update(dict(job.options))
    try:
        cfg = TrainConfig.from_dict(opts, where="sweep train options")
    except TypeError as e:
        raise UserError(f"bad sweep train option: {e}") from None
    cfg.validate()
    return cfg


# -------------------------------------------------------------------- models
class ModelCache:
    """The sweep's base model, loaded once; every job starts from a fresh copy of its weights."""

    def __init__(self, model_id: str, device: str = "auto", dtype: str = "auto"):
        from onelayer.agents.models import load_model

        self.model, self.tokenizer, _ = load_model(model_id, device, dtype)
        self.base_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def fresh(self, insert: tuple[str, int] | None = None):
        """The base model (weights restored, nothing trainable); a deep copy with a new block when ``insert``."""
        from onelayer.training.lora import strip_lora

        strip_lora(self.model)  # a LoRA job injected adapters into the shared model: take them out first
        with torch.no_grad():
            self.model.load_state_dict(self.base_state)
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.model.eval()
        if insert is None:
            return self.model
        from onelayer.training.insert import insert_block

        m = copy.deepcopy(self.model)
        insert_block(m, *insert)
        return m

    def num_layers(self) -> int:
        from onelayer.training.layers import find_decoder_blocks

        return len(find_decoder_blocks(self.model)[1])

    def block_change_norms(self, model) -> dict[str, float]:
        """L2 norm of each block's weight change from the base model (over all its tensors)."""
        from onelayer.training.layers import find_decoder_blocks

        path, blocks = find_decoder_blocks(model)
        out = {}
        for i, block in enumerate(blocks):
            sq = 0.0
            for name, p in block.named_parameters():
                base = self.base_state.get(f"{path}.{i}.{name}")
                if base is None or base.shape != p.shape:
                    continue
                sq += float((p.detach().float() - base.float()).pow(2).sum())
            out[str(i)] = sq ** 0.5
        return out


# ---------------------------------------------------------------------- jobs
def _reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: reset the peak-RSS counter (VmHWM)
            f.write("5")
    except OSError:
        pass


def _peak_memory_mb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    from onelayer.benchmarks.machine import vmhwm_bytes

    hwm = vmhwm_bytes()
    return None if hwm is None else hwm / 2**20


def _weights_sha(path: Path) -> str | None:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    h = hashlib.sha256()
    tensors = load_file(str(path))
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].float().numpy().tobytes())
    return h.hexdigest()


def run_job(spec: SweepSpec, job: Job, sweep_dir: Path, cache: ModelCache, progress: bool = False) -> JobResult:
    """Run one job in this process (train when needed, then evaluate every suite) and return its result."""
    from onelayer.agents.engine import HFEngine
    from onelayer.training.trainer import Trainer

    run_dir = sweep_dir / "jobs" / job.id
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _reset_peak_memory()
    insert = (spec.insert_layer, job.layer) if job.target.startswith("insert@") else None
    model, tok = cache.fresh(insert), cache.tokenizer
    lr = None
    extra: dict = {}
    opts = spec.train_options(job.domain)
    if job.method == "base":
        engine = HFEngine(model, tok, max_batch_size=opts.get("rollout_batch_size", 64))
    else:
        cfg = job_train_config(spec, job, run_dir)
        lr = cfg.lr * (cfg.single_layer_lr_scale if job.method == "layer" else 1.0)
        resume = (run_dir / "config.json").is_file()
        trainer = Trainer(cfg, resume=resume, model=model, tokenizer=tok)
        result = trainer.train(progress=progress)
        for e in trainer.envs:
            e.close()
        engine = trainer.engine
        rewards = [m["reward"] for m in result.metrics if "reward" in m]
        extra.update(final_reward=rewards[-1] if rewards else None, mean_reward=sum(rewards) / max(len(rewards), 1),
                     trained_sha256=_weights_sha(run_dir / "trained.safetensors"),
                     train_time_s=sum(m.get("time/sampling_s", 0) + m.get("time/training_s", 0) for m in result.metrics),
                     selection=trainer.selection.describe())
    suites = [get_suite(n) for n in spec.eval_suites(job.domain)]
    if spec.eval_items:
        suites = [s.with_overrides(num_items=spec.eval_items) for s in suites]
    fewer = spec.transfer_suite_items(job.domain)
    suites = [s.with_overrides(num_items=min(fewer[s.name], s.num_items or fewer[s.name])) if s.name in fewer else s
              for s in suites]
    results, missing = {}, {}
    for suite in suites:
        # A suite is scored with its own domain's prompt and action options, whichever domain trained the job: a
        # math job's transfer to ALFWorld is played in the format the agentic jobs are (not in math's text format).
        o = spec.train_options(suite.env)
        r, m = run_suites([suite], engine, tok, prompt_template=o.get("prompt_template"),
                          system_prompt=o.get("system_prompt"), history_length=o.get("history_length", 2),
                          batch_size=o.get("rollout_batch_size", 64), action_format=o.get("action_format", "text"))
        results.update(r)
        missing.update(m)
    own = suites[0].name
    if own not in results:
        raise UserError(f"the in-domain suite of {job.domain!r} cannot run: {missing[own]}")
    atomic_write_json(run_dir / "suites.json", {"suites": results, "missing": missing})
    scores = {name: float(r[r["metric"]]) for name, r in results.items()}
    change = cache.block_change_norms(model) if job.method != "base" and insert is None else {}
    if missing:
        extra["missing_suites"] = missing
    return JobResult(job=job.id, domain=job.domain, seed=job.seed, method=job.method, target=job.target,
                     layer=job.layer, algo=job.algo, score=scores[own], scores=scores, lr=lr,
                     lr_scale=job.lr_scale if job.method == "layer" else 1.0, run_dir=str(run_dir),
                     wall_s=time.time() - t0, peak_rss_mb=_peak_memory_mb(), weight_change=change, extra=extra)


def _run_job_in_worker(spec_dict: dict, job_dict: dict, sweep_dir: str, threads: int) -> dict:
    """Ray task body: load the model in this worker and run one job."""
    if threads > 0:
        torch.set_num_threads(threads)
    spec = SweepSpec.from_dict(spec_dict)
    cache = ModelCache(spec.model)
    job_dict["options"] = tuple(tuple(o) for o in job_dict.get("options", ()))
    return dataclasses.asdict(run_job(spec, Job(**job_dict), Path(sweep_dir), cache))


# --------------------------------------------------------------------- sweep
def _check_identity(sweep_dir: Path, spec: SweepSpec) -> None:
    p = sweep_dir / SPEC_FILE
    if not p.is_file():
        return
    stored = json.loads(p.read_text())
    # A setting added after the sweep was started is absent from its sweep.json: it ran at that setting's default.
    defaults = json.loads(json.dumps(SweepSpec().identity()))
    old = {**defaults, **stored.get("identity", {})}
    new = json.loads(json.dumps(spec.identity()))
    diff = [k for k in new if old[k] != new[k]]
    if "train" in diff and _only_unrun_domains_changed(sweep_dir, old["train"], new["train"]):
        diff.remove("train")
    if "insert_layer" in diff and old["insert_layer"] is None and not _ran_inserted(sweep_dir):
        diff.remove("insert_layer")  # adding inserted blocks to a sweep only adds jobs: the others stay comparable
    if diff:
        what = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in diff)
        raise UserError(f"{sweep_dir} holds a sweep with other settings ({what}); results would not be comparable: "
                        "use a new --out, or the same settings to resume or extend it")


EVAL_OPTIONS = ("prompt_template", "system_prompt", "history_length", "action_format")
"""Train options that also decide how a domain's suites are scored (on every job: transfer)."""


def _ran_inserted(sweep_dir: Path) -> bool:
    return results_path(sweep_dir).is_file() and any(r.target.startswith("insert@") for r in load_results(sweep_dir))


def _only_unrun_domains_changed(sweep_dir: Path, old: dict, new: dict) -> bool:
    """Whether the ``train`` options differ only in the per-domain entries of domains that have no job results
    yet, and not in how any suite is scored: a study can add a domain, or settle a domain's lr, before its first
    job runs (cpu-three-domains runs its domains one after another)."""
    if {k: v for k, v in old.items() if not isinstance(v, dict)} != {k: v for k, v in new.items()
                                                                      if not isinstance(v, dict)}:
        return False
    ran = {r.domain for r in load_results(sweep_dir)} if results_path(sweep_dir).is_file() else set()
    ran |= {_domain_name(d) for d in ran}
    for key in set(old) | set(new):
        a, b = old.get(key, {}), new.get(key, {})
        if a == b:
            continue
        if not isinstance(a, dict) or not isinstance(b, dict):
            return False
        if key in ran or _domain_name(key) in ran:
            return False
        if any(a.get(k) != b.get(k) for k in EVAL_OPTIONS) and ran:
            return False
    return True


def _domain_name(key: str) -> str:
    try:
        return domain_spec(key).name
    except UserError:
        return key


def _write_spec(sweep_dir: Path, spec: SweepSpec, num_layers: int) -> None:
    p = sweep_dir / SPEC_FILE
    prev = json.loads(p.read_text()) if p.is_file() else {}
    seen = prev.get("all", {})
    union = {
        "domains": list(dict.fromkeys([*seen.get("domains", []), *spec.domains])),
        "algos": list(dict.fromkeys([*seen.get("algos", []), *spec.algos])),
        "seeds": sorted(set(seen.get("seeds", [])) | set(spec.seeds)),
        "lr_scales": sorted(set(seen.get("lr_scales", [1.0])) | set(spec.lr_scales())),
    }
    import platform

    import transformers

    from onelayer.benchmarks.machine import describe_machine

    atomic_write_json(p, {
        "spec": dataclasses.asdict(spec), "identity": spec.identity(), "all": union, "num_layers": num_layers,
        "train_options": {d: spec.train_options(d) for d in spec.domains},
        "eval_suites": {d: spec.eval_suites(d) for d in spec.domains},
        "transfer_items": {d: spec.transfer_suite_items(d) for d in spec.domains},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "onelayer": _onelayer_version()},
        "machine": describe_machine(),
    })


def _onelayer_version() -> str:
    try:
        from importlib.metadata import version

        return version("onelayer")
    except Exception:
        return "unknown"


def validate_spec(spec: SweepSpec) -> None:
    """Everything checkable before loading the model."""
    from onelayer.training.advantages import ESTIMATORS as ALGORITHMS
    from onelayer.training.layers import RANKING_FILE, is_ranked_spec, resolve_ranked_spec

    if not spec.domains:
        raise UserError("--domains needs at least one domain: math, code, agentic or a registered env id")
    for d in spec.domains:
        domain_name(d)
    for a in spec.algos:
        if a not in ALGORITHMS:
            raise UserError(f"unknown algorithm {a!r}: choose from {', '.join(ALGORITHMS)}")
    if not spec.seeds or any(not isinstance(s, int) or s < 0 for s in spec.seeds):
        raise UserError(f"--seeds must be a count (3 = seeds 0,1,2) or a list of non-negative seeds, got {spec.seeds}")
    if spec.steps < 1:
        raise UserError(f"--steps must be >= 1, got {spec.steps}")
    spec.lr_scales()
    if spec.executor not in EXECUTORS:
        raise UserError(f"unknown executor {spec.executor!r}: use local or ray")
    if spec.eval_items is not None and spec.eval_items < 1:
        raise UserError(f"--eval-items must be >= 1, got {spec.eval_items}")
    if not isinstance(spec.transfer_items, dict):
        raise UserError(f"--transfer-items takes DOMAIN=N pairs (agentic=10,code=64), got {spec.transfer_items!r}")
    for k, n in spec.transfer_items.items():
        if k not in spec.domains and not any(domain_name(d) == k or domain_spec(d).env_id == k for d in spec.domains):
            raise UserError(f"--transfer-items names {k!r}, which is not a swept domain ({', '.join(spec.domains)})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"--transfer-items {k}={n!r}: the item count must be an integer >= 1")
    if bool(spec.insert_layer) != bool(spec.insert_at):
        raise UserError("--insert-layer and --insert-at go together (e.g. --insert-layer "
                        "onelayer.training.insert:identity_copy --insert-at 15)")
    if spec.layers.strip() == "none" and not spec.insert_at:
        raise UserError("--only-inserted (layers none) needs --insert-layer and --insert-at: there is nothing to train")
    for part in (p.strip() for p in spec.layers.split(",")):  # top:K@DIR[:METHOD]: it ranks each swept domain
        if not is_ranked_spec(part):
            continue
        for d in spec.domains:  # a missing DIR, another domain, an unknown METHOD or K too large: one line
            ranked = resolve_ranked_spec(part, domain_name(d))
        model = json.loads((Path(ranked.sweep_dir) / RANKING_FILE).read_text()).get("model")
        if model is not None and model != spec.model:
            raise UserError(f"--layers {part!r}: {ranked.sweep_dir} ranked the layers of {model}, this sweep trains "
                            f"{spec.model}: a ranking only holds for its model")
    for d in spec.domains:
        for n in spec.eval_suites(d):
            get_suite(n)
    for d in spec.domains:
        for n in spec.domain_suites(d):
            if get_suite(n).env != domain_spec(d).env_id:
                raise UserError(f"suite {n} scores {get_suite(n).env}, not {domain_spec(d).env_id} ({d}): list it "
                                "under its own domain or in --extra-suites")
    if spec.insert_layer:
        from onelayer.training.insert import load_factory

        load_factory(spec.insert_layer)


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, progress: bool = True, log=print,
              jobs: list[Job] | None = None) -> list[JobResult]:
    """Run (or resume, or extend) a sweep; returns every result in the directory.

    ``jobs`` replaces the spec's own job plan (``onelayer compare`` runs its methods this way).
    """
    validate_spec(spec)
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _check_identity(sweep_dir, spec)
    for j in jobs or [Job(d, a, spec.seeds[0], "full", "all") for d in spec.domains for a in spec.algos]:
        if j.method != "base":  # bad train options fail before the model loads
            job_train_config(spec, j, sweep_dir / "check")
    cache = ModelCache(spec.model) if spec.executor == "local" else None
    num_layers = cache.num_layers() if cache is not None else _num_layers_of(spec.model)
    jobs = jobs if jobs is not None else plan_jobs(spec, num_layers)
    _write_spec(sweep_dir, spec, num_layers)
    done = done_job_ids(load_results(sweep_dir)) if results_path(sweep_dir).is_file() else set()
    todo = [j for j in jobs if j.id not in done]
    log(f"sweep {sweep_dir}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done, {len(todo)} to run "
        f"({spec.executor} executor)")
    for line in cost_lines(spec, todo, load_results(sweep_dir) if results_path(sweep_dir).is_file() else []):
        log(line)
    if spec.executor == "local":
        for i, job in enumerate(todo, 1):
            t = time.time()
            r = run_job(spec, job, sweep_dir, cache, progress=progress)
            append_result(sweep_dir, r)
            prune_finished_job(spec, r)
            gc.collect()  # the finished job's trainer, optimizer state and envs
            log(f"[{i}/{len(todo)}] {job.id}: {_fmt_scores(r.scores)} ({time.time() - t:.0f} s)")
            write_ranking(sweep_dir)  # top:K@SWEEP_DIR reads it; current after every job
    else:
        _run_ray(spec, todo, sweep_dir, log)
    write_ranking(sweep_dir)
    results = load_results(sweep_dir)
    for d in spec.domains:
        mine = [r for r in results if r.domain == d]
        if mine:
            log(f"measured: {d}: {len(mine)} jobs, {sum(r.wall_s for r in mine) / 3600:.2f} h of job wall-clock")
    return results


def prune_finished_job(spec: SweepSpec, result: JobResult) -> None:
    """After a job's result is recorded: drop its checkpoints/ unless ``spec.keep_checkpoints``. A finished job is
    never resumed (the sweep skips it); its final trained.safetensors, config and metrics stay, which is what
    ``onelayer export`` and the report read. (cpu-math-demo's full job: 1.6 GB of its 2.1 GB.)"""
    run_dir = Path(result.run_dir)
    if spec.keep_checkpoints or not (run_dir / "trained.safetensors").is_file():
        return
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


PRESET_JOB_SECONDS: dict[str, dict[str, dict[str, float]]] = {
    # measured: results/sweeps/cpu-math-demo/results.jsonl (2026-12-04, idle; the layer figure is the mean of three)
    "cpu-math-demo": {"math": {"base": 49, "full": 238, "layer": 140}},
    # math: measured (results/sweeps/cpu-three-domains, seed 0, 2026-12-04; the layer figure is the mean of six).
    # code and agentic: estimates from the parts until the sweep has timed its own jobs: suite times on the base
    # model (math-l1 ~40 s, code-gen-l1 ~0.7 s an item, an ALFWorld score-format episode ~2.4 s) and the step times
    # of results/train_step*.json (code 64 s full / 48 s layer 15; ALFWorld 122 / 75 s, 20 steps). Transfer
    # (transfer_items) scores 64 code items and 10 x 4 ALFWorld episodes on the other domains' jobs.
    # cpu-agentic (score format, 20 steps): estimates from the ALFWorld step times above and its two suites on the
    # base model (120 sampled + 30 greedy episodes, ~2.4 s each); the earlier choice-format preset measured 89 min.
    "cpu-agentic": {"agentic": {"base": 370, "full": 2800, "layer": 1900}},
    "cpu-three-domains": {"math": {"base": 152, "full": 274, "layer": 215},
                          "code": {"base": 330, "full": 970, "layer": 810},
                          "agentic": {"base": 380, "full": 2800, "layer": 1900}},
}
"""Seconds per job (base evaluation, full-parameter job, single-layer job) on the idle 2-core development machine,
as the preset's estimate before a sweep has timed its own jobs (docs/sweeps.md gives the measured totals)."""


def cost_lines(spec: SweepSpec, todo: list[Job], done: list[JobResult]) -> list[str]:
    """Per domain, the estimated wall-clock of the jobs still to run: each job kind at the mean time of the sweep's
    own finished jobs of that domain and kind, else at the preset's per-job estimate; unknown otherwise."""
    out = []
    preset = PRESET_JOB_SECONDS.get(spec.preset or "", {})
    for d in dict.fromkeys(j.domain for j in todo):
        jobs = [j for j in todo if j.domain == d]
        total, parts, sources = 0.0, [], set()
        for kind in ("base", "full", "layer"):
            n = sum(j.method == kind for j in jobs)
            if not n:
                continue
            seen = [r.wall_s for r in done if r.domain == d and r.method == kind]
            if seen:
                each, src = sum(seen) / len(seen), "this sweep's jobs"
            elif kind in preset.get(d, {}):
                each, src = preset[d][kind], f"the {spec.preset} preset's estimate"
            else:
                parts.append(f"{n} {kind} (time unknown)")
                total = float("nan")
                continue
            total += n * each
            parts.append(f"{n} {kind} x {each / 60:.0f} min")
            sources.add(src)
        est = "unknown until a job of each kind has run" if total != total else f"~{total / 3600:.1f} h"
        out.append(f"estimated: {d}: {est} ({', '.join(parts)}; from {' and '.join(sorted(sources)) or 'nothing'})")
    return out


def _fmt_scores(scores: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())


def _num_layers_of(model_id: str) -> int:
    from onelayer.agents.models import load_model
    from onelayer.training.layers import find_decoder_blocks

    model, _, _ = load_model(model_id, "cpu", "auto")
    return len(find_decoder_blocks(model)[1])


def _run_ray(spec: SweepSpec, todo: list[Job], sweep_dir: Path, log) -> None:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'onelayer[ray]' (or use --executor local)") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=spec.cpus_per_job, num_gpus=spec.gpus_per_job)(_run_job_in_worker)
    spec_dict = dataclasses.asdict(spec)
    pending = {remote.remote(spec_dict, dataclasses.asdict(j), str(sweep_dir), spec.cpus_per_job): j for j in todo}
    n = 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            r = JobResult.from_dict(ray.get(ready[0]))
            append_result(sweep_dir, r)
            prune_finished_job(spec, r)
            n += 1
            log(f"[{n}/{len(todo)}] {job.id}: {_fmt_scores(r.scores)} ({r.wall_s:.0f} s)")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -------------------------------------------------------------------- presets
# Costs are measured on the 2-core CPU this project is developed on (see results/RESULTS.md)
# where a preset says "measured"; the GPU presets reproduce the paper's setups and are unmeasured here.
PRESETS: dict[str, dict] = {
    # The README's main job: base, full and 3 layers, 1 seed (~20 min on 2 cores). cpu-math extends the same
    # directory (same identity settings) to 6 layers x 3 seeds, reusing the demo's jobs.
    "cpu-math-demo": dict(
        domains=["math"], algos=["grpo"], layers="0,15,29", seeds=[0], steps=10, eval_items=256,
        train={"num_tasks": 8, "num_generations": 8}),
    "cpu-math": dict(
        domains=["math"], algos=["grpo"], layers="0,6,12,15,22,29", seeds=[0, 1, 2], steps=10, eval_items=256,
        train={"num_tasks": 8, "num_generations": 8}),
    "cpu-code": dict(
        domains=["code"], algos=["gigpo"], layers="0,15,29", seeds=[0], steps=10,
        train={"num_tasks": 4, "num_generations": 4, "max_new_tokens": 192}),
    # cpu-agentic: the setting where one middle layer was shown to learn ALFWorld (benchmarks/alfworld_learning.py
    # --action-format score: easy generated games, the score action format, lr 1e-4, 20 steps of 3 games x 4
    # episodes; results/RESULTS.md). In verl-agent's text format the 135M model never names an admissible action;
    # in the numbered (choice) format, this preset's setting until 2026-12-04, 10 steps moved the sampled success
    # by 5 episodes of 120 (results/sweeps/cpu-agentic). Scored on sampled passes first: the policy RL trains.
    # The paper's question on all three domains: the same six layers, 3 seeds, each domain's full-parameter lr
    # tuned once with tune-lr (results/tune/), every job scored on every domain's in-domain suite (transfer; the
    # other domains' jobs score code and ALFWorld on fewer items, transfer_items: the full counts made a math job's
    # transfer evaluations three quarters of its time).
    # Tuned so far (seed 0, this budget): math 1e-5 (results/tune/cpu-math-demo), code 1e-5
    # (results/tune/cpu-three-domains-code); agentic's 3e-5 is not yet tuned (it may change until its first job).
    # Runs its domains one after another; resumable; docs/sweeps.md has its measured cost.
    "cpu-three-domains": dict(
        domains=["math", "code", "agentic"], algos=["grpo"], layers="0,6,12,15,22,29", seeds=[0, 1, 2], steps=10,
        transfer=True, transfer_items={"agentic": 10, "code": 64},
        # a new block benchmarked where the paper trains: identity-initialised at the middle, trained alone
        insert_layer="onelayer.training.insert:identity_copy", insert_at=[15],
        suites={"math": ["math-l1"], "code": ["code-gen-l1", "humaneval"], "agentic": ["alfworld-gen-easy-sampled"]},
        train={"math": {"lr": 1e-5, "num_tasks": 8, "num_generations": 8},
               "code": {"lr": 1e-5, "env_kwargs": {"dataset": "procedural", "level": 1}, "max_new_tokens": 160,
                        "num_tasks": 4, "num_generations": 8},
               "agentic": {"lr": 3e-5, "steps": 20,
                           "env_kwargs": {"generated_games": "easy", "hide_commands": list(EASY_HIDDEN_COMMANDS)},
                           "action_format": "score", "history_length": 0, "max_turns": 10, "max_new_tokens": 16,
                           "num_tasks": 3, "num_generations": 4, "kl_metric": False}}),
    "cpu-agentic": dict(
        domains=["agentic"], algos=["gigpo"], layers="0,15,29", seeds=[0], steps=20, lr=1e-4,
        suites={"agentic": ["alfworld-gen-easy-sampled", "alfworld-gen-easy"]},
        train={"agentic": {"env_kwargs": {"generated_games": "easy", "hide_commands": list(EASY_HIDDEN_COMMANDS)},
                           "action_format": "score", "history_length": 0, "max_turns": 10, "max_new_tokens": 16,
                           "num_tasks": 3, "num_generations": 4, "kl_metric": False}}),
    # The paper's setups (MISSION.md): every layer, full-parameter lr 5e-6 shared by all jobs.
    "gpu-qwen3-1.7b-math-grpo": dict(
        model="Qwen/Qwen3-1.7B-Base", domains=["math"], algos=["grpo"], layers="all", seeds=[0, 1, 2], steps=200,
        lr=5e-6, suites={"math": ["math500", "gsm8k"]},
        train={"math": {"env_kwargs": {"source": "gsm8k"}, "max_new_tokens": 1024, "num_tasks": 32,
                        "num_generations": 8, "micro_batch_size": 8}}, gpus_per_job=1.0, executor="ray"),
    # Dr. GRPO's setting: train on MATH's train split, score on MATH-500 (a subset of MATH's test split, which the
    # train split excludes, so no scored problem is trained on).
    "gpu-qwen2.5-math-1.5b-drgrpo": dict(
        model="Qwen/Qwen2.5-Math-1.5B", domains=["math"], algos=["drgrpo"], layers="all", seeds=[0, 1, 2],
        steps=200, lr=5e-6, suites={"math": ["math500"]},
        train={"math": {"env_kwargs": {"source": "math"}, "max_new_tokens": 1024, "num_tasks": 32,
                        "num_generations": 8, "micro_batch_size": 8}}, gpus_per_job=1.0, executor="ray"),
    "gpu-qwen2.5-1.5b-alfworld-gigpo": dict(
        model="Qwen/Qwen2.5-1.5B-Instruct", domains=["agentic"], algos=["gigpo"], layers="all", seeds=[0],
        steps=150, lr=1e-6, suites={"agentic": ["alfworld-eval-id", "alfworld-eval-ood"]},
        train={"agentic": {"max_turns": 50, "max_new_tokens": 512, "num_tasks": 16, "num_generations": 8,
                           "history_length": 2, "micro_batch_size": 8}}, gpus_per_job=1.0, executor="ray"),
}


def preset_spec(name: str) -> dict:
    """A preset's options (a UserError listing the presets for an unknown name)."""
    if name not in PRESETS:
        raise UserError(f"unknown sweep preset {name!r}: choose from {', '.join(PRESETS)}")
    return {**copy.deepcopy(PRESETS[name]), "preset": name}
