"""The task-selection rule every onelayer env shares."""

from __future__ import annotations

import random

import numpy as np


def task_index(seed: int | None, num_tasks: int, np_random: np.random.Generator) -> int:
    """Index of the task a ``reset(seed=...)`` plays.

    The seed alone picks it (not the env's history), so equal seeds give equal
    tasks: that is what forms GRPO / GiGPO groups. Without a seed the env's own
    ``np_random`` picks.
    """
    if seed is not None:
        return random.Random(seed).randrange(num_tasks)
    return int(np_random.integers(num_tasks))
