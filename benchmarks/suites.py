"""Named evaluation suites: an env, a fixed item list, a metric and sampling settings.

Two runs of a suite on the same model give the same number (greedy) or the
same distribution (sampled, seeded): items are always ``0..N-1`` of the env's
evaluation split and sampling seeds are fixed by the suite.

``pass@k`` suites draw ``num_samples`` samples per item and report the
unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``,
averaged over items. With ``num_samples`` > 1 a math or agentic suite reports
its accuracy / success rate as the mean over the samples (``by_sample`` lists
each pass); greedy agentic passes in the ``choice`` action format differ in the
order the actions are listed (each pass has its own seed), which averages out
how much one order alone moves a small model's score (``onelayer eval --suite
... --num-samples K``).

A suite whose data is not on this machine raises :class:`SuiteDataMissing`
(a UserError) naming the data and how to get it; ``run_suites`` records that
and runs the others.

Suites are registered by name with :func:`register_suite` (also ``onelayer.register_suite``),
the built-in ones below as a plugin's are; ``onelayer suites`` lists them with their source.
An env's default suite is the one its DomainSpec names, else the first suite registered for
it, else every item of its eval split (:func:`default_suite`).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import gymnasium as gym

from onelayer import plugins
from onelayer.agents.engine import RolloutEngine
from onelayer.agents.evaluation import EvalResult, evaluate_policy, make_eval_env
from onelayer.agents.prompts import PromptBuilder
from onelayer.envs import check_env_id
from onelayer.envs.alfworld_gen import EASY_HIDDEN_COMMANDS
from onelayer.envs.domain import METRICS, domain_spec, env_class
from onelayer.errors import DataMissing, UserError


class SuiteDataMissing(DataMissing):
    """The suite's data is not available here; the message says which data and how to get it."""


@dataclass(frozen=True)
class Suite:
    """One named evaluation suite (register one with :func:`register_suite`)."""

    name: str
    env: str
    env_kwargs: dict = field(default_factory=dict)
    num_items: int | None = None
    """Items 0..N-1 of the eval split; None = every item."""
    max_new_tokens: int = 20
    temperature: float = 0.0
    num_samples: int = 1
    """Samples per item (pass@k needs num_samples >= k)."""
    k: tuple[int, ...] = (1,)
    """pass@k values reported (pass@ suites); the first is the suite's primary metric."""
    max_turns: int | None = None
    seed: int = 0
    description: str = ""
    kind: str = ""
    """``accuracy``, ``success_rate`` or ``pass@1`` (METRICS); default: the env's DomainSpec metric."""
    source: str = "onelayer"
    """Who registered it: ``onelayer`` (built in) or the plugin / module that did."""

    @property
    def domain(self) -> str:
        """The domain label of the suite's env (``math``, or a plugin env's id)."""
        return domain_spec(self.env).name

    @property
    def metric(self) -> str:
        """The primary metric's key in the result."""
        kind = self.kind or domain_spec(self.env).metric
        return f"pass@{self.k[0]}" if kind.startswith("pass@") else kind

    @property
    def per_sample_mean(self) -> bool:
        """Accuracy and success rate average over samples; pass@k suites report pass@k instead."""
        return not self.metric.startswith("pass@")

    def with_overrides(self, **kw) -> Suite:
        """A copy with some settings changed (``None`` values are ignored)."""
        data = asdict(self)
        data.update({k: v for k, v in kw.items() if v is not None})
        data["k"] = tuple(data["k"])
        return Suite(**data)


SUITES: dict[str, Suite] = {}


