"""Finding ALFWorld games on disk: task types, the game list of a folder, and the splits.

A game is a folder holding ``traj_data.json`` and ``game.tw-pddl``. The walk
follows ALFWorld's own loader (``AlfredTWEnv.collect_game_files``): folders
whose path (below the data folder) contains ``movable`` or ``Sliced`` are skipped, ``task_type`` in
``traj_data.json`` filters by task type, and only games whose
``game.tw-pddl`` says ``"solvable": true`` are played. A game's ``task_id``
is its folder path relative to the data folder, so it is stable across
machines and file-system orders.

Splits, when no ``data_path`` is given: with real ALFWorld data under
``$ALFWORLD_DATA/json_2.1.1`` (``alfworld-download``; ``$ALFWORLD_DATA``
defaults to ``~/.cache/alfworld``), ``train`` / ``eval`` /
``eval_ood`` are its ``train`` / ``valid_seen`` / ``valid_unseen`` folders, as
in ALFWorld's ``base_config.yaml``. Without it, a default set of small games
from ``onelayer.envs.alfworld_gen`` is generated once and cached (see
``default_generated_path``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from onelayer.errors import UserError
from onelayer.io import cache_root

TASK_TYPES: dict[int, str] = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
SPLITS = ("train", "eval", "eval_ood")
# ALFWorld's base_config.yaml: data_path / eval_id_data_path / eval_ood_data_path.
REAL_SPLIT_DIRS = {"train": "train", "eval": "valid_seen", "eval_ood": "valid_unseen"}
REAL_DATA_SUBDIR = "json_2.1.1"
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
_TASK_RE = re.compile(r"Your task is to: (.*?)\.?\"")


@dataclass(frozen=True)
class GameRef:
    """One playable game: its ``task_id`` (folder relative to the data path), files, type and task sentence."""

    task_id: str
    game_file: Path
    task_type: str
    task: str


def resolve_task_types(task_types: Iterable[int | str] | str | int | None) -> list[str]:
    """Task type names from ids (1-6), names, or a comma-separated string of either; None means all six."""
    if task_types is None:
        return list(TASK_TYPES.values())
    if isinstance(task_types, (str, int)):
        task_types = [t for t in str(task_types).split(",") if t.strip()]
    names = []
    for t in task_types:
        key = str(t).strip()
        if key.isdigit() and int(key) in TASK_TYPES:
            name = TASK_TYPES[int(key)]
        elif key in TASK_TYPES.values():
            name = key
        else:
            known = ", ".join(f"{i} {n}" for i, n in TASK_TYPES.items())
            raise UserError(f"unknown ALFWorld task type {t!r}: use an id or a name among {known}")
        if name not in names:
            names.append(name)
    if not names:
        raise UserError("task_types is empty: give at least one ALFWorld task type (ids 1-6 or names)")
    return names


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"malformed {what} {path}: invalid JSON ({e}); regenerate the game or remove its folder") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"malformed {what} {path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_game_file(path: str | Path) -> dict:
    """The JSON of a ``game.tw-pddl`` file, checked for the keys the engine needs."""
    path = Path(path)
    data = _read_json(path, "ALFWorld game file")
    missing = [k for k in ("pddl_domain", "grammar", "pddl_problem") if not isinstance(data.get(k), str)]
    if missing:
        raise UserError(f"malformed ALFWorld game file {path}: missing {', '.join(missing)} (a game.tw-pddl needs "
                        f"pddl_domain, grammar, pddl_problem and solvable); regenerate it or remove its folder")
    return data


def task_sentence(grammar: str) -> str:
    """The task sentence written into a game's grammar ("put a mug in coffeemachine"), or "" if none."""
    m = _TASK_RE.search(grammar)
    return m.group(1) if m else ""


_LIST_CACHE: dict[tuple[str, float], list[GameRef]] = {}


def find_games(data_path: str | Path, task_types: Iterable[int | str] | str | None = None) -> list[GameRef]:
    """Every playable game under ``data_path``, sorted by ``task_id`` (ALFWorld's loader rules, see module doc).

    Raises UserError when the folder does not exist, holds no playable game of
    the asked task types, or holds a malformed game file.
    """
    root = Path(data_path).expanduser()
    if not root.is_dir():
        raise UserError(f"ALFWorld data path {str(root)!r} does not exist or is not a folder: pass a folder of games "
                        f"(folders with {TRAJ_FILE} + {GAME_FILE}), e.g. from `onelayer alfworld generate --out DIR`")
    wanted = resolve_task_types(task_types)
    games = [g for g in _all_games(root) if g.task_type in wanted]
    if not games:
        raise UserError(f"no playable ALFWorld game of type {', '.join(wanted)} under {root}: expected folders with "
                        f"{TRAJ_FILE} + {GAME_FILE} (\"solvable\": true); generate some with "
                        f"`onelayer alfworld generate --out DIR`")
    return games


