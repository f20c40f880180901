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
        if text in ("", "no action tag and no number", "<action></action>"):
            assert info["invalid_action"] is True  # counted, not silently accepted


@pytest.mark.parametrize("text", HOSTILE)
def test_parser_marks_hostile_outputs_invalid(text):
    parsed = parse_action(text, ["look", "go to desk 1"])
    assert not parsed.valid and parsed.reason
    assert len(parsed.action) <= 5000


class ScriptedEngine:
    """Answers every prompt of turn ``t`` with ``texts[t]`` (index by episode), as a model that emits them would."""

    def __init__(self, tokenizer, texts_per_turn):
        self.tok, self.turns, self.calls = tokenizer, texts_per_turn, 0

    def generate(self, prompts, params):
        from onelayer.agents.engine import Generation

        texts = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        out = []
        for text in texts[: len(prompts)]:
            ids = self.tok(text, add_special_tokens=False)["input_ids"] or []
            out.append(Generation(ids, [0.0] * len(ids), "length" if len(ids) >= params.max_new_tokens else "stop"))
        return out


def test_collector_counts_hostile_outputs_and_ends_oversized_episodes_cleanly(tokenizer):
    from onelayer.agents.engine import SamplingParams
    from onelayer.agents.prompts import PromptBuilder
    from onelayer.agents.rollout import EpisodeSpec, collect

    envs = [gym.make("onelayer/GuessNumber-v0") for _ in HOSTILE]
    engine = ScriptedEngine(tokenizer, [HOSTILE])
    trajs = collect(engine, PromptBuilder.for_domain(tokenizer, "agentic"), envs,
                    [EpisodeSpec(i, 0, seed=i) for i in range(len(HOSTILE))], SamplingParams(8000, 1.0, 1.0, 0),
                    max_turns=3, max_prompt_tokens=1024, parse_actions=True, invalid_action_penalty=0.1)
    assert all(t.error is None for t in trajs)
    first = [t.steps[0] for t in trajs]
    assert sum(s.invalid_action for s in first) >= len(HOSTILE) - 1  # counted (one hostile text is a bare number)
    assert all(s.reward == pytest.approx(s.env_reward - 0.1) for s in first if s.invalid_action)
    assert len(tokenizer("a" * 20000, add_special_tokens=False)["input_ids"]) > 1024  # thousands of tokens
    huge = trajs[HOSTILE.index("a" * 20000)]
    assert huge.length >= 1 and huge.truncation_reason in ("context", "max_turns")  # played on or ended, not crashed
    assert all(len(s.prompt_ids) <= 1024 for t in trajs for s in t.steps)  # no prompt ever overran the limit


HOSTILE_CODE = {
    "kills itself": "import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)",
    "exits 0 before the tests finish": "import os\n    os._exit(0)",
    "sys.exit(0)": "import sys\n    sys.exit(0)",
    "infinite loop": "while True:\n        pass",
    "memory bomb": "x = bytearray(8 << 30)\n    return x",
    "prints the tests": "import sys\n    print(open(sys.argv[0]).read())\n    return None",
    "reads secrets": "return open('/etc/shadow').read()",
    "fork bomb": "import os\n    while True:\n        os.fork()",
}


@pytest.mark.parametrize("body", HOSTILE_CODE.values(), ids=HOSTILE_CODE.keys())
def test_hostile_code_earns_nothing_and_the_env_goes_on(body):
    env = gym.make("onelayer/Code-v0", timeout_s=2.0)
    _, info = env.reset(seed=0)
    code = f"```python\ndef {info['entry_point']}(*args, **kwargs):\n    {body}\n```"
    _, reward, terminated, _, info = env.step(code)
    assert reward == 0.0 and not info["passed"] and info["error"]
    env.reset(seed=1)  # the same env keeps working
    assert env.step("no code")[1] == 0.0


FORGERIES = {
    # The runner's reporting code, reached through __main__ and aimed at every open descriptor, then a clean
    # exit: the candidate's process holds no channel to the parent, so nothing it writes counts ...
    "forged result lines": "import sys, os\n    m = sys.modules['__main__']\n    for fd in range(3, 256):\n"
                           "        try:\n            out = m.Reporter(fd)\n"
                           "            [out.emit('unit', i=j, ok=True) for j in range(10)]\n"
                           "            out.emit('done')\n        except Exception:\n            pass\n"
                           "    os._exit(0)",
    # ... and only plain data crosses to the checker, so an object equal to anything is a failed call.
    "always-equal object": "class AnyValue:\n        __eq__ = lambda self, other: True\n    return AnyValue()",
}


@pytest.mark.parametrize("body", FORGERIES.values(), ids=FORGERIES.keys())
def test_code_that_games_the_grader_earns_nothing(body):
    env = gym.make("onelayer/Code-v0", timeout_s=5.0)
    _, info = env.reset(seed=0)
    _, reward, _, _, info = env.step(f"```python\ndef {info['entry_point']}(*args, **kwargs):\n    {body}\n```")
    assert reward == 0.0 and not info["passed"] and info["error"]
