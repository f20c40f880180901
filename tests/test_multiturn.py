"""Multi-turn agents: action parsing, bounded prompts, one batched engine call per turn, GiGPO training."""

import gymnasium as gym
import pytest
import torch
from conftest import build_tiny

from onelayer.agents.actions import parse_action
from onelayer.agents.engine import HFEngine, SamplingParams
from onelayer.agents.prompts import PromptBuilder
from onelayer.agents.rollout import EpisodeSpec, collect
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
