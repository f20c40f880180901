"""onelayer/ALFWorld-v0 on the real engine: Gymnasium contract, expert and random play, seeds, errors, workers."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs import alfworld_data, alfworld_gen
from onelayer.envs.alfworld_data import TASK_TYPES
from onelayer.envs.alfworld_env import ALFWorldEnv
from onelayer.envs.alfworld_gen import generate_games
from onelayer.errors import UserError


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> Path:
    """12 generated games, two of each task type."""
    out = tmp_path_factory.mktemp("alfenv") / "games"
    generate_games(out, 12, seed=0)
    return out


def _copy_game(src_games: Path, dst: Path, index: int = 0) -> Path:
    folder = sorted(p.parent for p in src_games.rglob("game.tw-pddl"))[index]
    shutil.copytree(folder, dst)
    return dst


def test_check_env_passes(games):
    from gymnasium.utils.env_checker import check_env

    env = gym.make("onelayer/ALFWorld-v0", data_path=str(games))
    check_env(env.unwrapped, skip_render_check=True)
    from onelayer.envs.domain import domain_spec

    spec = domain_spec("onelayer/ALFWorld-v0")  # what the harness reads from the env's metadata
    assert (spec.name, spec.actions, spec.metric, spec.invalid_action_penalty) == ("agentic", True, "success_rate", 0.1)
    assert env.spec.max_episode_steps == 50 and env.unwrapped.num_tasks == 12


@pytest.mark.parametrize("expert", ["planner", "handcoded"])
def test_expert_wins_every_game_of_every_task_type_through_the_env(games, expert):
    random.seed(0)  # ALFWorld's hand-coded expert breaks ties with the global `random`
    env = gym.make("onelayer/ALFWorld-v0", data_path=str(games), expert=expert)
    space = env.unwrapped.observation_space
    won_by_type = Counter()
    for index in range(env.unwrapped.num_tasks):
        obs, info = env.reset(options={"task_id": index})
        assert space.contains(obs) and not info["won"] and info["task"] in obs
        terminated = truncated = False
        rewards = []
        while not (terminated or truncated):
            assert info["expert_plan"][0] in info["admissible_actions"]
            obs, reward, terminated, truncated, info = env.step(info["expert_plan"][0])
            assert space.contains(obs) and not info["invalid_action"]
            rewards.append(reward)
        assert terminated and info["won"] and info["success"], f"expert did not win {info['task_id']}"
        assert rewards[-1] == 10.0 and sum(rewards) == 10.0
        won_by_type[info["task_type"]] += 1
    assert set(won_by_type) == set(TASK_TYPES.values())
    print(f"\n{expert} expert success: 12/12 = 1.00 ({dict(won_by_type)})")


def test_random_agent_wins_sometimes_but_not_always(games):
    env = gym.make("onelayer/ALFWorld-v0", data_path=str(games))
    rng = random.Random(0)
    wins, total = Counter(), Counter()
    for episode in range(48):
        _, info = env.reset(options={"task_id": episode % 12})
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(rng.choice(info["admissible_actions"]))
            assert env.unwrapped.observation_space.contains(obs), f"character outside the charset in {obs!r}"
            done = terminated or truncated
        wins[info["task_type"]] += info["won"]
        total[info["task_type"]] += 1
    rate = sum(wins.values()) / sum(total.values())
    print(f"\nrandom-agent success within 50 steps: {rate:.3f} over {sum(total.values())} episodes "
          f"({ {t: f'{wins[t]}/{total[t]}' for t in sorted(total)} }); expert: 1.000")
    assert 0.0 < rate < 1.0


def test_equal_seeds_give_the_same_game_and_equal_actions_the_same_episode(games):
    def play(seed, actions):
        env = ALFWorldEnv(data_path=games)
        obs, info = env.reset(seed=seed)
        trace = [(obs, info["task_id"], info["admissible_actions"], info["state_anchor"])]
        for a in actions:
            obs, reward, terminated, truncated, info = env.step(a)
            trace.append((obs, reward, terminated, info["admissible_actions"], info["state_anchor"]))
        return trace

    env = ALFWorldEnv(data_path=games)
    _, info = env.reset(seed=123)
    rng = random.Random(4)
    actions, admissible = [], info["admissible_actions"]
    for _ in range(15):
        actions.append(rng.choice(admissible))
        _, _, terminated, _, info = env.step(actions[-1])
        admissible = info["admissible_actions"]
        if terminated:
            break
    assert play(123, actions) == play(123, actions)
    task_ids = {ALFWorldEnv(data_path=games).reset(seed=s)[1]["task_id"] for s in range(40)}
    assert len(task_ids) > 6, "different seeds spread over the games"


def test_task_id_option_accepts_the_folder_or_the_index(games):
    env = ALFWorldEnv(data_path=games)
    obs, info = env.reset(options={"task_id": 3})
    obs2, info2 = env.reset(options={"task_id": info["task_id"]})
    assert obs == obs2 and info2["task_id"] == env.task_id_of(3)
    assert (games / info["task_id"] / "game.tw-pddl").is_file()
    with pytest.raises(UserError, match="out of range"):
        env.reset(options={"task_id": 12})
    with pytest.raises(UserError, match="unknown ALFWorld task_id"):
        env.reset(options={"task_id": "no/such/game"})


def test_invalid_action_goes_to_the_engine_and_is_flagged(games):
    env = ALFWorldEnv(data_path=games)
    _, info = env.reset(options={"task_id": 0})
    before = info["state_anchor"]
    obs, reward, terminated, truncated, info = env.step("dance with the fridge")
    assert obs == "Nothing happens." and info["invalid_action"] and reward == 0.0
    assert not terminated and not truncated and info["steps"] == 1 and info["state_anchor"] == before
    obs, _, _, _, info = env.step(f"  {info['admissible_actions'][0]}  ")
    assert not info["invalid_action"] and obs != "Nothing happens."


def test_hide_commands_leaves_them_out_of_the_list_and_flags_them_as_invalid(games):
    plain = ALFWorldEnv(data_path=games)
    _, info = plain.reset(options={"task_id": 0})
    assert {"help", "look", "inventory"} <= set(info["admissible_actions"])
    for hide in (["help", "look", "inventory"], " help, look ,inventory"):
        env = ALFWorldEnv(data_path=games, hide_commands=hide)
        _, hidden = env.reset(options={"task_id": 0})
        assert hidden["admissible_actions"] == [a for a in info["admissible_actions"]
                                                if a not in ("help", "look", "inventory")]
    obs, _, _, _, step_info = env.step("look")  # still reaches the engine, counted invalid
    assert step_info["invalid_action"] and obs != "Nothing happens."
    assert "inventory" not in step_info["admissible_actions"]
    obs, _, _, _, step_info = env.step(step_info["admissible_actions"][0])
    assert not step_info["invalid_action"]
    env = gym.make("onelayer/ALFWorld-v0", data_path=str(games), hide_commands=["help"])
    assert "help" not in env.reset(seed=0)[1]["admissible_actions"]
    with pytest.raises(UserError, match="hide_commands"):
        ALFWorldEnv(data_path=games, hide_commands=5)


def test_anchors_follow_the_observation_and_the_engine_state(games):
    env = ALFWorldEnv(data_path=games)
    obs, info = env.reset(options={"task_id": 0})
    assert info["anchor"] == obs
    goes = [a for a in info["admissible_actions"] if a.startswith("go to ")]
    _, _, _, _, first = env.step(goes[0])
    env.step(goes[1])
    obs, _, _, _, back = env.step(goes[0])
    assert back["anchor"] == obs == first["anchor"]
    assert back["state_anchor"] == first["state_anchor"], "walking back restores the same engine state"
    assert first["state_anchor"] != info["state_anchor"]
    assert all(isinstance(f, str) for f in env.facts()) and any(f.startswith("atlocation") for f in env.facts())


def test_step_limit_and_configurable_reward(games):
    env = ALFWorldEnv(data_path=games, max_steps=3)
    env.reset(options={"task_id": 0})
    results = [env.step("look") for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True] and not any(r[2] for r in results)
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look")
    env = ALFWorldEnv(data_path=games, success_reward=1.0, expert="planner")
    _, info = env.reset(options={"task_id": 0})
    reward = 0.0
    for _ in range(50):
        _, reward, terminated, _, info = env.step(info["expert_plan"][0])
        if terminated:
            break
    assert reward == 1.0


def test_task_type_filter(games):
    env = ALFWorldEnv(data_path=games, task_types=[4, "look_at_obj_in_light"])
    assert env.num_tasks == 4
    assert {g.task_type for g in env.games} == {"pick_heat_then_place_in_recep", "look_at_obj_in_light"}
    with pytest.raises(UserError, match="unknown ALFWorld task type"):
        ALFWorldEnv(data_path=games, task_types=["juggle"])


def test_broken_inputs_are_user_errors(games, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ALFWorldEnv(data_path=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no playable ALFWorld game"):
        ALFWorldEnv(data_path=tmp_path / "empty")
    with pytest.raises(UserError, match="unknown ALFWorld split"):
        ALFWorldEnv(split="test")

    bad_json = _copy_game(games, tmp_path / "badjson" / "g0")
    (bad_json / "game.tw-pddl").write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        ALFWorldEnv(data_path=tmp_path / "badjson")

    no_problem = _copy_game(games, tmp_path / "noproblem" / "g0")
    data = json.loads((no_problem / "game.tw-pddl").read_text())
    del data["pddl_problem"]
    (no_problem / "game.tw-pddl").write_text(json.dumps(data))
    with pytest.raises(UserError, match="missing pddl_problem"):
        ALFWorldEnv(data_path=tmp_path / "noproblem")

    bad_pddl = _copy_game(games, tmp_path / "badpddl" / "g0")
    data = json.loads((bad_pddl / "game.tw-pddl").read_text())
    data["pddl_problem"] = data["pddl_problem"].replace("(:init", "(:init (atLocation agent1 nowhere)")
    (bad_pddl / "game.tw-pddl").write_text(json.dumps(data))
    env = ALFWorldEnv(data_path=tmp_path / "badpddl")
    with pytest.raises(UserError, match="cannot load"):
        env.reset(seed=0)

    bad_traj = _copy_game(games, tmp_path / "badtraj" / "g0")
    (bad_traj / "traj_data.json").write_text(json.dumps({"scene": {}}))
    with pytest.raises(UserError, match="no task_type"):
        ALFWorldEnv(data_path=tmp_path / "badtraj")


def test_loader_skips_what_alfworld_skips(games, tmp_path):
    root = tmp_path / "data"
    _copy_game(games, root / "kept" / "trial")
    _copy_game(games, root / "pick_and_place_with_movable_recep-x" / "trial", 1)
    _copy_game(games, root / "pick_heat-AppleSliced-x" / "trial", 2)
    unsolvable = _copy_game(games, root / "unsolvable" / "trial", 3)
    data = json.loads((unsolvable / "game.tw-pddl").read_text())
    data["solvable"] = False
    (unsolvable / "game.tw-pddl").write_text(json.dumps(data))
    (root / "no_game" / "trial").mkdir(parents=True)
    shutil.copy(unsolvable / "traj_data.json", root / "no_game" / "trial")
    assert [g.task_id for g in ALFWorldEnv(data_path=root).games] == ["kept/trial"]


def test_real_alfworld_layout_is_used_when_downloaded(games, tmp_path, monkeypatch):
    real = tmp_path / "alfworld_data"
    _copy_game(games, real / "json_2.1.1" / "valid_seen" / "look_at_obj_in_light-X-None-DeskLamp-1" / "trial_T1", 1)
    monkeypatch.setenv("ALFWORLD_DATA", str(real))
    env = gym.make("onelayer/ALFWorld-v0", split="eval")
    assert env.unwrapped.data_path == real / "json_2.1.1" / "valid_seen"
    _, info = env.reset(seed=0)
    assert info["task_id"] == "look_at_obj_in_light-X-None-DeskLamp-1/trial_T1"


def test_default_generated_splits_are_cached_and_disjoint(tmp_path, monkeypatch):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "no_alfworld_here"))
    monkeypatch.setenv("ONELAYER_CACHE", str(tmp_path / "cache"))
    for split, recipe in {"train": dict(n=6, seed=0), "eval": dict(n=6, seed=1, exclude_splits=("train",)),
                          "eval_ood": dict(n=2, seed=2, min_receptacles=5, max_receptacles=5)}.items():
        monkeypatch.setitem(alfworld_gen.DEFAULT_SETS, split, recipe)
    train = ALFWorldEnv()
    evals = ALFWorldEnv(split="eval")
    assert train.data_path == tmp_path / "cache" / "alfworld" / alfworld_gen.GENERATOR_VERSION / "train"
    assert train.num_tasks == 6 and evals.num_tasks == 6
    assert not alfworld_gen.read_signatures(train.data_path) & alfworld_gen.read_signatures(evals.data_path)
    stamp = (train.data_path / alfworld_gen.MANIFEST).stat().st_mtime_ns
    assert ALFWorldEnv().num_tasks == 6
    assert (train.data_path / alfworld_gen.MANIFEST).stat().st_mtime_ns == stamp, "generated once, then cached"
    assert not [p for p in train.data_path.parent.iterdir() if p.name.startswith(".")]
    assert alfworld_data.resolve_data_path(None, "eval_ood").name == "eval_ood"


def test_vector_env_matches_single_envs(games):
    from onelayer.envs.alfworld_vec import ALFWorldVecEnv

    seeds = [0, 0, 1, 2]
    singles = [ALFWorldEnv(data_path=games) for _ in seeds]
    expected = [env.reset(seed=s) for env, s in zip(singles, seeds)]
    with ALFWorldVecEnv(num_envs=4, num_workers=2, env_kwargs={"data_path": str(games)}) as vec:
        obs, infos = vec.reset(seeds=seeds)
        assert obs == [e[0] for e in expected] and [i["task_id"] for i in infos] == [e[1]["task_id"] for e in expected]
        actions = [info["admissible_actions"][0] for info in infos]
        out = vec.step(actions)
        for k, (env, action) in enumerate(zip(singles, actions)):
            o, r, term, trunc, info = env.step(action)
            assert (out[0][k], out[1][k], out[2][k], out[3][k]) == (o, r, term, trunc)
            assert out[4][k]["state_anchor"] == info["state_anchor"]
        obs, rewards, *_ = vec.step(["look"], indices=[2])
        assert len(obs) == 1 and rewards == [0.0]
        with pytest.raises(UserError, match="out of range"):
            vec.step(["look"], indices=[9])


def test_memoized_parsing_leaves_the_engine_output_unchanged(games):
    script = (
        "import hashlib, random, sys\n"
        "from onelayer.envs.alfworld_env import ALFWorldEnv\n"
        "env = ALFWorldEnv(data_path=sys.argv[1]); rng = random.Random(0); out = []\n"
        "for t in range(env.num_tasks):\n"
        "    obs, info = env.reset(options={'task_id': t}); out += [obs, *info['admissible_actions']]\n"
        "    for _ in range(12):\n"
        "        obs, r, term, trunc, info = env.step(rng.choice(info['admissible_actions']))\n"
        "        out += [obs, str(r), info['state_anchor'], *info['admissible_actions']]\n"
        "        if term: break\n"
        "print(hashlib.sha1('|'.join(out).encode()).hexdigest())\n"
    )

    def run(memo: str) -> str:
        import os

        env = dict(os.environ, ONELAYER_TEXTWORLD_MEMO=memo)
        res = subprocess.run([sys.executable, "-c", script, str(games)], capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    assert run("0") == run("1")


def test_playing_a_game_leaves_the_callers_command_line_alone(games, monkeypatch):
    argv = ["onelayer", "sweep", "--out", "x"]
    monkeypatch.setattr(sys, "argv", list(argv))
    env = ALFWorldEnv(data_path=str(games), expert="planner")  # the planner runs fast-downward at every step
    for index in (0, 1):
        _, info = env.reset(options={"task_id": index})
        env.step(info["admissible_actions"][0])
    assert sys.argv == argv
