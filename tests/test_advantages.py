"""Advantage estimators match hand-computed values (MISSION.md conventions)."""

import math

import numpy as np
import pytest

from onelayer.training.advantages import drgrpo_advantages, grpo_advantages, no_signal_groups


def test_grpo_normalises_by_unbiased_std_within_each_group():
    rewards = [1.0, 0.0, 0.0, 0.0, 2.0, 4.0]
    groups = ["a", "a", "a", "a", "b", "b"]
    adv = grpo_advantages(rewards, groups)
    # group a: mean 0.25, unbiased std sqrt(((0.75^2) + 3 * 0.25^2) / 3) = 0.5
    assert adv[:4] == pytest.approx([0.75 / (0.5 + 1e-6), -0.25 / (0.5 + 1e-6)] + [-0.25 / (0.5 + 1e-6)] * 2)
    # group b: mean 3, unbiased std sqrt(2)
    s = math.sqrt(2.0) + 1e-6
    assert adv[4:] == pytest.approx([-1 / s, 1 / s])


def test_drgrpo_only_centres():
    adv = drgrpo_advantages([1.0, 0.0, 0.0, 1.0, 3.0], [0, 0, 0, 0, 1])
    assert adv == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.0])


@pytest.mark.parametrize("fn", [grpo_advantages, drgrpo_advantages])
def test_equal_rewards_and_singletons_give_zero(fn):
    adv = fn([1.0, 1.0, 1.0, 0.0, 0.0, 5.0], ["x", "x", "x", "y", "y", "z"])
    assert np.all(adv == 0.0)


def test_no_signal_groups_counts_all_equal_groups():
    assert no_signal_groups([1, 1, 0, 1, 0, 0, 3], [0, 0, 1, 1, 2, 2, 3]) == 3


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        grpo_advantages([1.0, 2.0], [0])


def test_estimators_are_registry_entries_the_trainer_looks_up_by_name():
    from types import SimpleNamespace

    from onelayer.agents.trajectory import Step, Trajectory
    from onelayer.training.advantages import ALGORITHMS, ESTIMATORS, register_adv_est

    assert set(ALGORITHMS) == {"gigpo", "grpo", "drgrpo"} and set(ALGORITHMS) <= set(ESTIMATORS)

    def traj(group, reward):
        t = Trajectory(group=group, sample=0, task_id=str(group))
        t.steps.append(Step(prompt_ids=[1], response_ids=[2, 3], logprobs=[0.0, 0.0], response_text="x", reward=reward,
                            anchor="s0"))
        return t

    trajs = [traj(0, 1.0), traj(0, 0.0), traj(1, 1.0), traj(1, 1.0)]
    adv, _ = ESTIMATORS["drgrpo"](trajs, SimpleNamespace())
    assert [a.tolist() for a in adv] == [[0.5], [-0.5], [0.0], [0.0]]  # R_i - mean(R_group), no std

    @register_adv_est("test-constant")
    def constant(trajs, config):
        return [np.ones(t.length) for t in trajs], {"constant": 1}

    try:
        assert ESTIMATORS["test-constant"] is constant
        with pytest.raises(ValueError, match="already registered"):
            register_adv_est("test-constant")(lambda trajs, config: ([], {}))
    finally:
        ESTIMATORS.pop("test-constant")
