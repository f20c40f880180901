"""onelayer: layer-targeted reinforcement learning for LLM agents.

``import onelayer`` registers every onelayer env id with Gymnasium. The
folders of the repository are installed as sub-packages of this namespace:
``onelayer.envs``, ``onelayer.agents``, ``onelayer.training``,
``onelayer.benchmarks``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from onelayer import envs as envs  # noqa: E402  (registers env ids)


def train(config=None, **overrides):
    """Run RL training (see ``onelayer.training.config.TrainConfig`` for every option); returns the run result."""
    from onelayer.training.trainer import train as _train

    return _train(config, **overrides)


def evaluate(**kwargs):
    """Evaluate a model or a run on an env's evaluation split (see ``onelayer.benchmarks.evaluate.evaluate``)."""
    from onelayer.benchmarks.evaluate import evaluate as _evaluate

    return _evaluate(**kwargs)


__all__ = ["train", "evaluate", "envs", "__version__"]