def register_suite(name: str, *, env_id: str, num_items: int | None, metric: str, env_kwargs: dict | None = None,
                   num_samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 20,
                   max_turns: int | None = None, k: tuple[int, ...] | list[int] | None = None, seed: int = 0,
                   description: str = "") -> Suite:
    """Register the suite ``name``: items ``0..num_items-1`` (None: all) of ``env_id``'s eval split.

    ``metric`` is ``accuracy``, ``success_rate`` or ``pass@1``; ``k`` adds pass@k values (pass@1 suites,
    with ``num_samples >= max(k)``). Callable from a plugin module while ``onelayer`` is being imported.
    Registering a name again with the same definition does nothing; with another, it is an error.
    """
    if not isinstance(name, str) or not name.strip() or "," in name or "=" in name:
        raise UserError(f"suite name {name!r} must be a non-empty string without ',' or '='")
    check_env_id(env_id)
    if metric not in METRICS:
        raise UserError(f"suite {name}: metric {metric!r} is not one of {', '.join(METRICS)}")
    ks = tuple(k) if k else (1,)
    if metric != "pass@1" and ks != (1,):
        raise UserError(f"suite {name}: k={list(ks)} needs metric pass@1")
    if num_items is not None and (isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1):
        raise UserError(f"suite {name}: num_items must be a positive integer or None, got {num_items!r}")
    if num_samples < 1 or max(ks) > num_samples:
        raise UserError(f"suite {name}: num_samples={num_samples} must be >= 1 and >= max(k)={max(ks)}")
    if temperature < 0 or (num_samples > 1 and temperature == 0 and metric == "pass@1"):
        raise UserError(f"suite {name}: temperature must be >= 0 (and > 0 for several pass@k samples), "
                        f"got {temperature}")
    suite = Suite(name, env_id, dict(env_kwargs or {}), num_items, max_new_tokens, float(temperature), num_samples,
                  ks, max_turns, seed, description, metric, plugins.CURRENT or _caller_source())
    have = SUITES.get(name)
    if have is not None and have != suite:
        raise UserError(f"suite {name!r} is already registered by {have.source} with other settings: "
                        "choose another name")
    SUITES[name] = suite
    return suite


def _caller_source() -> str:
    """The module that called register_suite (through ``onelayer.register_suite`` or directly)."""
    import sys

    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") == "onelayer":
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"


CODE_GEN_ITEMS = 128
"""Items of each code-gen-lN suite: every level's eval pool holds more (tests/test_code_gen.py)."""


