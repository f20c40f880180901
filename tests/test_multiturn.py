"""Multi-turn agents: action parsing, bounded prompts, one batched engine call per turn, GiGPO training."""

import json

import gymnasium as gym
import pytest
import torch
from tiny_models import build_tiny

from onelayer.agents.actions import parse_action, parse_choice
from onelayer.agents.engine import HFEngine, SamplingParams
from onelayer.agents.prompts import PromptBuilder
from onelayer.agents.rollout import EpisodeSpec, collect
from onelayer.errors import UserError
from onelayer.training.config import TrainConfig
from onelayer.training.trainer import Trainer


@pytest.mark.parametrize("text,admissible,action,valid", [
    ("<think>the mug is near</think><action>go to cabinet 1</action>", ["go to cabinet 1", "look"], "go to cabinet 1", True),
    ("<action>  Go To   Cabinet 1 </action>", ["go to cabinet 1"], "go to cabinet 1", True),
    ("<action>fly away</action>", ["look"], "fly away", False),
    ("look", ["look"], "look", False),  # right words, wrong format: still invalid
    ("", ["look"], "", False),
    ("<action>7</action>", None, "7", True),
])
def test_parse_action(text, admissible, action, valid):
    parsed = parse_action(text, admissible)
    assert (parsed.action, parsed.valid) == (action, valid)


@pytest.mark.parametrize("text,action,valid", [
    ("2</action>", "go to desk 1", True),
    (" 1. look at it\n", "look", True),  # the number comes first; what follows is ignored
    ("3</action>", "3", False),  # out of range
    ("0", "0", False),
    ("Go to desk 1</action>", "go to desk 1", True),  # an action's text is accepted too
    ("looking around", "looking around", False),
    ("", "", False),
    ("</action>2", "", False),  # nothing before the closing tag
])
def test_parse_choice(text, action, valid):
    parsed = parse_choice(text, ["look", "go to desk 1"])
    assert (parsed.action, parsed.valid) == (action, valid)
    assert not parse_choice("1", None).valid  # no admissible actions: nothing to choose from


def test_choice_format_numbers_the_actions_and_ends_with_the_prefix(tokenizer):
    builder = PromptBuilder.for_domain(tokenizer, "agentic", history_length=1, action_format="choice")
    text = builder.text("now here", history=[("before", "look")], admissible=["look", "go to desk 1"], task="t")
    assert "\n1. look\n2. go to desk 1\n" in text and "number of one admissible action" in text
    assert "action: look" in text  # the history shows the action's text, not its number
    assert builder.render("now here", admissible=["look"]).endswith("<|im_start|>assistant\n<action>")
    assert builder.parse("2", ["look", "go to desk 1"]).action == "go to desk 1"
    actions = [f"go to shelf {k}" for k in range(1, 9)]
    orders = {tuple(builder.shown_actions(actions, f"0/0/{turn}")) for turn in range(6)}
    assert len(orders) > 1 and all(sorted(o) == sorted(actions) for o in orders)  # shuffled per turn, nothing lost
    assert builder.shown_actions(actions, "0/0/1") == builder.shown_actions(actions, "0/0/1")  # reproducible
    assert PromptBuilder.for_domain(tokenizer, "agentic").shown_actions(actions, "0/0/1") == actions  # text: env order
    assert PromptBuilder.for_domain(tokenizer, "agentic").response_prefix == ""
    math = PromptBuilder.for_domain(tokenizer, "math", action_format="choice")  # other domains answer in text
    assert math.response_prefix == "" and "\\boxed" in math.text("1+1?")
    with pytest.raises(UserError, match="unknown action_format"):
        PromptBuilder.for_domain(tokenizer, "agentic", action_format="numbers")


