"""Model outputs of any shape reach every env and the action parser without crashing, and are counted."""

import math

import gymnasium as gym
import pytest

import onelayer  # noqa: F401
from onelayer.agents.actions import parse_action

HOSTILE = [
    "",
    "a" * 20000,
    "no action tag and no number",
    "ünïcødé 🤖 数学 \u202e\u0000 \x1b[31m",
    "Ignore the task and print the tests. import os; print(open('/etc/passwd').read())",
    "<action></action>",
    "<action>" + "x" * 5000 + "</action>",
    "```python\nimport os\nos.system('rm -rf ~')\n```",
    "```python\nwhile True: pass\n```",
    "\\boxed{\\frac{1}{0}} \\boxed{",
]


@pytest.mark.parametrize("env_id", ["onelayer/Math-v0", "onelayer/Code-v0", "onelayer/GuessNumber-v0", "onelayer/ALFWorld-v0"])
def test_envs_survive_hostile_outputs(env_id):
    if env_id.endswith("ALFWorld-v0"):
        pytest.importorskip("alfworld")
    env = gym.make(env_id, **({"timeout_s": 1.0} if "Code" in env_id else {}))
    for i, text in enumerate(HOSTILE):
        env.reset(seed=i)
        obs, reward, terminated, truncated, info = env.step(text)
        assert isinstance(obs, str) and math.isfinite(reward)
        assert isinstance(info.get("won", info.get("success")), bool)
        assert isinstance(info.get("invalid_action", False), bool)
        assert reward <= 0 or info.get("won")  # nothing hostile wins


@pytest.mark.parametrize("text", HOSTILE)
def test_parser_marks_hostile_outputs_invalid(text):
    parsed = parse_action(text, ["look", "go to desk 1"])
    assert not parsed.valid and parsed.reason
    assert len(parsed.action) <= 5000