def _register_builtins() -> None:
    easy = {"split": "eval", "generated": "easy", "hide_commands": list(EASY_HIDDEN_COMMANDS)}
    for level in range(1, 6):
        register_suite(f"math-l{level}", env_id="onelayer/Math-v0", env_kwargs={"level": level}, num_items=256,
                       metric="accuracy", max_new_tokens=20,
                       description=f"procedural arithmetic, level {level}, 256 held-out items, greedy")
    register_suite("gsm8k", env_id="onelayer/Math-v0", env_kwargs={"source": "gsm8k"}, num_items=None,
                   metric="accuracy", max_new_tokens=512, description="GSM8K test split (1319 problems), greedy")
    register_suite("math500", env_id="onelayer/Math-v0", env_kwargs={"source": "math500"}, num_items=None,
                   metric="accuracy", max_new_tokens=1024,
                   description="MATH-500's eval part (about a third of its 500 problems, by question hash; the rest is "
                               "its train split, so no item scored here is ever trained on), greedy")
    register_suite("humaneval", env_id="onelayer/Code-v0", env_kwargs={"dataset": "humaneval"}, num_items=None,
                   metric="pass@1", max_new_tokens=256,
                   description="HumanEval eval split (a third of the 164 problems by task-id hash), pass@1 greedy")
    register_suite("humaneval-pass@k", env_id="onelayer/Code-v0", env_kwargs={"dataset": "humaneval"}, num_items=None,
                   metric="pass@1", max_new_tokens=256, temperature=0.8, num_samples=10, k=(1, 5, 10),
                   description="HumanEval eval split, 10 samples at T=0.8, pass@1/5/10")
    register_suite("humaneval+", env_id="onelayer/Code-v0", env_kwargs={"dataset": "humaneval+"}, num_items=None,
                   metric="pass@1", max_new_tokens=256, description="HumanEval+ (EvalPlus) eval split, pass@1 greedy")
    register_suite("mbpp+", env_id="onelayer/Code-v0", env_kwargs={"dataset": "mbpp+"}, num_items=None,
                   metric="pass@1", max_new_tokens=256, description="MBPP+ (EvalPlus) eval split, pass@1 greedy")
    for level in range(1, 6):
        register_suite(f"code-gen-l{level}", env_id="onelayer/Code-v0",
                       env_kwargs={"dataset": "procedural", "level": level}, num_items=CODE_GEN_ITEMS,
                       metric="pass@1", max_new_tokens=160,
                       description=f"procedural Python functions, level {level}, {CODE_GEN_ITEMS} held-out items, "
                                   "pass@1 greedy")
    alf = dict(env_id="onelayer/ALFWorld-v0", num_items=None, metric="success_rate")
    register_suite("alfworld-gen", **alf, env_kwargs={"split": "eval", "generated": True}, max_new_tokens=48,
                   max_turns=15, description="onelayer's generated ALFWorld eval games (30), 15 turns, greedy")
    register_suite("alfworld-gen-ood", **alf, env_kwargs={"split": "eval_ood", "generated": True}, max_new_tokens=48,
                   max_turns=15, description="generated out-of-distribution games (30, bigger rooms)")
    register_suite("alfworld-gen-easy", **alf, env_kwargs=easy, max_new_tokens=16, max_turns=10,
                   description="generated easy games (30: 2 receptacles, pick-and-place and look-at-in-light), 10 "
                               "turns, help/look/inventory not listed, greedy; held out from the easy train set")
    register_suite("alfworld-gen-easy-sampled", **alf, env_kwargs=easy, max_new_tokens=16, max_turns=10,
                   temperature=1.0, num_samples=4,
                   description="the alfworld-gen-easy games, 4 passes sampled at T=1 (fixed seeds), mean success: the "
                               "policy RL trains (greedy, a small model's position preference decides the choice "
                               "format)")
    register_suite("alfworld-gen-easy-ood", **alf, env_kwargs={**easy, "split": "eval_ood"}, max_new_tokens=16,
                   max_turns=10, description="generated easy task types in bigger rooms (30: 3-4 receptacles), 10 turns")
    register_suite("alfworld-eval-id", **alf, env_kwargs={"split": "eval", "real": True}, max_new_tokens=48,
                   max_turns=50, description="ALFWorld valid_seen (140 games), 50 turns, greedy")
    register_suite("alfworld-eval-ood", **alf, env_kwargs={"split": "eval_ood", "real": True}, max_new_tokens=48,
                   max_turns=50, description="ALFWorld valid_unseen (134 games), 50 turns, greedy")


_outer, plugins.CURRENT = plugins.CURRENT, "onelayer"  # a plugin may be what imports this module first
try:
    _register_builtins()
finally:
    plugins.CURRENT = _outer


def default_suite(domain: str) -> Suite:
    """The suite a domain (name or env id) is scored on by default.

    Its DomainSpec's ``suite``, else the first suite registered for its env, else every
    item of its eval split (a suite named after the env, greedy, the env's own settings).
    """
    spec = domain_spec(domain)
    if spec.suite:
        return get_suite(spec.suite)
    for suite in SUITES.values():
        if suite.env == spec.env_id:
            return suite
    return Suite(spec.env_id, spec.env_id, num_items=None, kind=spec.metric, source="default (every eval item)",
                 max_new_tokens=int(spec.train.get("max_new_tokens", 64)), max_turns=spec.train.get("max_turns"),
                 description=f"every item of {spec.env_id}'s eval split, greedy")


def get_suite(name: str) -> Suite:
    """A suite by name (or an env id: its default suite), or a UserError listing the names."""
    if name in SUITES:
        return SUITES[name]
    if name in gym.registry:
        return default_suite(name)
    raise UserError(f"unknown suite {name!r}: choose from {', '.join(SUITES)} (or an env id for every item of its "
                    "eval split)")


