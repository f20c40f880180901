"""onelayer: layer-targeted reinforcement learning for LLM agents.

``import onelayer`` registers every onelayer env id with Gymnasium (the built-in suites
register when ``onelayer.benchmarks.suites`` is first imported), then imports the plugins: the module of every installed
``onelayer.plugins`` entry point, and the modules named in ``$ONELAYER_PLUGINS``
(comma-separated; the CLI's ``--plugin`` sets it so that worker processes load them
too). The folders of the repository are installed as sub-packages of this namespace:
``onelayer.envs``, ``onelayer.agents``, ``onelayer.training``, ``onelayer.benchmarks``.
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


def register_suite(name: str, *, env_id: str, num_items: int | None, metric: str, env_kwargs: dict | None = None,
                   num_samples: int = 1, temperature: float = 0.0, **options):
    """Register a named evaluation suite (see ``onelayer.benchmarks.suites.register_suite``)."""
    from onelayer.benchmarks.suites import register_suite as _register

    return _register(name, env_id=env_id, num_items=num_items, metric=metric, env_kwargs=env_kwargs,
                     num_samples=num_samples, temperature=temperature, **options)


def _load_plugins() -> None:
    import os
    import sys

    from onelayer import plugins

    try:
        plugins.load_installed()
        for module in filter(None, (m.strip() for m in os.environ.get("ONELAYER_PLUGINS", "").split(","))):
            plugins.load_plugin(module, "$ONELAYER_PLUGINS")
    except plugins.PluginError as e:
        if plugins.invoked_as_cli():  # the command: one line and exit 2, like every other user error
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


_load_plugins()

__all__ = ["train", "evaluate", "register_suite", "envs", "__version__"]
