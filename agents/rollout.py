"""Rollout collection: many episodes at once, one batched LLM call per turn.

Every live episode's prompt for the current turn goes into a single
``engine.generate`` call; finished episodes drop out. Single-turn envs (math)
are the one-turn case of the same loop.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import gymnasium as gym

from onelayer.agents.engine import RolloutEngine, SamplingParams
from onelayer.agents.prompts import PromptBuilder
from onelayer.agents.trajectory import Step, Trajectory


@dataclass(frozen=True)
class EpisodeSpec:
    """How to reset one episode: a seed or explicit options, and its group/sample indices."""

    group: int
    sample: int
    seed: int | None = None
    options: dict | None = None


def collect(
    engine: RolloutEngine, prompt_builder: PromptBuilder, envs: Sequence[gym.Env], episodes: Sequence[EpisodeSpec],
    params: SamplingParams, max_turns: int = 1, max_prompt_tokens: int | None = None,
) -> list[Trajectory]:
    """Run ``episodes`` (one per env in ``envs``) to the end and return their trajectories.

    An episode ends when the env terminates or truncates, after ``max_turns``
    turns, or when its next prompt would exceed ``max_prompt_tokens`` (then it
    is truncated with reason ``"context"``, not crashed).
    """
    if len(envs) != len(episodes):
        raise ValueError(f"{len(envs)} envs for {len(episodes)} episodes")
    tok = prompt_builder.tokenizer
    trajs: list[Trajectory] = []
    obs: list[str] = []
    anchors: list[Hashable] = []
    for env, ep in zip(envs, episodes):
        o, info = env.reset(seed=ep.seed, options=ep.options)
        trajs.append(Trajectory(task_id=info.get("task_id", ep.seed), group=ep.group, sample=ep.sample))
        obs.append(o)
        anchors.append(info.get("anchor", o))
    live = list(range(len(envs)))
    for turn in range(max_turns):
        if not live:
            break
        prompts, ready = [], []
        for i in live:
            ids = prompt_builder.encode(obs[i])
            if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
                trajs[i].truncated, trajs[i].truncation_reason = True, "context"
                continue
            prompts.append(ids)
            ready.append(i)
        turn_params = SamplingParams(params.max_new_tokens, params.temperature, params.top_p, params.seed + 7919 * turn)
        gens = engine.generate(prompts, turn_params) if prompts else []
        still = []
        for i, ids, g in zip(ready, prompts, gens):
            text = tok.decode(g.token_ids, skip_special_tokens=True)
            o, reward, terminated, truncated, info = envs[i].step(text)
            trajs[i].steps.append(Step(
                prompt_ids=ids, response_ids=list(g.token_ids), logprobs=list(g.logprobs), response_text=text,
                reward=float(reward), anchor=anchors[i], invalid_action=bool(info.get("invalid_action", False)),
                response_truncated=g.finish_reason == "length", info=info,
            ))
            trajs[i].success = bool(info.get("success", info.get("won", trajs[i].success)))
            obs[i] = o
            anchors[i] = info.get("anchor", o)
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
