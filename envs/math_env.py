"""``onelayer/Math-v0``: one math problem per episode, graded with math-verify.

``reset(seed=...)`` returns the problem text; ``step(answer_text)`` grades the
answer and ends the episode with reward 1 (correct) or 0, and ``info`` says
why. ``reset(options={"task_id": ...})`` selects one given problem.
"""

from __future__ import annotations

import string

import gymnasium as gym
from gymnasium import spaces

from onelayer.envs import number_option
from onelayer.envs.grading import grade
from onelayer.envs.math_problems import (
    HUB_SOURCES,
    LEVELS,
    MathProblem,
    dataset_pool,
    procedural_eval_pool,
    procedural_train_problem,
)
from onelayer.envs.tasks import task_index
from onelayer.errors import UserError

_TRAIN_INDEX_SPACE = 2**31
BASE_CHARSET = string.printable


class MathEnv(gym.Env):
    """A single-turn math environment.

    Args:
        source: ``procedural`` (offline generator), ``gsm8k``, ``math`` (MATH), ``math500``, or a local
            ``.jsonl``/``.json``/``.parquet`` path with ``question``/``answer`` fields.
        level: difficulty of the procedural generator (1-5, see ``LEVELS``).
        split: ``train`` or ``eval``; the two splits of one source never share a problem.
        eval_source: the source the ``eval`` split reads instead of ``source`` (default: ``source``), e.g. the
            test file that goes with a train file (a train file is never read for evaluation).
        max_length: longest observation/action text the spaces admit.
    """

    metadata = {"render_modes": [], "onelayer": {
        "name": "math", "metric": "accuracy", "answer": "final_answer",
        "prompt_template": "{observation}\nPut the final answer in \\boxed{{}}.",
        "train": {"env_kwargs": {"level": 1}, "max_new_tokens": 20}, "suite": "math-l1"}}

    def __init__(self, source: str = "procedural", level: int = 1, split: str = "train",
                 eval_source: str | None = None, max_length: int = 8192):
        if split not in ("train", "eval"):
            raise UserError(f"unknown split {split!r} for onelayer/Math-v0: use 'train' or 'eval'")
        if split == "eval" and eval_source:
            source = eval_source
        self.source, self.level, self.split = source, number_option("onelayer/Math-v0", "level", level), split
        self._path = None
        if source == "procedural":
            if self.level not in LEVELS:
                raise UserError(f"unknown math level {level}: choose one of {', '.join(map(str, LEVELS))}")
            self._pool = procedural_eval_pool(self.level) if split == "eval" else None
        else:
            if source not in HUB_SOURCES:
                self._path = source
            self._pool = dataset_pool(source, split, self._path)
        charset = set(BASE_CHARSET)
        for p in self._pool or ():
            charset.update(p.question)
        self.observation_space = spaces.Text(max_length=max_length, min_length=0, charset="".join(sorted(charset)))
        self.action_space = spaces.Text(max_length=max_length, min_length=0, charset=BASE_CHARSET)
        self._problem: MathProblem | None = None
        self._done = True

    @property
    def num_tasks(self) -> int | None:
        """Number of distinct items in this split (None for the unbounded procedural train stream)."""
        return None if self._pool is None else len(self._pool)

    def task_id_of(self, index: int) -> str:
        """The ``task_id`` string of item ``index``."""
        src = f"procedural/L{self.level}" if self.source == "procedural" else self.source
        return f"math/{src}/{self.split}/{index}"

    def _item(self, index: int) -> MathProblem:
        if self._pool is None:
            return procedural_train_problem(self.level, index)
        return self._pool[index]

    def _index_from_task_id(self, task_id) -> int:
        if isinstance(task_id, str) and "/" in task_id:
            prefix, _, idx = task_id.rpartition("/")
            if prefix != self.task_id_of(0).rpartition("/")[0]:
                raise UserError(f"task_id {task_id!r} is not an item of {self.task_id_of(0).rpartition('/')[0]}")
            task_id = idx
        try:
            index = int(task_id)
        except (TypeError, ValueError):
            raise UserError(f"bad task_id {task_id!r}: use an item index or a task_id from info") from None
        limit = _TRAIN_INDEX_SPACE if self._pool is None else len(self._pool)
        if not 0 <= index < limit:
            raise UserError(f"task_id index {index} out of range: this split has items 0..{limit - 1}")
        return index

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task_id" in options:
            index = self._index_from_task_id(options["task_id"])
        else:
            index = task_index(seed, _TRAIN_INDEX_SPACE if self._pool is None else len(self._pool), self.np_random)
        self._problem = self._item(index)
        self._done = False
        info = {"task_id": self.task_id_of(index), "anchor": self._problem.question, "gold": self._problem.answer}
        return self._problem.question, info

    def step(self, action: str):
        if self._problem is None or self._done:
            raise RuntimeError("onelayer/Math-v0: call reset() before step(); an episode is one answer")
        g = grade(str(action), self._problem.answer)
        self._done = True
        info = {
            "task_id": self.task_id_of(self._problem.index), "anchor": self._problem.question,
            "correct": g.correct, "won": g.correct, "success": g.correct, "extracted": g.extracted,
            "gold": self._problem.answer, "reason": g.reason, "invalid_action": g.extracted is None,
        }
        return "", float(g.correct), True, False, info