def parse_suites(text: str) -> list[Suite]:
    """``NAME[,NAME...]`` to suites (each name checked)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--suite needs at least one suite name: " + ", ".join(SUITES))
    return [get_suite(n) for n in names]


def env_kwargs_of(suite: Suite) -> dict:
    """The env options for the suite's eval split, as the env takes them.

    An env class with a ``suite_options(kwargs)`` staticmethod resolves a suite's options
    itself (ALFWorld turns ``split`` + ``generated`` / ``real`` into a data folder); the
    others take the suite's options as they are.
    """
    resolve = getattr(env_class(suite.env), "suite_options", None)
    if resolve is None:
        return dict(suite.env_kwargs)
    try:
        return resolve(dict(suite.env_kwargs))
    except DataMissing as e:
        raise SuiteDataMissing(f"suite {suite.name}: {e}") from None


def check_available(suite: Suite) -> None:
    """Raise SuiteDataMissing (naming the data and how to get it) when the suite cannot run here."""
    try:
        make_eval_env(suite.env, env_kwargs_of(suite)).close()
    except SuiteDataMissing:
        raise
    except (UserError, gym.error.Error) as e:
        raise SuiteDataMissing(f"suite {suite.name}: {e}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one item with ``c`` of ``n`` samples correct (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per item, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


SAMPLE_SEED_STRIDE = 100_003


def run_suite(suite: Suite, engine: RolloutEngine, tokenizer, *, prompt_template: str | None = None,
              system_prompt: str | None = None, history_length: int = 2, batch_size: int = 64,
              action_format: str = "text", first_sample: int = 0) -> dict:
    """Evaluate one suite; the result has the primary metric as a top-level key plus every item's outcome.

    Sample ``j`` is drawn with seed ``suite.seed + SAMPLE_SEED_STRIDE * j``. ``first_sample`` starts at a later
    pass (``num_samples`` passes from there), so more passes can be added to a stored result with
    :func:`merge_samples` without redoing the first ones.
    """
    check_available(suite)
    kw = env_kwargs_of(suite)
    prompts = PromptBuilder.for_domain(tokenizer, suite.env, prompt_template, system_prompt, history_length,
                                       action_format)
    n_items = suite.num_items
    if n_items is None:
        env = make_eval_env(suite.env, kw)
        n_items = getattr(env.unwrapped, "num_tasks", None)
        env.close()
        if n_items is None:
            raise UserError(f"suite {suite.name}: env {suite.env} does not say how many eval items it has; set num_items")
    t = time.time()
    runs: list[EvalResult] = []
    if first_sample < 0:
        raise UserError(f"first_sample must be >= 0, got {first_sample}")
    for j in range(first_sample, first_sample + suite.num_samples):
        runs.append(evaluate_policy(
            engine, prompts, suite.env, kw, num_items=n_items, max_new_tokens=suite.max_new_tokens,
            temperature=suite.temperature, seed=suite.seed + SAMPLE_SEED_STRIDE * j, batch_size=batch_size,
            max_turns=suite.max_turns, metric=suite.metric, parse_actions=domain_spec(suite.env).actions))
    first = runs[0]
    result = first.to_dict()
    if suite.num_samples > 1 or first_sample:
        correct = [sum(r.items[i].success for r in runs) for i in range(n_items)]
        for k in (k for k in suite.k if k <= suite.num_samples):  # a later part alone (first_sample) may be short
            result[f"pass@{k}"] = sum(pass_at_k(suite.num_samples, c, k) for c in correct) / n_items
        if suite.per_sample_mean:
            # Accuracy / success rate over every sample (greedy agentic passes differ in the choice order).
            result[first.metric] = statistics.fmean(r.value for r in runs)
            result["by_sample"] = [r.value for r in runs]
        for i, item in enumerate(result["items"]):
            item["samples_correct"] = correct[i]
            item["samples"] = [{"success": bool(r.items[i].success), "response": r.items[i].response} for r in runs]
    result.update({
        "metric": suite.metric, "suite": suite.name, "env": suite.env, "env_kwargs": kw, "domain": suite.domain,
        "settings": {"max_new_tokens": suite.max_new_tokens, "temperature": suite.temperature,
                     "num_samples": suite.num_samples, "first_sample": first_sample, "k": list(suite.k),
                     "seed": suite.seed,
                     "max_turns": suite.max_turns, "num_items": n_items,
                     "item_list": f"eval split items 0..{n_items - 1}"},
        "time_s": time.time() - t,
    })
    return result


_SAME_SETTINGS = ("max_new_tokens", "temperature", "k", "seed", "max_turns", "num_items")


def _evaluation(result: dict) -> dict:
    """What makes two results passes of one evaluation: env, its kwargs, metric and sampling settings."""
    return {**{k: result["settings"].get(k) for k in _SAME_SETTINGS},
            **{k: result.get(k) for k in ("env", "env_kwargs", "metric")}}


def extension_mismatch(done: dict, suite: Suite) -> list[str]:
    """What differs between a stored result and more passes of ``suite`` (empty: they merge with
    :func:`merge_samples`). The suite's name is not compared: overrides can make two names one evaluation."""
    want = json.loads(json.dumps({
        "max_new_tokens": suite.max_new_tokens, "temperature": suite.temperature, "k": list(suite.k),
        "seed": suite.seed, "max_turns": suite.max_turns,
        "num_items": done["settings"].get("num_items") if suite.num_items is None else suite.num_items,
        "env": suite.env, "env_kwargs": env_kwargs_of(suite), "metric": suite.metric}))
    have = _evaluation(done)
    return [k for k in want if want[k] != have[k]]


