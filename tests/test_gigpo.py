"""GiGPO advantages on hand-built groups, including the worked example of the docs (computed by hand)."""

import numpy as np
import pytest

from onelayer.training.advantages import discounted_returns, gigpo_advantages, step_group_stats

# Worked example (docs/gigpo.md): one task, two trajectories, gamma 0.5.
#   e1: s0 (r 0) -> s1 (r 0) -> s2 (r 10)     R = 10, discounted returns 2.5, 5, 10
#   e2: s0 (r 0) -> s1 (r 0)                  R = 0,  discounted returns 0, 0
TASKS = ["t"] * 5
EPISODES = ["e1", "e1", "e1", "e2", "e2"]
ANCHORS = ["s0", "s1", "s2", "s0", "s1"]
REWARDS = [0.0, 0.0, 10.0, 0.0, 0.0]


def test_worked_example_mean_norm():
    adv, a_e, a_s, keys = gigpo_advantages(TASKS, EPISODES, ANCHORS, REWARDS, gamma=0.5, omega=1.0,
                                           mode="mean_norm", return_parts=True)
    assert a_e == pytest.approx([5, 5, 5, -5, -5])
    assert a_s == pytest.approx([1.25, 2.5, 0.0, -1.25, -2.5])  # s2 is a singleton group
    assert adv == pytest.approx([6.25, 7.5, 5.0, -6.25, -7.5])
    assert keys[0] == keys[3] == ("t", "s0") and keys[1] == keys[4]


def test_worked_example_mean_std_norm_and_omega():
    s = 5 / (np.sqrt(50) + 1e-6)  # episode level: (10 - 5) / (unbiased std of [10, 0] + eps)
    adv = gigpo_advantages(TASKS, EPISODES, ANCHORS, REWARDS, gamma=0.5, omega=0.5, mode="mean_std_norm")
    step = 1.25 / (np.sqrt(2 * 1.25**2) + 1e-6)
    assert adv == pytest.approx([s + 0.5 * step, s + 0.5 * step, s, -s - 0.5 * step, -s - 0.5 * step], rel=1e-6)


def test_discounted_returns():
    assert discounted_returns([1.0, 0.0, 2.0], 0.9) == pytest.approx([1 + 0.81 * 2, 0.9 * 2, 2.0])


def test_same_anchor_in_different_tasks_does_not_group():
    adv, _, a_s, keys = gigpo_advantages(["a", "b"], ["e1", "e2"], ["s", "s"], [1.0, 0.0], return_parts=True)
    assert keys[0] != keys[1] and np.all(a_s == 0) and np.all(adv == 0)  # singleton tasks: no signal


def test_repeated_visits_within_a_trajectory_join_the_step_group():
    # one trajectory revisits s0; gamma 1: returns 1, 1, 1 -> all equal -> 0; a second trajectory differs
    _, _, a_s, keys = gigpo_advantages(["t"] * 5, ["e1", "e1", "e1", "e2", "e2"], ["s0", "s0", "s1", "s0", "s2"],
                                       [0.0, 0.0, 1.0, 0.0, 0.0], gamma=1.0, mode="mean_norm", return_parts=True)
    assert keys[0] == keys[1] == keys[3]
    assert a_s[[0, 1, 3]] == pytest.approx([1 / 3, 1 / 3, -2 / 3])
    assert a_s[2] == 0 and a_s[4] == 0


def test_all_equal_rewards_give_zero_everywhere():
    adv = gigpo_advantages(["t"] * 4, [1, 1, 2, 2], ["x", "y", "x", "y"], [0.0] * 4)
    assert np.all(adv == 0)


def test_similarity_variant_groups_near_identical_observations():
    anchors = ["You are in the kitchen. You see a mug 1.", "You are in the kitchen. You see a mug 2.", "Something else entirely"]
    _, _, _, exact = gigpo_advantages(["t"] * 3, [1, 2, 3], anchors, [1.0, 0.0, 0.0], return_parts=True)
    _, _, a_s, sim = gigpo_advantages(["t"] * 3, [1, 2, 3], anchors, [1.0, 0.0, 0.0], similarity_threshold=0.9,
                                      mode="mean_norm", return_parts=True)
    assert exact[0] != exact[1]
    assert sim[0] == sim[1] != sim[2]
    assert a_s == pytest.approx([0.5, -0.5, 0.0])


def test_step_pooling_option_weights_long_episodes():
    tasks, eps, anchors, rewards = ["t"] * 4, [1, 1, 1, 2], ["a", "b", "c", "d"], [0.0, 0.0, 3.0, 0.0]
    traj = gigpo_advantages(tasks, eps, anchors, rewards, mode="mean_norm", omega=0.0)
    pooled = gigpo_advantages(tasks, eps, anchors, rewards, mode="mean_norm", omega=0.0, episode_stats="step")
    assert traj == pytest.approx([1.5, 1.5, 1.5, -1.5])
    assert pooled == pytest.approx([0.75, 0.75, 0.75, -2.25])  # mean over 4 rows is 2.25


def test_bad_inputs():
    with pytest.raises(ValueError, match="one entry per step"):
        gigpo_advantages(["t"], [1, 2], ["a"], [0.0])
    with pytest.raises(ValueError, match="mode"):
        gigpo_advantages(["t", "t"], [1, 2], ["a", "a"], [0.0, 1.0], mode="zscore")


def test_step_group_stats():
    stats = step_group_stats([("t", "a"), ("t", "a"), ("t", "b")])
    assert stats["step_groups"] == 2 and stats["step_groups_multi"] == 1 and stats["step_group_size_max"] == 2
