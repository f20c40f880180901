"""Typed records of what rollouts produced: steps and trajectories."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class Step:
    """One LLM call and the env step it drove."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # sampling log-probs of response_ids
    response_text: str
    reward: float  # the env's reward minus any invalid-action penalty
    anchor: Hashable  # key of the state this step acted in (the observation text by default)
    invalid_action: bool = False
    response_truncated: bool = False  # hit max_new_tokens before EOS
    info: dict = field(default_factory=dict)
    state_anchor: Hashable | None = None  # the env's true-state key, when it offers one
    action: str = ""  # what was sent to the env
    env_reward: float = 0.0  # the env's own reward
    # The ``score`` action format: every admissible action's token ids (what the policy chose among) and the
    # index of the chosen one; ``response_ids`` is that candidate and ``logprobs`` holds one value, log pi(a | s).
    candidates: list[list[int]] | None = None
    choice: int | None = None
    # The hidden states that entered the lowest trained block while the engine sampled this step (engines that
    # capture them, e.g. HFEngine.capture_block): positions of prompt + response but the last; else None.
    lower_hidden: object = None


@dataclass
class Trajectory:
    """One episode: a group member when several share ``task_id``."""

    task_id: Hashable
    group: int  # index of the task within the batch; rollouts of one group share it
    sample: int  # index of this rollout within its group
    steps: list[Step] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    truncation_reason: str | None = None
    success: bool = False
    error: str | None = None  # set when the env raised: the episode failed and is left out of training

    @property
    def episode_return(self) -> float:
        """Undiscounted sum of step rewards."""
        return float(sum(s.reward for s in self.steps))

    @property
    def length(self) -> int:
        """Number of env steps taken."""
        return len(self.steps)
