"""The offline ALFWorld game generator: ALFWorld's format, all six task types, verified, deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onelayer.envs import alfworld_gen
from onelayer.envs.alfworld_data import TASK_TYPES, find_games
from onelayer.envs.alfworld_gen import MANIFEST, generate_games, main, read_signatures
from onelayer.errors import UserError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def games12(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alfgen") / "games"
    generate_games(out, 12, seed=0)
    return out


def test_games_follow_alfworld_format_and_cover_every_task_type(games12):
    import alfworld.info

    domain = Path(alfworld.info.ALFRED_PDDL_PATH).read_text()
    folders = sorted(p.parent for p in games12.rglob("traj_data.json"))
    assert len(folders) == 12
    types = set()
    for folder in folders:
        assert "movable" not in str(folder) and "Sliced" not in str(folder)
        game = json.loads((folder / "game.tw-pddl").read_text())
        traj = json.loads((folder / "traj_data.json").read_text())
        assert game["solvable"] is True
        assert game["pddl_domain"] == domain
        assert "UNKNOWN GOAL" not in game["grammar"] and f"Your task is to: {traj['task_desc']}." in game["grammar"]
        assert "(:domain alfred)" in game["pddl_problem"] and "(:goal" in game["pddl_problem"]
        params = traj["pddl_params"]
        assert set(params) == {"object_target", "parent_target", "toggle_target", "mrecep_target", "object_sliced"}
        assert params["object_target"] and (params["parent_target"] or params["toggle_target"] == "DeskLamp")
        assert traj["generator"]["expert_plan"], "every written game was won by the expert"
        types.add(traj["task_type"])
    assert types == set(TASK_TYPES.values())
    manifest = json.loads((games12 / MANIFEST).read_text())
    assert sorted(g["task_id"] for g in manifest["games"]) == [g.task_id for g in find_games(games12)]


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, games12):
    again = tmp_path / "again"
    generate_games(again, 12, seed=0)
    assert _files(again) == _files(games12)
    other = tmp_path / "other"
    generate_games(other, 6, seed=1)

    def problems(root):
        return {json.loads(p.read_text())["pddl_problem"].split("\n", 1)[1] for p in root.rglob("game.tw-pddl")}

    assert not problems(other) & problems(games12)


def test_a_prefix_of_a_set_is_the_smaller_set(tmp_path, games12):
    small = tmp_path / "small"
    paths = generate_games(small, 4, seed=0)
    big = {p.relative_to(games12).as_posix(): p for p in games12.glob("*/*") if p.is_dir()}
    for p in paths:
        rel = p.relative_to(small).as_posix()
        assert _files(p) == _files(big[rel])


def test_games_failing_verification_are_drawn_again_and_never_written(tmp_path, monkeypatch):
    import onelayer.envs.alfworld_engine as engine

    real = engine.solve_with_expert
    calls = []

    def flaky(game_file, **kw):
        calls.append(Path(game_file).parent.name)
        return None if len(calls) == 1 else real(game_file, **kw)

    monkeypatch.setattr(engine, "solve_with_expert", flaky)
    paths = generate_games(tmp_path / "g", 2, seed=0)
    assert calls[0].endswith("_a0") and paths[0].name.endswith("_a1")
    assert len(list((tmp_path / "g").rglob("game.tw-pddl"))) == 2


def test_exclude_signatures_keeps_sets_disjoint(tmp_path, games12):
    out = tmp_path / "eval"
    generate_games(out, 12, seed=0, exclude_signatures=read_signatures(games12))
    assert not read_signatures(out) & read_signatures(games12)


def test_task_type_filter_and_size_knobs(tmp_path):
    out = tmp_path / "heat"
    generate_games(out, 2, seed=3, task_types="4", min_receptacles=5, max_receptacles=5, min_distractors=3,
                   max_distractors=3)
    for traj_file in out.rglob("traj_data.json"):
        traj = json.loads(traj_file.read_text())
        assert traj["task_type"] == "pick_heat_then_place_in_recep"
        assert len(traj["scene"]["receptacles"]) == 6  # 5 plain + the microwave
        assert "Microwave" in traj["scene"]["receptacles"]


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown ALFWorld task type"):
        generate_games(tmp_path / "x", 2, task_types=["pick_banana"])
    with pytest.raises(UserError, match="n must be"):
        generate_games(tmp_path / "x", 0)
    with pytest.raises(UserError, match="receptacles"):
        generate_games(tmp_path / "x", 1, min_receptacles=4, max_receptacles=3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_games(tmp_path / "busy", 1)
    with pytest.raises(UserError, match="refusing to overwrite"):
        generate_games(tmp_path / "busy", 1, overwrite=True)


def test_overwrite_replaces_a_generated_set(tmp_path):
    out = tmp_path / "g"
    generate_games(out, 1, seed=0)
    generate_games(out, 2, seed=1, overwrite=True)
    assert json.loads((out / MANIFEST).read_text())["seed"] == 1
    assert len(list(out.rglob("game.tw-pddl"))) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"


def test_cli_exclude_keeps_a_held_out_set_disjoint(tmp_path):
    from typer.testing import CliRunner

    from onelayer.cli import app

    train, held = tmp_path / "d" / "train", tmp_path / "d" / "eval"
    args = ["alfworld", "generate", "--n", "4", "--task-types", "1", "--min-receptacles", "2", "--max-receptacles", "2"]
    assert CliRunner().invoke(app, args + ["--out", str(train), "--seed", "0"]).exit_code == 0
    # the same seed without --exclude would repeat the train games; with it, none is shared
    res = CliRunner().invoke(app, args + ["--out", str(held), "--seed", "0", "--exclude", str(train)])
    assert res.exit_code == 0, res.output
    assert not read_signatures(train) & read_signatures(held)
    from onelayer.envs.alfworld_data import resolve_data_path

    assert resolve_data_path(tmp_path / "d", "eval") == held  # a folder with split subfolders plays the split's
    assert resolve_data_path(train, "eval") == train  # a plain folder plays itself for every split
    bad = CliRunner().invoke(app, args + ["--out", str(tmp_path / "x"), "--exclude", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "cannot read the manifest" in bad.output


def test_cli_main(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--n", "2", "--seed", "5", "--quiet"]) == 0
    assert "wrote 2 games" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "cli"), "--n", "2", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_default_train_and_eval_sets_never_share_a_game(tmp_path, monkeypatch):
    from onelayer.envs.alfworld_data import ensure_default_games

    monkeypatch.setenv("ONELAYER_CACHE", str(tmp_path))
    train, evals = ensure_default_games("train"), ensure_default_games("eval")
    assert len(find_games(train)) == alfworld_gen.DEFAULT_SETS["train"]["n"]
    assert len(find_games(evals)) == alfworld_gen.DEFAULT_SETS["eval"]["n"]
    assert not read_signatures(train) & read_signatures(evals)


def test_easy_generated_set_is_cached_apart_held_out_and_played_by_name(tmp_path, monkeypatch):
    from onelayer.benchmarks.suites import env_kwargs_of, get_suite
    from onelayer.envs import alfworld_data
    from onelayer.envs.alfworld_env import ALFWorldEnv

    monkeypatch.setenv("ONELAYER_CACHE", str(tmp_path))
    for split, n in (("train", 4), ("eval", 3), ("eval_ood", 2)):
        monkeypatch.setitem(alfworld_gen.EASY_SETS, split, {**alfworld_gen.EASY_SETS[split], "n": n})
    train = alfworld_data.ensure_default_games("train", "easy")
    evals = alfworld_data.ensure_default_games("eval", "easy")
    assert train != alfworld_data.default_generated_path("train") and train.parent.name == "easy"
    assert not read_signatures(train) & read_signatures(evals)
    manifest = json.loads((evals / alfworld_gen.MANIFEST).read_text())
    assert manifest["size"]["max_receptacles"] == 2 and manifest["seed"] == 21
    assert set(manifest["task_types"]) == {"pick_and_place_simple", "look_at_obj_in_light"}
    monkeypatch.setattr(alfworld_data, "real_data_path", lambda split: tmp_path)  # real games "downloaded"
    env = ALFWorldEnv(split="eval", generated_games="easy")
    assert env.data_path == evals and env.num_tasks == 3
    kw = env_kwargs_of(get_suite("alfworld-gen-easy"))
    assert kw == {"data_path": str(evals), "hide_commands": ["help", "look", "inventory"]}
    assert "help" not in ALFWorldEnv(**kw).reset(seed=0)[1]["admissible_actions"]
    ood = json.loads((Path(env_kwargs_of(get_suite("alfworld-gen-easy-ood"))["data_path"])
                      / alfworld_gen.MANIFEST).read_text())
    assert ood["size"]["max_receptacles"] == 4
    with pytest.raises(UserError, match="unknown generated ALFWorld set 'hard'"):
        ALFWorldEnv(generated_games="hard")
    with pytest.raises(UserError, match="not both"):
        ALFWorldEnv(data_path=train, generated_games="easy")
