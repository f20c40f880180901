"""Model outputs of any shape reach every env and the action parser without crashing, earn exactly what a wrong
answer earns, are counted as invalid where they hold no action, and leave the env working."""

import random

import gymnasium as gym
import pytest

import onelayer  # noqa: F401
from onelayer.agents.actions import parse_action
from onelayer.envs.code_data import load_problems

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


# Texts that hold no answer at all: every env must count them as invalid actions, not silently accept them.
NO_ANSWER = ("", "no action tag and no number", "<action></action>")
HUMANEVAL = {p.task_id: p for p in load_problems("humaneval")}


def _right_answer(env_id: str, info: dict) -> str:
    """The reply that solves the task ``info`` (a step's info) is about."""
    if env_id == "onelayer/Math-v0":
        return f"The answer is \\boxed{{{info['gold']}}}."
    p = HUMANEVAL[info["task_id"]]
    return f"```python\n{p.prompt}{p.canonical_solution}\n```"


@pytest.mark.parametrize("env_id,kwargs", [("onelayer/Math-v0", {}),
                                           ("onelayer/Code-v0", {"timeout_s": 1.0, "reward": "fraction"})])
def test_hostile_answers_score_exactly_zero_and_a_right_answer_still_scores_one(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    for i, text in enumerate(HOSTILE):
        env.reset(seed=i)
        obs, reward, terminated, truncated, info = env.step(text)
        assert isinstance(obs, str) and terminated  # one answer per episode
        assert reward == 0.0 and info["won"] is False, (text[:40], info["task_id"], reward)  # nothing hostile wins
        assert isinstance(info["invalid_action"], bool)
        if text in NO_ANSWER:
            assert info["invalid_action"] is True  # counted, not silently accepted
        env.reset(seed=i)  # the same env, the same task: it still grades a right answer as right
        _, reward, _, _, info = env.step(_right_answer(env_id, info))
        assert reward == 1.0 and info["won"] is True, (info["task_id"], info.get("reason", info.get("error")))


def test_hostile_guesses_earn_nothing_and_the_game_goes_on_to_a_win():
    env = gym.make("onelayer/GuessNumber-v0")
    for text in HOSTILE:
        start, _ = env.reset(options={"task_id": 4})  # the secret is 5, a number no hostile text guesses
        obs, reward, terminated, truncated, info = env.step(text)
        assert reward == 0.0 and info["won"] is False and not terminated and not truncated, text[:40]
        # Only "\boxed{\frac{1}{0}}" holds a guess in 1..8 (a wrong one: 1); the rest are invalid and unplayed.
        valid = text.startswith("\\boxed")
        assert info["invalid_action"] is not valid, text[:40]
        assert obs == (start + "\nGuess 1: higher." if valid else start), text[:40]
        _, reward, terminated, _, info = env.step("5")  # the game goes on, and the secret still wins
        assert reward == 1.0 and terminated and info["won"] is True


def test_hostile_commands_leave_the_alfworld_game_as_it_was_and_the_expert_still_wins():
    pytest.importorskip("alfworld")
    random.seed(0)  # ALFWorld's hand-coded expert breaks ties with the global `random`
    env = gym.make("onelayer/ALFWorld-v0", expert="handcoded")
    _, start = env.reset(seed=0)
    for text in HOSTILE:
        obs, reward, terminated, truncated, info = env.step(text)
        assert isinstance(obs, str) and not terminated and not truncated
        assert reward == 0.0 and info["won"] is False and info["invalid_action"] is True, text[:40]
        assert info["state_anchor"] == start["state_anchor"], text[:40]  # the world did not change
    rewards = []
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(info["expert_plan"][0])
        rewards.append(reward)
    assert terminated and info["won"] is True and rewards[-1] == 10.0 and sum(rewards) == 10.0


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
    # Counted: none has <action> tags. The env still hears each text and none wins ("\boxed{\frac{1}{0}}" is a
    # guess of 1, wrong for its seed), so each step's reward is exactly the penalty.
    assert all(s.invalid_action for s in first)
    assert all(s.env_reward == 0.0 for s in first)
    assert [s.reward for s in first] == [-0.1] * len(HOSTILE)
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
    env = gym.make("onelayer/Code-v0", timeout_s=2.0, reward="fraction")
    _, info = env.reset(seed=0)
    code = f"```python\ndef {info['entry_point']}(*args, **kwargs):\n    {body}\n```"
    _, reward, terminated, _, info = env.step(code)
    assert reward == 0.0 and info["won"] is False and not info["passed"] and info["error"]
    _, info = env.reset(seed=1)  # the same env keeps working: a right answer still earns full reward
    _, reward, _, _, info = env.step(_right_answer("onelayer/Code-v0", info))
    assert reward == 1.0 and info["won"] is True, info["error"]


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
    env = gym.make("onelayer/Code-v0", timeout_s=5.0, reward="fraction")
    _, info = env.reset(seed=0)
    _, reward, _, _, info = env.step(f"```python\ndef {info['entry_point']}(*args, **kwargs):\n    {body}\n```")
    assert reward == 0.0 and info["won"] is False and not info["passed"] and info["error"]
