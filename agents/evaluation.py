"""Score a policy on an env's evaluation split: a fixed, enumerated item list, greedy by default."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import gymnasium as gym

from onelayer.agents.engine import RolloutEngine, SamplingParams
from onelayer.agents.prompts import PromptBuilder
from onelayer.agents.rollout import EpisodeSpec, collect
from onelayer.errors import UserError


@dataclass
class ItemOutcome:
    """One evaluation item: what the policy answered and how it scored."""

    index: int
    task_id: str
    success: bool
    reward: float
    steps: int
    response: str
    details: dict = field(default_factory=dict)


@dataclass
class EvalResult:
    """A metric over a fixed item list, with every item's outcome."""

    metric: str
    value: float
    num_items: int
    items: list[ItemOutcome]

    def to_dict(self) -> dict:
        """JSON form: the metric as a top-level key, plus ``num_items`` and ``items``."""
        return {self.metric: self.value, "num_items": self.num_items, "items": [asdict(i) for i in self.items]}


def make_eval_env(env_id: str, env_kwargs: dict | None = None) -> gym.Env:
    """An env on the evaluation split (``split="eval"``) of ``env_id``."""
    kwargs = dict(env_kwargs or {})
    kwargs["split"] = "eval"
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise UserError(f"cannot make env {env_id!r}: {e}") from None


def evaluate_policy(
    engine: RolloutEngine, prompt_builder: PromptBuilder, env_id: str, env_kwargs: dict | None = None,
    num_items: int = 256, max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0,
    batch_size: int = 64, max_turns: int | None = None, metric: str = "accuracy", parse_actions: bool = False,
) -> EvalResult:
    """Run items ``0..num_items-1`` of the eval split once each and return the metric and per-item outcomes."""
    pool = [make_eval_env(env_id, env_kwargs)]  # one env per live episode, reused across batches
    available = getattr(pool[0].unwrapped, "num_tasks", None)
    spec = pool[0].spec
    turns = max_turns or (spec.max_episode_steps if spec and spec.max_episode_steps else 1)
    if available is not None and num_items > available:
        pool[0].close()
        raise UserError(f"{env_id} has {available} evaluation items; ask for at most that many (got {num_items})")
    pool += [make_eval_env(env_id, env_kwargs) for _ in range(min(batch_size, num_items) - 1)]
    items: list[ItemOutcome] = []
    for start in range(0, num_items, batch_size):
        idx = list(range(start, min(num_items, start + batch_size)))
        envs = pool[: len(idx)]
        specs = [EpisodeSpec(group=i, sample=0, seed=seed, options={"task_id": i}) for i in idx]
        trajs = collect(engine, prompt_builder, envs, specs, SamplingParams(max_new_tokens, temperature, 1.0, seed + start),
                        max_turns=turns, parse_actions=parse_actions, env_factory=lambda: make_eval_env(env_id, env_kwargs))
        for i, t in zip(idx, trajs):
            last = t.steps[-1] if t.steps else None
            details = {k: v for k, v in (last.info if last else {}).items()
                       if isinstance(v, (str, int, float, bool)) or v is None}
            if t.error is not None:
                details["env_error"] = t.error
            items.append(ItemOutcome(i, str(t.task_id), bool(t.success), t.episode_return, t.length,
                                     last.response_text if last else "", details))
        pool[: len(idx)] = envs  # collect may have replaced a crashed env
    for e in pool:
        e.close()
    value = sum(i.success for i in items) / max(len(items), 1)
    return EvalResult(metric, value, len(items), items)
