"""``onelayer/GuessNumber-v0``: the worked example of docs/adding_an_environment.md.

The env picks a secret number in ``1..high``; each turn the agent guesses one
and hears "higher" or "lower". The observation repeats every guess so far, so
it is the whole state (a Markov text game), and the anchor is that text.
"""

from __future__ import annotations

import string

import gymnasium as gym
from gymnasium import spaces

from onelayer.envs.tasks import task_index
from onelayer.errors import UserError


class GuessNumberEnv(gym.Env):
    """Guess a secret number in few turns: reward 1 for finding it, 0 otherwise."""

    # Nothing to declare: registered with max_episode_steps > 1 and giving admissible actions, it is an agent
    # task by default (<action> replies, success_rate, invalid-action penalty 0.1); see envs/domain.py.
    metadata = {"render_modes": []}

    def __init__(self, high: int = 8, split: str = "train"):
        if high < 2:
            raise UserError(f"GuessNumber needs high >= 2, got {high}")
        if split not in ("train", "eval"):
            raise UserError(f"unknown split {split!r}: use train or eval")
        self.high, self.split = high, split
        self.observation_space = spaces.Text(max_length=2048, charset=string.printable)
        self.action_space = spaces.Text(max_length=256, charset=string.printable)
        self._secret: int | None = None
        self._guesses: list[tuple[int, str]] = []

    @property
    def num_tasks(self) -> int:
        """One task per secret number."""
        return self.high

    def _observation(self) -> str:
        lines = [f"I am thinking of a number from 1 to {self.high}. Guess it: answer with one number."]
        lines += [f"Guess {g}: {verdict}." for g, verdict in self._guesses]
        return "\n".join(lines)

    def _info(self) -> dict:
        obs = self._observation()
        return {"task_id": f"guess/{self.high}/{self._secret}", "anchor": obs,
                "admissible_actions": [str(i) for i in range(1, self.high + 1)]}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task_id" in options:
            tid = options["task_id"]
            # an item index 0..high-1 (how evaluation walks the list) or a task_id string from info
            secret = int(tid) + 1 if isinstance(tid, int) else int(str(tid).rsplit("/", 1)[-1])
            if not 1 <= secret <= self.high:
                raise UserError(f"task_id {options['task_id']!r}: the secret must be in 1..{self.high}")
        else:
            secret = task_index(seed, self.high, self.np_random) + 1
        self._secret, self._guesses = secret, []
        return self._observation(), self._info()

    def step(self, action: str):
        if self._secret is None:
            raise RuntimeError("call reset() before step()")
        digits = "".join(ch if ch.isdigit() else " " for ch in str(action)).split()
        guess = int(digits[0]) if digits else None
        invalid = guess is None or not 1 <= guess <= self.high
        won = guess == self._secret
        if not invalid and not won:
            self._guesses.append((guess, "higher" if self._secret > guess else "lower"))
        info = self._info()
        info.update(won=won, success=won, invalid_action=invalid)
        return self._observation(), float(won), won, False, info