def _all_games(root: Path) -> list[GameRef]:
    # Cached per process: real ALFWorld has thousands of ~100 kB game files, and
    # evaluation builds many envs on the same folder.
    key = (str(root.resolve()), root.stat().st_mtime)
    if key in _LIST_CACHE:
        return _LIST_CACHE[key]
    games = []
    for dirpath, _dirnames, filenames in os.walk(root):
        if TRAJ_FILE not in filenames:
            continue
        folder = Path(dirpath)
        rel = folder.relative_to(root).as_posix()
        if "movable" in rel or "Sliced" in rel:  # ALFWorld tests the whole path; the part below root is enough
            continue
        traj = _read_json(folder / TRAJ_FILE, "ALFWorld trajectory file")
        if not isinstance(traj.get("task_type"), str):
            raise UserError(f"malformed {folder / TRAJ_FILE}: no task_type string (one of {', '.join(TASK_TYPES.values())})")
        if not (folder / GAME_FILE).is_file():
            continue  # ALFWorld skips a trajectory without a game file too
        game = read_game_file(folder / GAME_FILE)
        if game.get("solvable") is not True:
            continue
        games.append(GameRef(rel, folder / GAME_FILE, traj["task_type"], task_sentence(game["grammar"])))
    games.sort(key=lambda g: g.task_id)
    _LIST_CACHE[key] = games
    return games


def real_data_path(split: str) -> Path | None:
    """The real ALFWorld folder of ``split``, or None if it is not there.

    Looked for under ``$ALFWORLD_DATA/json_2.1.1`` (``$ALFWORLD_DATA`` defaults
    to ``~/.cache/alfworld``, where ``alfworld-download`` puts it).
    """
    root = os.environ.get("ALFWORLD_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "alfworld")
    path = Path(root).expanduser() / REAL_DATA_SUBDIR / REAL_SPLIT_DIRS[split]
    return path if path.is_dir() else None


def _check_generated(split: str, games: str) -> None:
    from onelayer.envs import alfworld_gen

    if split not in SPLITS:
        raise UserError(f"unknown ALFWorld split {split!r}: use one of {', '.join(SPLITS)}")
    if games not in alfworld_gen.GENERATED_SETS:
        raise UserError(f"unknown generated ALFWorld set {games!r}: use one of {', '.join(alfworld_gen.GENERATED_SETS)}")


def default_generated_path(split: str, games: str = "default") -> Path:
    """Where the generated set ``games`` (``default`` or ``easy``) of ``split`` lives (generated on first use)."""
    from onelayer.envs import alfworld_gen

    _check_generated(split, games)
    root = cache_root() / "alfworld" / alfworld_gen.GENERATOR_VERSION
    return root / split if games == "default" else root / games / split


def ensure_default_games(split: str, games: str = "default") -> Path:
    """The folder of the generated set ``games`` of ``split``, generating it first if it is not cached yet.

    ``default``: ``train`` and ``eval`` share room sizes and never share a game
    (eval excludes the train layouts); ``eval_ood`` has bigger rooms than both.
    ``easy``: the same, in rooms of 2 receptacles with the two shortest task
    types (``eval_ood``: 3-4 receptacles). Recipes: ``alfworld_gen.GENERATED_SETS``.
    """
    from onelayer.envs import alfworld_gen

    path = default_generated_path(split, games)
    if (path / alfworld_gen.MANIFEST).is_file():
        return path
    recipe = dict(alfworld_gen.GENERATED_SETS[games][split])
    exclude = set()
    for other in recipe.pop("exclude_splits", ()):
        exclude |= alfworld_gen.read_signatures(ensure_default_games(other, games))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        alfworld_gen.generate_games(path, exclude_signatures=exclude, **recipe)
    except FileExistsError:
        pass  # another process finished the same set first; its files are identical
    except PermissionError as e:
        raise UserError(f"cannot write the default ALFWorld games to {path} ({e}): set ONELAYER_CACHE to a "
                        f"writable folder, or pass data_path=DIR with games from `onelayer alfworld generate`") from None
    if not (path / alfworld_gen.MANIFEST).is_file():
        raise UserError(f"the generated ALFWorld games at {path} are incomplete: remove that folder and retry")
    return path


def resolve_data_path(data_path: str | Path | None, split: str, generated_games: str | None = None) -> Path:
    """The folder to play: ``data_path`` if given, else the generated set ``generated_games`` if given, else
    the real ALFWorld split, else the default generated set.

    A ``data_path`` with a subfolder named after the split (``train/``, ``eval/``,
    ``eval_ood/``, as ``onelayer alfworld generate --out DIR/train`` lays them out)
    plays that subfolder, so training and its evaluation use different games;
    otherwise every split plays ``data_path`` itself.
    """
    if split not in SPLITS:
        raise UserError(f"unknown ALFWorld split {split!r}: use one of {', '.join(SPLITS)}")
    if data_path is not None:
        if generated_games is not None:
            raise UserError(f"pass data_path or generated_games, not both (got {str(data_path)!r} and "
                            f"{generated_games!r})")
        path = Path(data_path).expanduser()
        return path / split if (path / split).is_dir() else path
    if generated_games is not None:
        return ensure_default_games(split, generated_games)
    real = real_data_path(split)
    if real is not None:
        return real
    return ensure_default_games(split)


def remove_default_games(splits: Sequence[str] = SPLITS) -> None:
    """Delete the cached generated sets (``default`` and ``easy``; they are regenerated on next use)."""
    from onelayer.envs import alfworld_gen

    for games in alfworld_gen.GENERATED_SETS:
        for split in splits:
            shutil.rmtree(default_generated_path(split, games), ignore_errors=True)