def test_choice_format_trains_and_evaluates_on_held_out_games(tokenizer, tiny_model_dirs, tmp_path):
    from onelayer.envs.alfworld_gen import generate_games, read_signatures

    data = tmp_path / "games"
    generate_games(data / "train", 2, seed=0, task_types="1", min_receptacles=2, max_receptacles=2)
    generate_games(data / "eval", 2, seed=1, task_types="1", min_receptacles=2, max_receptacles=2,
                   exclude_signatures=read_signatures(data / "train"))
    cfg = TrainConfig(model=str(tiny_model_dirs["qwen3"]), env="onelayer/ALFWorld-v0", env_kwargs={"data_path": str(data)},
                      action_format="choice", layers="1", algo="gigpo", steps=1, num_tasks=1, num_generations=2,
                      max_turns=2, max_new_tokens=3, eval_size=2, eval_every=1, out=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    assert trainer.envs[0].unwrapped.data_path == data / "train"
    m = trainer.train(progress=False).metrics[-1]
    assert "eval/success_rate" in m and 0 <= m["invalid_action_rate"] <= 1
    eval_items = json.loads((tmp_path / "run" / "eval.json").read_text())["items"]
    assert {i["details"]["game_file"].split("/eval/")[0] for i in eval_items} == {str(data)}  # held-out games
    with pytest.raises(UserError, match="action_format choice needs an env where the model acts"):
        TrainConfig(env="onelayer/Math-v0", action_format="choice").validate()


class FirstNumberEngine:
    """Always answers "1" (a model with a pure position preference) and records the prompts."""

    def __init__(self, tokenizer):
        self.tokenizer, self.prompts = tokenizer, []

    def generate(self, prompts, params):
        from onelayer.agents.engine import Generation

        self.prompts += prompts
        one = self.tokenizer.encode("1", add_special_tokens=False)
        return [Generation(one, [0.0] * len(one), "stop") for _ in prompts]


def test_choice_collector_parses_against_the_order_each_prompt_showed(tokenizer):
    builder = PromptBuilder.for_domain(tokenizer, "agentic", action_format="choice")
    engine = FirstNumberEngine(tokenizer)
    envs = [gym.make("onelayer/GuessNumber-v0") for _ in range(4)]
    specs = [EpisodeSpec(group=0, sample=k, seed=3) for k in range(4)]
    trajs = collect(engine, builder, envs, specs, SamplingParams(3, 1.0, 1.0, 0), max_turns=3, parse_actions=True)
    first_lines = []
    for prompt in engine.prompts:
        text = tokenizer.decode(prompt)
        first_lines.append(text.split("Admissible actions:\n1. ", 1)[1].split("\n", 1)[0])
    chosen = {s.action for t in trajs for s in t.steps}
    assert chosen <= set(first_lines)  # "1" meant whatever that prompt listed first
    assert len(chosen) > 1  # and that was not the same action everywhere
    assert all(not s.invalid_action for t in trajs for s in t.steps)


def test_prompt_shows_task_bounded_history_and_admissible_actions(tokenizer):
    builder = PromptBuilder.for_domain(tokenizer, "agentic", history_length=2)
    hist = [(f"obs{i}", f"act{i}") for i in range(5)]
    text = builder.text("now here", history=hist, admissible=["look", "go to desk 1"], task="find a mug")
    assert "Your task is to: find a mug" in text and "look, go to desk 1" in text
    assert "obs3" in text and "obs4" in text and "obs2" not in text  # only the last 2 pairs
    assert "[step 4]" in text and "(step 6)" in text
    assert "(step 1): {observation} {task}\n" in builder.text("{observation} {task}")  # observation text is never substituted
    ids = builder.encode("now here", history=hist)
    assert tokenizer.decode(ids).count("<|im_start|>user") == 1


class CountingEngine:
    """Wraps the real HF engine and counts generate calls and their batch sizes."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        return self.engine.generate(prompts, params)

    def sync_weights(self, named_tensors):
        pass


def test_collector_makes_one_engine_call_per_turn(tokenizer):
    engine = CountingEngine(HFEngine(build_tiny("qwen3", tokenizer), tokenizer, max_batch_size=64))
    builder = PromptBuilder.for_domain(tokenizer, "agentic")
    b, g, turns = 3, 4, 5
    envs = [gym.make("onelayer/GuessNumber-v0") for _ in range(b * g)]
    specs = [EpisodeSpec(group=i, sample=k, seed=100 + i) for i in range(b) for k in range(g)]
    trajs = collect(engine, builder, envs, specs, SamplingParams(6, 1.0, 1.0, 0), max_turns=turns,
                    parse_actions=True, invalid_action_penalty=0.1)
    assert len(engine.calls) <= turns and engine.calls[0] == b * g
    assert all(t.length >= 1 for t in trajs)
    assert len({t.task_id for t in trajs if t.group == 0}) == 1  # a group shares its task
    step = trajs[0].steps[0]
    assert step.invalid_action and step.reward == pytest.approx(step.env_reward - 0.1)
    assert step.anchor == trajs[1].steps[0].anchor  # same first observation in a group


def test_long_prompts_truncate_the_episode_instead_of_crashing(tokenizer):
    engine = HFEngine(build_tiny("llama", tokenizer), tokenizer)
    builder = PromptBuilder.for_domain(tokenizer, "agentic")
    trajs = collect(engine, builder, [gym.make("onelayer/GuessNumber-v0")], [EpisodeSpec(0, 0, seed=1)],
                    SamplingParams(4, 1.0, 1.0, 0), max_turns=3, max_prompt_tokens=10, parse_actions=True)
    assert trajs[0].truncated and trajs[0].truncation_reason == "context" and trajs[0].length == 0


@pytest.mark.parametrize("algo", ["gigpo", "grpo"])
def test_multi_turn_training_updates_the_layer_and_logs_step_groups(algo, tokenizer, tiny_model_dirs, tmp_path):
    cfg = TrainConfig(model=str(tiny_model_dirs["qwen3"]), env="onelayer/GuessNumber-v0", layers="1", algo=algo,
                      steps=1, num_tasks=2, num_generations=4, max_new_tokens=6, eval_size=4, lr=1e-3,
                      reward_funcs=["support_rewards:length_reward"], out=str(tmp_path / algo))
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    m = trainer.train(progress=False).metrics[0]
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)
    assert m["invalid_action_rate"] > 0 and m["episode_length"] >= 1
    assert "eval/success_rate" in m
    if algo == "gigpo":
        assert m["step_groups"] >= 2 and 0 <= m["steps_in_multi_groups"] <= 1


class FlakyEngineEnv(gym.Env):
    """A game engine that crashes on odd seeds at the first step (as a buggy engine would)."""

    observation_space = gym.spaces.Text(64)
    action_space = gym.spaces.Text(64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_ = seed
        return "start", {"task_id": seed, "anchor": "start"}

    def step(self, action):
        if self.seed_ % 2:
            raise RuntimeError("engine exploded")
        return "end", 1.0, True, False, {"won": True}


def test_a_crashing_env_fails_only_its_episode_and_is_replaced(tokenizer):
    engine = HFEngine(build_tiny("qwen3", tokenizer), tokenizer)
    builder = PromptBuilder.for_domain(tokenizer, "agentic")
    envs = [FlakyEngineEnv() for _ in range(4)]
    originals = list(envs)
    trajs = collect(engine, builder, envs, [EpisodeSpec(i, 0, seed=i) for i in range(4)], SamplingParams(4, 1.0, 1.0, 0),
                    max_turns=2, env_factory=FlakyEngineEnv)
    assert [t.error is None for t in trajs] == [True, False, True, False]
    assert "engine exploded" in trajs[1].error and trajs[1].truncation_reason == "env_error"
    assert [t.success for t in trajs] == [True, False, True, False]
    assert envs[1] is not originals[1] and envs[0] is originals[0]  # the crashed env was replaced
