"""Rollout collection: many episodes at once, one batched LLM call per turn.

Every live episode's prompt for the current turn goes into a single
``engine.generate`` call; finished episodes drop out. Single-turn envs (math)
are the one-turn case of the same loop. The envs are a list of Gymnasium envs
(stepped one after another) or a pool with batched ``reset(seeds, options,
indices)`` / ``step(actions, indices)`` such as ``ALFWorldVecEnv``, whose worker
processes step all live episodes of a turn at the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from onelayer.agents.engine import RolloutEngine, SamplingParams
from onelayer.agents.prompts import PromptBuilder
from onelayer.agents.scoring import choose_actions
from onelayer.agents.trajectory import Step, Trajectory
from onelayer.errors import UserError

log = logging.getLogger("onelayer.rollout")


@dataclass(frozen=True)
class EpisodeSpec:
    """How to reset one episode: a seed or explicit options, and its group/sample indices."""

    group: int
    sample: int
    seed: int | None = None
    options: dict | None = None


def is_env_pool(envs) -> bool:
    """True for a pool with batched ``reset``/``step`` over env indices (``ALFWorldVecEnv``), False for a list of envs."""
    return not isinstance(envs, (list, tuple)) and hasattr(envs, "num_envs") and callable(getattr(envs, "step", None))


def _reset_many(envs, items: list[tuple[int, int | None, dict | None]]) -> dict[int, Any]:
    """Reset envs ``(index, seed, options)``: {index: (obs, info) or the exception it raised}."""
    if not items:
        return {}
    if is_env_pool(envs):
        idx = [i for i, _, _ in items]
        try:
            obs, infos = envs.reset(seeds=[s for _, s, _ in items], options=[o for _, _, o in items], indices=idx)
        except Exception as e:  # a pool fails as a whole: every episode of the call fails
            return dict.fromkeys(idx, e)
        return {i: (o, info) for i, o, info in zip(idx, obs, infos)}
    out: dict[int, Any] = {}
    for i, seed, options in items:
        try:
            out[i] = envs[i].reset(seed=seed, options=options)
        except Exception as e:
            out[i] = e
    return out


def _step_many(envs, items: list[tuple[int, str]]) -> dict[int, Any]:
    """Step envs ``(index, action)``: {index: (obs, reward, terminated, truncated, info) or the exception it raised}."""
    if not items:
        return {}
    if is_env_pool(envs):
        idx = [i for i, _ in items]
        try:
            res = envs.step([a for _, a in items], indices=idx)
        except Exception as e:
            return dict.fromkeys(idx, e)
        return {i: r for i, r in zip(idx, zip(*res))}
    out: dict[int, Any] = {}
    for i, action in items:
        try:
            out[i] = envs[i].step(action)
        except Exception as e:
            out[i] = e
    return out


@dataclass
class _Turn:
    """What the policy produced for one episode's turn: response tokens and their log-probs (``score``: the
    chosen candidate and one value, log pi(a | s), plus every candidate and the chosen index)."""

    response_ids: list[int]
    logprobs: list[float]
    truncated: bool = False
    candidates: list[list[int]] | None = None
    choice: int | None = None
    hidden: object = None  # the engine's captured lower-block states (Generation.hidden)


def _score_turn(engine, builder: PromptBuilder, prompts: list[list[int]], shown: list[list[str] | None],
                params: SamplingParams) -> tuple[list[_Turn], list[tuple[str, str, bool]]]:
    """The ``score`` format's turn: one ``engine.score_actions`` call for every live episode, then a seeded draw
    (argmax at temperature 0) from each episode's softmax over its admissible actions (``top_p`` does not apply)."""
    if not prompts:
        return [], []
    for actions in shown:
        if not actions:
            raise UserError("action_format score needs the env's admissible actions (info['admissible_actions']) in "
                            "every state: use an env that lists them, or another action format")
    tok = builder.tokenizer
    cands = [[tok(builder.candidate_text(a), add_special_tokens=False)["input_ids"] for a in actions]
             for actions in shown]
    log_probs = engine.score_actions(prompts, cands, temperature=params.temperature)
    picks = choose_actions(log_probs, params.temperature, params.seed)
    hidden = getattr(engine, "scored_hidden", None) or [None] * len(prompts)  # HFEngine with capture_block
    turns = [_Turn(c[k], [lp[k]], candidates=c, choice=k, hidden=h)
             for c, lp, k, h in zip(cands, log_probs, picks, hidden)]
    acts = [(builder.candidate_text(actions[k]), actions[k], False) for actions, k in zip(shown, picks)]
    return turns, acts


