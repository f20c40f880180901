"""What the harness needs to know about an env beyond Gymnasium: one record, owned by the env.

A Gymnasium env says how to reset and step; to train, evaluate and sweep it onelayer
also needs the metric its score is reported in, how prompts are framed, whether the
model *acts* (answers with an ``<action>`` chosen from ``info["admissible_actions"]``,
penalised when invalid) or just answers in text, and the default train options and
suite. :class:`DomainSpec` holds these; an env declares it in its class metadata::

    class MyEnv(gym.Env):
        metadata = {"render_modes": [], "onelayer": {"name": "mytask", "metric": "accuracy"}}

(a dict of DomainSpec fields, or a DomainSpec). Every field has a default, derived from
the Gymnasium registration when the env declares nothing: an env registered with
``max_episode_steps=1`` is a single-turn text task (observation = the prompt, action =
the model's text, ``accuracy`` of its reward); any other is a multi-turn agent task
(``<action>`` replies, admissible actions, ``success_rate``, invalid-action penalty 0.1),
as the env contract in docs/adding_an_environment.md describes.

The built-in envs declare theirs the same way; nothing in onelayer compares a domain
name with a literal.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field

import gymnasium as gym

from onelayer.errors import UserError

METRICS = ("accuracy", "success_rate", "pass@1")
"""Metrics a domain can report its score in (pass@k suites report more; the score uses pass@1)."""
ANSWER_KINDS = ("text", "final_answer", "code", "action")
"""How majority votes compare two responses: whole text, the extracted final answer (math),
the extracted program (code, voted by test outcome), or the action taken."""


@dataclass(frozen=True)
class DomainSpec:
    """One env's record for the harness (see the module docstring)."""

    env_id: str
    """The registered Gymnasium id the harness trains and evaluates."""
    name: str = ""
    """Label of the domain in sweeps, job ids and reports (default: the env id)."""
    metric: str = ""
    """``accuracy``, ``success_rate`` or ``pass@1`` (default: accuracy for single-turn envs, success_rate else)."""
    multi_turn: bool | None = None
    """Episodes of several model turns (default: ``max_episode_steps`` > 1)."""
    actions: bool | None = None
    """The model acts: replies in ``<action>`` tags, projected on ``info["admissible_actions"]`` when the env gives
    them; action formats (text / choice / score) apply. Default: ``multi_turn``."""
    prompt_template: str | None = None
    """User-message template (placeholders in agents/prompts.py); None: ``{observation}`` for text tasks, the
    agent template of the action format for acting ones."""
    invalid_action_penalty: float | None = None
    """Subtracted from a step's reward when the action was invalid (default: 0.1 when acting, else 0)."""
    answer: str = ""
    """How votes compare responses: one of ANSWER_KINDS (default: ``action`` when acting, else ``text``)."""
    train: dict = field(default_factory=dict)
    """Default TrainConfig options when this env is trained (``env_kwargs``, ``max_new_tokens``, ...)."""
    suite: str | None = None
    """Default suite (None: the first suite registered for this env, else every item of its eval split)."""
    description: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: fill the derived defaults once
        if not self.name:
            set_(self, "name", self.env_id)
        if self.multi_turn is None:
            steps = getattr(gym.spec(self.env_id), "max_episode_steps", None) if self.env_id in gym.registry else None
            set_(self, "multi_turn", steps != 1)
        if self.actions is None:
            set_(self, "actions", bool(self.multi_turn))
        if not self.metric:
            set_(self, "metric", "success_rate" if self.multi_turn else "accuracy")
        if self.metric not in METRICS:
            raise UserError(f"{self.env_id}: domain metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.invalid_action_penalty is None:
            set_(self, "invalid_action_penalty", 0.1 if self.actions else 0.0)
        if not self.answer:
            set_(self, "answer", "action" if self.actions else "text")
        if self.answer not in ANSWER_KINDS:
            raise UserError(f"{self.env_id}: domain answer kind {self.answer!r} is not one of {', '.join(ANSWER_KINDS)}")
        if not isinstance(self.train, dict):
            raise UserError(f"{self.env_id}: domain train options must be a dict, got {self.train!r}")

    def train_options(self) -> dict:
        """TrainConfig options that train this domain: its env plus its defaults."""
        return {"env": self.env_id, "env_kwargs": {}, **self.train}


_FIELDS = {f.name for f in dataclasses.fields(DomainSpec)}
_BY_NAME: dict[str, str] = {}
"""Domain name -> env id, for names that differ from an env id (``math`` -> ``onelayer/Math-v0``)."""


def declare_name(name: str, env_id: str) -> None:
    """Let ``name`` stand for ``env_id`` wherever a domain is asked for (``--domains math``)."""
    if _BY_NAME.get(name, env_id) != env_id:
        raise UserError(f"domain name {name!r} already names {_BY_NAME[name]}, not {env_id}")
    _BY_NAME[name] = env_id


def env_class(env_id: str):
    """The class (or factory) a registered id builds, imported without constructing an env."""
    spec = gym.spec(env_id)
    ep = spec.entry_point
    if callable(ep):
        return ep
    module, _, attr = str(ep).partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # noqa: BLE001  (any import failure of a user's env is reported the same way)
        raise UserError(f"env {env_id}: cannot import its entry point {ep!r}: {type(e).__name__}: {e}") from None
    return obj


def resolve_env_id(domain: str) -> str:
    """The env id a domain name or env id stands for; UserError naming the known ones otherwise."""
    if domain in _BY_NAME:
        return _BY_NAME[domain]
    if domain in gym.registry:
        return domain
    names = sorted(_BY_NAME)
    ids = sorted(k for k in gym.registry if "/" in k)
    raise UserError(f"unknown domain or env id {domain!r}: domains are {', '.join(names)}; registered env ids with a "
                    f"namespace are {', '.join(ids)} (register yours with gymnasium.register, from a plugin)")


def domain_spec(domain: str) -> DomainSpec:
    """The DomainSpec of a domain name (``math``) or registered env id, as its env class declares it."""
    env_id = resolve_env_id(domain)
    declared = getattr(env_class(env_id), "metadata", None) or {}
    record = declared.get("onelayer", {}) if isinstance(declared, dict) else {}
    if isinstance(record, DomainSpec):
        return dataclasses.replace(record, env_id=env_id) if record.env_id != env_id else record
    if not isinstance(record, dict):
        raise UserError(f"{env_id}: metadata['onelayer'] must be a dict of DomainSpec fields or a DomainSpec, "
                        f"got {type(record).__name__}")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise UserError(f"{env_id}: metadata['onelayer'] has unknown field(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(sorted(_FIELDS - {'env_id'}))}")
    return DomainSpec(**{**record, "env_id": env_id})
