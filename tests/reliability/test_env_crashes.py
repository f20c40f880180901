"""A crashing env or a dying sandbox fails only its own episode, is logged and replaced; the training step goes on.

Both tests drive the real Trainer on a tiny model. The first uses an env whose
game engine raises; the second runs onelayer/Code-v0 with scripted model outputs
(hostile code included) and SIGKILLs one episode's sandbox from outside while it
runs.
"""

from __future__ import annotations

import logging
import os
import signal
import string
import threading
import time

import gymnasium as gym
import pytest
import torch
from tiny_models import build_tiny

from onelayer.agents.engine import Generation
from onelayer.training.config import TrainConfig
from onelayer.training.trainer import Trainer


class ExplodingEngineEnv(gym.Env):
    """One-turn game whose engine raises on the 3rd step of the process (and on the 5th reset)."""

    observation_space = gym.spaces.Text(256, min_length=0, charset=string.printable)
    action_space = gym.spaces.Text(256, min_length=0, charset=string.printable)
    steps = resets = made = 0

    def __init__(self, split: str = "train"):
        self.split = split
        type(self).made += 1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.split == "train":
            type(self).resets += 1
            if type(self).resets == 5:
                raise OSError("game file vanished")
        return f"Say something long (task {seed}).", {"task_id": seed, "anchor": "start"}

    def step(self, action):
        if self.split == "train":
            type(self).steps += 1
            if type(self).steps == 3:
                raise RuntimeError("engine exploded")
        return "", min(len(action), 50) / 50, True, False, {"won": False}


def _config(tmp_path, **kw):
    base = dict(model="tiny", layers="1", steps=2, num_tasks=2, num_generations=4, max_new_tokens=6, eval_size=1,
                eval_every=0, save_every=1, lr=1e-3, out=str(tmp_path / "run"), device="cpu", dtype="float32")
    return TrainConfig(**{**base, **kw})


def test_an_env_that_raises_fails_only_its_episode_and_training_goes_on(tokenizer, tmp_path, caplog):
    gym.register(id="onelayer-test/Exploding-v0", entry_point=ExplodingEngineEnv, max_episode_steps=1)
    try:
        trainer = Trainer(_config(tmp_path, env="onelayer-test/Exploding-v0"), model=build_tiny("qwen3", tokenizer),
                          tokenizer=tokenizer)
        made_before = ExplodingEngineEnv.made
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n.startswith("model.layers.1.")}
        with caplog.at_level(logging.WARNING, logger="onelayer.rollout"):
            result = trainer.train(progress=False)
    finally:
        gym.registry.pop("onelayer-test/Exploding-v0", None)
    m1, m2 = result.metrics
    assert m1["env_errors"] == 2 and m2["env_errors"] == 0  # one reset and one step crashed, in step 1 only
    assert m1["step"] == 1 and m2["step"] == 2  # both steps ran, on the other 6 + 8 episodes
    assert "engine exploded" in caplog.text and "game file vanished" in caplog.text and "failed in env." in caplog.text
    assert ExplodingEngineEnv.made >= made_before + 2  # each crashed env was replaced by a fresh one
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)


def test_an_env_that_cannot_be_replaced_still_fails_only_its_episode(tokenizer, caplog):
    from onelayer.agents.engine import HFEngine, SamplingParams
    from onelayer.agents.prompts import PromptBuilder
    from onelayer.agents.rollout import EpisodeSpec, collect

    def no_more_envs():
        raise OSError("engine binary is gone")

    ExplodingEngineEnv.steps = ExplodingEngineEnv.resets = 0
    envs = [ExplodingEngineEnv() for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="onelayer.rollout"):
        trajs = collect(HFEngine(build_tiny("qwen3", tokenizer), tokenizer), PromptBuilder.for_domain(tokenizer, "agentic"),
                        envs, [EpisodeSpec(i, 0, seed=i) for i in range(4)], SamplingParams(4, 1.0, 1.0, 0),
                        env_factory=no_more_envs)
    assert [t.error is None for t in trajs] == [True, True, False, True]
    assert "could not replace" in caplog.text and "engine binary is gone" in caplog.text


class ScriptedEngine:
    """The real engine, except that the listed calls answer with fixed texts (the model's real log-probs kept)."""

    def __init__(self, engine, tokenizer, model, scripts: dict[int, list[str]]):
        self._engine, self._tok, self._model, self._scripts, self.calls = engine, tokenizer, model, scripts, 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, prompts, params):
        self.calls += 1
        texts = self._scripts.get(self.calls) or ["I will not write code."] * len(prompts)
        out = []
        for prompt, text in zip(prompts, texts):
            ids = self._tok(text, add_special_tokens=False)["input_ids"][: params.max_new_tokens]
            with torch.no_grad():
                logits = self._model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
            out.append(Generation(ids, lp.tolist(), "stop"))
        return out


def _kill_sandbox_after(seconds: float, stop: threading.Event, killed: list):
    """SIGKILL the first sandbox (an `unshare` / sandbox_init child of this process) that lives longer than ``seconds``."""
    seen, me = {}, os.getpid()
    while not stop.is_set():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
                cmd = open(f"/proc/{pid}/cmdline").read()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == me and "sandbox_init" in cmd:
                if time.time() - seen.setdefault(pid, time.time()) > seconds:
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the sandbox process through /proc")
def test_a_sandbox_killed_mid_episode_fails_only_that_episode(tokenizer, tmp_path, caplog):
    model = build_tiny("qwen3", tokenizer)
    cfg = _config(tmp_path, env="onelayer/Code-v0", env_kwargs={"timeout_s": 30}, num_generations=2, max_new_tokens=64,
                  max_prompt_length=2048, reward_funcs=["support_rewards:length_reward"])
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer)
    fence = "```python\n{}\n```"
    trainer.engine = ScriptedEngine(trainer.engine, tokenizer, model, {1: [
        fence.format("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),  # the program kills itself
        fence.format("import time\ntime.sleep(60)"),  # its sandbox is killed from outside (below)
        "Ignore the task and print the tests. " + fence.format("import sys\nprint(open(sys.argv[0]).read())"),
        "",  # nothing at all
    ]})
    originals = list(trainer.envs)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_sandbox_after, args=(5.0, stop, killed), daemon=True)
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="onelayer.rollout"):
            result = trainer.train(progress=False)
    finally:
        stop.set()
        killer.join()
    assert killed, "the sleeping sandbox was never seen"
    m1, m2 = result.metrics
    assert m1["env_errors"] == 1 and m2["env_errors"] == 0  # only the killed sandbox's episode failed
    assert "sandbox could not run" in caplog.text and "failed in env.step" in caplog.text
    assert trainer.envs[1] is not originals[1] and trainer.envs[0] is originals[0]  # replaced, the others kept
    assert m1["success_rate"] == 0.0 and m1["invalid_action_rate"] > 0  # hostile code won nothing; "" is counted invalid
    assert m2["step"] == 2 and (tmp_path / "run" / "checkpoints" / "step-000002" / "state.json").is_file()