def collect(
    engine: RolloutEngine, prompt_builder: PromptBuilder, envs: Sequence[gym.Env] | Any, episodes: Sequence[EpisodeSpec],
    params: SamplingParams, max_turns: int = 1, max_prompt_tokens: int | None = None, parse_actions: bool = False,
    invalid_action_penalty: float = 0.0, env_factory: Callable[[], gym.Env] | None = None,
) -> list[Trajectory]:
    """Run ``episodes`` (one per env in ``envs``) to the end and return their trajectories.

    Each turn, every live episode's prompt goes into one ``engine.generate`` call.
    In the builder's ``score`` action format nothing is generated: each turn, one
    ``engine.score_actions`` call gives every live episode's softmax over its
    admissible actions, and the action is drawn from it (``agents.scoring``).
    With ``parse_actions`` the builder's action format reads the action (``<action>...</action>``
    projected onto ``info["admissible_actions"]``, or an action's number; agentic envs); otherwise the whole
    response is the action (math, code). Invalid actions (by the parser or the env's
    ``info["invalid_action"]``) cost ``invalid_action_penalty`` on that step's reward.
    An episode ends when the env terminates or truncates, after ``max_turns`` turns,
    or when its next prompt would exceed ``max_prompt_tokens`` (truncated with reason
    ``"context"``, not crashed). An env that raises fails only its own episode
    (``Trajectory.error`` says why; it is logged), is replaced by ``env_factory()``
    in ``envs`` when a factory is given, and the rest of the batch goes on. ``envs``
    may also be an env pool (``is_env_pool``): each turn's steps go to it in one
    call, the same trajectories as with a list of the same envs; a pool that raises
    fails the episodes of that call.
    """
    if len(envs) != len(episodes):
        raise ValueError(f"{len(envs)} envs for {len(episodes)} episodes")
    scoring = prompt_builder.action_format == "score"
    if scoring and not callable(getattr(engine, "score_actions", None)):
        raise UserError(f"action_format score needs an engine that scores candidate actions (the hf engine); "
                        f"{type(engine).__name__} only generates: use --engine hf or another action format")
    tok = prompt_builder.tokenizer
    trajs: list[Trajectory] = []
    obs: list[str] = []
    infos: list[dict] = []
    history: list[list[tuple[str, str]]] = []
    tasks: list[str | None] = []
    live = []

    def fail(i: int, where: str, err: Exception) -> None:
        trajs[i].error = f"{where}: {type(err).__name__}: {err}"[:500]
        trajs[i].truncated, trajs[i].truncation_reason = True, "env_error"
        log.warning("episode %d (task %s) failed in env.%s: %s", i, trajs[i].task_id, where, trajs[i].error)
        if env_factory is not None and not is_env_pool(envs):
            try:
                envs[i].close()
            except Exception:  # a crashed env may not close cleanly; it is being replaced anyway
                pass
            try:
                envs[i] = env_factory()
            except Exception as e:  # keep the old one: its next episode tries again, or fails alone
                log.warning("could not replace the crashed env of episode %d: %s: %s", i, type(e).__name__, e)

    for ep in episodes:
        trajs.append(Trajectory(task_id=ep.seed, group=ep.group, sample=ep.sample))
        obs.append("")
        infos.append({})
        history.append([])
        tasks.append(None)
    resets = _reset_many(envs, [(i, ep.seed, ep.options) for i, ep in enumerate(episodes)])
    for i, ep in enumerate(episodes):
        if isinstance(resets[i], Exception):
            fail(i, "reset", resets[i])
            continue
        o, info = resets[i]
        trajs[i].task_id = info.get("task_id", ep.seed)
        obs[i], infos[i], tasks[i] = o, info, info.get("task")
        live.append(i)
    for turn in range(max_turns):
        if not live:
            break
        prompts, ready, shown = [], [], {}
        for i in live:
            shown[i] = prompt_builder.shown_actions(infos[i].get("admissible_actions"), f"{params.seed}/{i}/{turn}")
            ids = prompt_builder.encode(obs[i], history=history[i], admissible=shown[i], task=tasks[i], step=turn + 1)
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                trajs[i].truncated, trajs[i].truncation_reason = True, "context"
                continue
            prompts.append(ids)
            ready.append(i)
        turn_params = SamplingParams(params.max_new_tokens, params.temperature, params.top_p, params.seed + 7919 * turn)
        if scoring:
            gens, acts = _score_turn(engine, prompt_builder, prompts, [shown[i] for i in ready], turn_params)
        else:
            gens = [_Turn(list(g.token_ids), list(g.logprobs), g.finish_reason == "length",
                          hidden=getattr(g, "hidden", None))
                    for g in (engine.generate(prompts, turn_params) if prompts else [])]
            acts = []
            for i, g in zip(ready, gens):
                text = tok.decode(g.response_ids, skip_special_tokens=True)
                if parse_actions:
                    parsed = prompt_builder.parse(text, shown[i])
                    acts.append((text, parsed.action or text, not parsed.valid))
                else:
                    acts.append((text, text, False))
        still = []
        results = _step_many(envs, [(i, action) for i, (_, action, _) in zip(ready, acts)])
        for i, ids, g, (text, action, invalid) in zip(ready, prompts, gens, acts):
            prev = infos[i]
            if isinstance(results[i], Exception):
                fail(i, "step", results[i])
                continue
            o, reward, terminated, truncated, info = results[i]
            invalid = invalid or bool(info.get("invalid_action", False))
            trajs[i].steps.append(Step(
                prompt_ids=ids, response_ids=g.response_ids, logprobs=g.logprobs, response_text=text,
                reward=float(reward) - (invalid_action_penalty if invalid else 0.0), anchor=prev.get("anchor", obs[i]),
                invalid_action=invalid, response_truncated=g.truncated, info=info,
                state_anchor=prev.get("state_anchor"), action=action, env_reward=float(reward),
                candidates=g.candidates, choice=g.choice, lower_hidden=g.hidden,
            ))
            trajs[i].success = bool(info.get("success", info.get("won", trajs[i].success)))
            history[i].append((obs[i], action))
            obs[i], infos[i] = o, info
            if terminated or truncated:
                trajs[i].terminated, trajs[i].truncated = bool(terminated), bool(truncated) and not terminated
                if trajs[i].truncated:
                    trajs[i].truncation_reason = "env"
            else:
                still.append(i)
        live = still
    for i in live:
        trajs[i].truncated, trajs[i].truncation_reason = True, "max_turns"
    return trajs
