"""The env contract checker passes onelayer's envs and tells an author what to fix in a broken one."""

import random
import string

import gymnasium as gym
import pytest
from gymnasium import spaces

import onelayer  # noqa: F401
from onelayer.envs.checker import check, format_report, load_env
from onelayer.errors import UserError


@pytest.mark.parametrize("env_id", ["onelayer/Math-v0", "onelayer/GuessNumber-v0"])
def test_builtin_envs_pass_every_check(env_id):
    results = check(lambda: gym.make(env_id))
    assert all(r.ok for r in results), format_report(env_id, results)


class UnseededEnv(gym.Env):
    """Breaks the contract: picks its task from global randomness, returns an unhashable anchor."""

    def __init__(self):
        self.observation_space = spaces.Text(max_length=64, charset=string.printable)
        self.action_space = spaces.Text(max_length=64, charset=string.printable)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n = random.randint(0, 10**9)
        return f"task {self.n}", {"task_id": self.n, "anchor": ["not", "hashable"]}

    def step(self, action):
        return "done", 1.0, True, False, {"won": "yes"}


def test_broken_env_gets_a_fix_for_each_violation():
    results = {r.name: r for r in check(lambda: gym.wrappers.TimeLimit(UnseededEnv(), 5))}
    assert not results["task_id stable under a seed"].ok
    assert "derive the task from the seed" in results["task_id stable under a seed"].message
    assert not results["anchor hashable"].ok
    assert not results["won/success in step info"].ok
    assert not results["deterministic under a seed"].ok


def test_load_env_errors_name_the_problem():
    with pytest.raises(UserError, match="unknown env"):
        load_env("NoSuchEnv")
    with pytest.raises(UserError, match="cannot import module"):
        load_env("no_such_module_xyz:Env")


def test_make_vec_runs_math_envs():
    vec = gym.make_vec("onelayer/Math-v0", num_envs=3, vectorization_mode="sync")
    obs, info = vec.reset(seed=[1, 2, 3])
    assert len(obs) == 3 and all(o.startswith("What is") for o in obs)
    obs, rewards, terminated, truncated, info = vec.step(["\\boxed{1}"] * 3)
    assert list(terminated) == [True] * 3 and len(rewards) == 3
    vec.close()


class OutOfSpaceEnv(gym.Env):
    """Returns observations with characters its Text space does not admit."""

    observation_space = spaces.Text(max_length=16, charset="abc")
    action_space = spaces.Text(max_length=16, charset="abc")

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "xyz!", {"task_id": 0, "anchor": "xyz!"}

    def step(self, action):
        return "xyz!", 0.0, True, False, {"won": False, "invalid_action": False}


def test_observations_outside_the_space_fail_gymnasium_check():
    results = {r.name: r for r in check(lambda: gym.wrappers.TimeLimit(OutOfSpaceEnv(), 3))}
    assert not results["gymnasium check_env"].ok
    assert "observation" in results["gymnasium check_env"].message


@pytest.mark.parametrize("env_id,kwargs", [("onelayer/Code-v0", {}), ("onelayer/ALFWorld-v0", {})])
def test_code_and_alfworld_envs_pass_every_check(env_id, kwargs):
    results = check(lambda: gym.make(env_id, **kwargs), max_steps=60)
    assert all(r.ok for r in results), format_report(env_id, results)


@pytest.mark.parametrize("env_id,action", [("onelayer/Code-v0", "```python\ndef f():\n    return 1\n```"),
                                           ("onelayer/ALFWorld-v0", "look"), ("onelayer/GuessNumber-v0", "3")])
def test_make_vec_runs_every_env(env_id, action):
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode="sync")
    obs, info = vec.reset(seed=[5, 6])
    assert len(obs) == 2 and all(isinstance(o, str) and o for o in obs)
    obs, rewards, terminated, truncated, info = vec.step([action, action])
    assert len(rewards) == 2 and all(isinstance(o, str) for o in obs)
    vec.close()