def merge_samples(done: dict, more: dict) -> dict:
    """One result from two of the same suite, ``more`` holding the passes right after ``done``'s.

    Both must come from :func:`run_suite` with several passes (or ``first_sample``); the merged result is what one
    run with all the passes gives: per-item sample lists and counts, pass@k, and for math and agentic suites the
    mean over passes with ``by_sample``.
    """
    a, b = done["settings"], more["settings"]
    ea, eb = _evaluation(done), _evaluation(more)
    diff = [k for k in ea if ea[k] != eb[k]]
    if diff:
        raise UserError(f"cannot merge samples of different evaluations ({done.get('suite')} vs {more.get('suite')}; "
                        f"differing: {', '.join(diff)})")
    start = a.get("first_sample", 0) + a["num_samples"]
    if b.get("first_sample", 0) != start:
        raise UserError(f"cannot merge samples: the second result must start at pass {start} "
                        f"(it starts at {b.get('first_sample', 0)})")
    out = copy.deepcopy(done)
    if a["num_samples"] == 1 and "samples" not in out["items"][0]:  # a single greedy/sampled pass
        for item in out["items"]:
            item["samples"] = [{"success": bool(item["success"]), "response": item["response"]}]
            item["samples_correct"] = int(bool(item["success"]))
        if not done["metric"].startswith("pass@"):
            out["by_sample"] = [done[done["metric"]]]
    total = a["num_samples"] + b["num_samples"]
    for item, extra in zip(out["items"], more["items"]):
        item["samples"] += extra["samples"]
        item["samples_correct"] += extra["samples_correct"]
    n_items = len(out["items"])
    for k in (k for k in a["k"] if k <= total):
        out[f"pass@{k}"] = sum(pass_at_k(total, it["samples_correct"], k) for it in out["items"]) / n_items
    if "by_sample" in out:
        out["by_sample"] = out["by_sample"] + more["by_sample"]
        out[done["metric"]] = statistics.fmean(out["by_sample"])
    out["settings"]["num_samples"] = total
    out["time_s"] = done["time_s"] + more["time_s"]
    return out


def run_suites(suites: list[Suite], engine: RolloutEngine, tokenizer, **kw) -> tuple[dict[str, dict], dict[str, str]]:
    """Run every suite whose data is here; returns (results by name, missing-data messages by name)."""
    results, missing = {}, {}
    for s in suites:
        try:
            results[s.name] = run_suite(s, engine, tokenizer, **kw)
        except SuiteDataMissing as e:
            missing[s.name] = str(e)
    return results, missing
