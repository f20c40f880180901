"""Reward functions used by tests (importable as ``support_rewards:...``)."""


def length_reward(prompts, completions, **kwargs):
    """Reward longer completions: gives random tiny models a nonzero, varied reward."""
    return [len(c) / 100.0 for c in completions]


def wrong_count(prompts, completions, **kwargs):
    """Returns the wrong number of values (for the error-path test)."""
    return [0.0]
