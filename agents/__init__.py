"""Agents: model loading, prompts, rollout engines and trajectory collection."""
