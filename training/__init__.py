"""Training: layer selection, advantages, losses and the group RL trainer."""
