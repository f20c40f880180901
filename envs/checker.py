"""``onelayer envs check``: Gymnasium's ``check_env`` plus onelayer's own contract checks.

Each check says what it verified and, when it fails, exactly what to fix.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Hashable
from dataclasses import dataclass

import gymnasium as gym

from onelayer.errors import UserError

SEEDS = (0, 1, 12345)


@dataclass
class CheckResult:
    """One check's outcome."""

    name: str
    ok: bool
    message: str


def load_env(target: str, **kwargs) -> gym.Env:
    """Make an env from a registered id (``onelayer/Math-v0``) or ``module:Class`` / ``module:env_id``."""
    if target in gym.registry:
        try:
            return gym.make(target, **kwargs)
        except UserError:  # the env's own one-line refusal (e.g. no sandbox isolation) stands as it is
            raise
        except (TypeError, ValueError) as e:
            raise UserError(f"bad env options {kwargs} for {target}: {' '.join(str(e).split())}") from None
    if ":" not in target:
        known = sorted(k for k in gym.registry if k.startswith("onelayer/"))
        raise UserError(f"unknown env {target!r}: pass a registered id ({', '.join(known)}) or module:Class")
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"cannot import module {mod_name!r} for {target!r}: {e}") from None
    if attr in gym.registry:  # importing the module registered it
        return gym.make(attr, **kwargs)
    cls = getattr(mod, attr, None)
    if cls is None:
        raise UserError(f"module {mod_name!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, gym.Env)):
        raise UserError(f"{target} is not a gymnasium.Env subclass: onelayer envs subclass gymnasium.Env")
    return gym.wrappers.TimeLimit(cls(**kwargs), max_episode_steps=kwargs.pop("max_episode_steps", 100))


def _default_action(info: dict, turn: int) -> str:
    actions = info.get("admissible_actions")
    if actions:
        return str(actions[turn % len(actions)])
    return "\\boxed{0}"


def _rollout(env: gym.Env, seed: int, max_steps: int):
    obs, info = env.reset(seed=seed)
    trace = [(obs, None, info.get("task_id"), info.get("anchor"))]
    for turn in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(_default_action(info, turn))
        trace.append((obs, reward, info.get("anchor"), terminated, truncated))
        if terminated or truncated:
            return trace, info, True
    return trace, info, False


def check(env_factory, max_steps: int = 200) -> list[CheckResult]:
    """Run every check on envs made by ``env_factory()``; returns one result per check."""
    results: list[CheckResult] = []

    def add(name: str, ok: bool, message: str) -> None:
        results.append(CheckResult(name, ok, message))

    env = env_factory()
    # 1. Gymnasium's own checker (on the unwrapped env, as Gymnasium recommends).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            from gymnasium.utils.env_checker import check_env

            check_env(env.unwrapped, skip_render_check=True)
            # only Gymnasium's own findings count (a library's ResourceWarning is not the author's to fix)
            bad = [str(w.message) for w in caught if "gymnasium" in (w.filename or "")
                   and not issubclass(w.category, ResourceWarning) and "precision" not in str(w.message)]
            add("gymnasium check_env", not bad, "passed" if not bad else
                "warnings: " + " | ".join(bad[:3]) + " (make observations/actions members of the declared spaces)")
        except Exception as e:  # check_env raises AssertionError/TypeError with its own message
            add("gymnasium check_env", False, f"{type(e).__name__}: {e}")
    spaces_ok = isinstance(env.observation_space, gym.spaces.Text) and isinstance(env.action_space, gym.spaces.Text)
    add("text spaces", spaces_ok, "observation and action spaces are gymnasium.spaces.Text" if spaces_ok else
        f"use gymnasium.spaces.Text for both spaces (got {type(env.observation_space).__name__}, {type(env.action_space).__name__})")

    # 2. reset contract, task_id and anchor.
    try:
        obs, info = env.reset(seed=SEEDS[0])
    except Exception as e:
        add("reset", False, f"reset(seed=0) raised {type(e).__name__}: {e}")
        return results
    add("reset returns text", isinstance(obs, str) and isinstance(info, dict),
        "reset -> (str, dict)" if isinstance(obs, str) else f"reset must return (str, dict); got ({type(obs).__name__}, {type(info).__name__})")
    tid = info.get("task_id")
    add("task_id present", tid is not None and isinstance(tid, Hashable),
        f"task_id={tid!r}" if tid is not None else "put a hashable info['task_id'] in reset's info (equal for equal seeds)")
    _, info2 = env_factory().reset(seed=SEEDS[0])
    add("task_id stable under a seed", info2.get("task_id") == tid,
        "same seed -> same task_id" if info2.get("task_id") == tid else
        f"reset(seed=0) gave task_id {tid!r} and then {info2.get('task_id')!r}: derive the task from the seed alone")
    if tid is not None:
        try:
            obs_t, info_t = env_factory().reset(seed=SEEDS[1], options={"task_id": tid})
            ok = info_t.get("task_id") == tid and obs_t == obs
            add("options task_id selects the task", ok, "reset(options={'task_id': id}) replays the task" if ok else
                "reset(options={'task_id': info['task_id']}) must return that task (evaluation walks item lists this way)")
        except Exception as e:
            add("options task_id selects the task", False, f"reset(options={{'task_id': {tid!r}}}) raised {type(e).__name__}: {e}")
    anchor = info.get("anchor", obs)
    try:
        hash(anchor)
        add("anchor hashable", True, "info['anchor'] is hashable")
    except TypeError:
        add("anchor hashable", False, f"info['anchor'] must be hashable (str, tuple, frozenset), got {type(anchor).__name__}")

    # 3. determinism of whole episodes, rewards, termination.
    try:
        a, last, ended = _rollout(env_factory(), SEEDS[2], max_steps)
        b, _, _ = _rollout(env_factory(), SEEDS[2], max_steps)
    except Exception as e:
        add("episode", False, f"an episode raised {type(e).__name__}: {e}")
        return results
    add("deterministic under a seed", a == b, "same seed and actions -> same observations, rewards, anchors" if a == b else
        "two episodes with the same seed and actions differed: seed every random choice from reset(seed=...) (self.np_random)")
    rewards = [t[1] for t in a[1:]]
    finite = all(isinstance(r, (int, float)) and math.isfinite(r) for r in rewards)
    lo, hi = getattr(env.unwrapped, "reward_range", (-math.inf, math.inf))
    add("reward range", finite and all(lo <= r <= hi for r in rewards),
        f"rewards {rewards[:5]} finite and within {lo, hi}" if finite else f"rewards must be finite floats, got {rewards[:5]}")
    add("episode ends", ended, "the episode terminated or truncated" if ended else
        f"no termination or truncation within {max_steps} steps: register the env with max_episode_steps")
    won_ok = isinstance(last.get("won", last.get("success")), bool)
    add("won/success in step info", won_ok, "info has bool won/success" if won_ok else "put a bool info['won'] (and/or 'success') in every step's info")
    inv_ok = isinstance(last.get("invalid_action", False), bool)
    add("invalid_action is bool", inv_ok, "ok" if inv_ok else "info['invalid_action'] must be a bool")
    return results


def check_splits(make_env, eval_items: int | None = None, asked_by: str = "evaluation") -> list[CheckResult]:
    """What training needs beyond one episode: both splits build, and the eval split holds what is asked of it.

    ``make_env(split)`` builds the env on ``"train"`` or ``"eval"``; ``eval_items`` is how many eval items the
    default suite (or ``--eval-items`` / ``--eval-size``) will ask for, named by ``asked_by``.
    """
    results: list[CheckResult] = []
    built = {}
    for split in ("train", "eval"):
        try:
            built[split] = make_env(split)
            results.append(CheckResult(f"{split} split builds", True, f"split={split!r} builds"))
        except Exception as e:  # noqa: BLE001  (any failure is the author's to see)
            results.append(CheckResult(f"{split} split builds", False,
                                       f"the constructor must take split='train'|'eval'; split={split!r} raised "
                                       f"{type(e).__name__}: {e}"))
    if "eval" in built and eval_items is not None:
        n = getattr(built["eval"].unwrapped, "num_tasks", None)
        if n is None:
            results.append(CheckResult("eval split size", True, f"num_tasks not given: {asked_by} asks for "
                                       f"{eval_items} items (items are reset with task_id 0..{eval_items - 1})"))
        else:
            ok = n >= eval_items
            results.append(CheckResult("eval split size", ok, f"{n} eval tasks >= the {eval_items} {asked_by} asks for"
                                       if ok else f"the eval split has {n} tasks but {asked_by} asks for {eval_items}: "
                                       f"ask for at most {n} (--eval-items / --eval-size, or the suite's num_items) "
                                       "or give the env more eval tasks"))
    for env in built.values():
        env.close()
    return results


def format_report(target: str, results: list[CheckResult]) -> str:
    """Human-readable table of check results."""
    lines = [f"checking {target}"]
    for r in results:
        lines.append(f"  [{'ok' if r.ok else 'FAIL'}] {r.name}: {r.message}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
