"""Offline generator of small ALFWorld games, each verified by ALFWorld's expert on the real engine.

    python -m onelayer.envs.alfworld_gen --out DIR --n 12 --seed 0

A game is a folder in ALFWorld's format: ``game.tw-pddl`` (JSON: the text of
alfworld's ``alfred.pddl`` domain, its ``alfred.twl2`` grammar with the task
sentence in place of ``UNKNOWN GOAL``, a PDDL problem and ``solvable``) and
``traj_data.json`` (``task_type``, ``pddl_params`` as ALFWorld's hand-coded
expert reads them, and what generated it). Problems follow ALFWorld's: ALFRED
ids with mangled positions, one location per receptacle, ``canContain`` from
ALFRED's receptacle/object affordances, and goals from alfworld's own goal
library. Games are spread round-robin over the task types, drawn in a room
type where ALFRED has that task (``alfworld.gen.constants.GOALS_VALID``).

Every game is played by ALFWorld's PLANNER expert through the engine until it
is won before it is written; a game that fails is drawn again from the next
seed. Equal arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from onelayer.envs.alfworld_data import GAME_FILE, TRAJ_FILE, resolve_task_types
from onelayer.errors import UserError

MANIFEST = "onelayer_alfworld_games.json"
_GEN = "gen1"


def _alfworld_version() -> str:
    try:
        return importlib.metadata.version("alfworld")
    except importlib.metadata.PackageNotFoundError:
        return "none"


GENERATOR_VERSION = f"{_GEN}-alfworld{_alfworld_version()}"

# The default sets the env plays when no data_path is given and no real ALFWorld data exists.
DEFAULT_SETS: dict[str, dict] = {
    "train": dict(n=60, seed=0),
    "eval": dict(n=30, seed=1, exclude_splits=("train",)),
    "eval_ood": dict(n=30, seed=2, min_receptacles=5, max_receptacles=7, min_distractors=3, max_distractors=5),
}
# Small rooms and the two shortest task types, where a 135M model's random-ish play wins sometimes (the
# CPU learning study and the cpu-agentic preset; benchmarks/alfworld_learning.py has the numbers).
_EASY = dict(task_types="1,2", min_receptacles=2, max_receptacles=2, min_distractors=0, max_distractors=1)
EASY_SETS: dict[str, dict] = {
    "train": dict(n=40, seed=20, **_EASY),
    "eval": dict(n=30, seed=21, exclude_splits=("train",), **_EASY),
    "eval_ood": dict(n=30, seed=22, **{**_EASY, "min_receptacles": 3, "max_receptacles": 4,
                                       "min_distractors": 1, "max_distractors": 2}),
}
# Commands the easy setting leaves out of the agent's list (``hide_commands``): they never change the world.
EASY_HIDDEN_COMMANDS = ("help", "look", "inventory")
GENERATED_SETS: dict[str, dict[str, dict]] = {"default": DEFAULT_SETS, "easy": EASY_SETS}

# Room types: the receptacles and the portable objects of each (ALFRED's classes).
ROOMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Kitchen": (
        ("Cabinet", "CounterTop", "Drawer", "DiningTable", "Shelf", "GarbageCan", "CoffeeMachine", "SideTable",
         "StoveBurner", "Fridge", "Microwave", "SinkBasin"),
        ("Apple", "Bowl", "Bread", "ButterKnife", "Cup", "DishSponge", "Egg", "Fork", "Glassbottle", "Kettle", "Knife",
         "Ladle", "Lettuce", "Mug", "Pan", "PepperShaker", "Plate", "Pot", "Potato", "SaltShaker", "SoapBottle",
         "Spatula", "Spoon", "Tomato", "WineBottle"),
    ),
    "LivingRoom": (
        ("Sofa", "ArmChair", "CoffeeTable", "SideTable", "Shelf", "Drawer", "Cabinet", "Dresser", "TVStand",
         "GarbageCan", "Ottoman", "DiningTable"),
        ("Book", "Bowl", "Box", "Candle", "CellPhone", "CreditCard", "KeyChain", "Laptop", "Newspaper", "Pillow",
         "Plate", "RemoteControl", "Statue", "TissueBox", "Vase", "Watch", "WateringCan"),
    ),
    "Bedroom": (
        ("Bed", "Desk", "Dresser", "Drawer", "Shelf", "SideTable", "GarbageCan", "Safe", "ArmChair"),
        ("AlarmClock", "BaseballBat", "BasketBall", "Book", "Bowl", "Box", "CD", "CellPhone", "Cloth", "CreditCard",
         "KeyChain", "Laptop", "Mug", "Pen", "Pencil", "Pillow", "TennisRacket", "Watch"),
    ),
    "Bathroom": (
        ("Toilet", "CounterTop", "Cabinet", "Drawer", "GarbageCan", "Shelf", "Cart", "TowelHolder", "HandTowelHolder",
         "ToiletPaperHanger", "BathtubBasin", "SinkBasin"),
        ("Candle", "Cloth", "DishSponge", "HandTowel", "PaperTowel", "SoapBar", "SoapBottle", "SprayBottle",
         "TissueBox", "ToiletPaper", "Towel", "Plunger"),
    ),
}
# Receptacle types a room may hold several of ("cabinet 1", "cabinet 2").
MULTI = {"Cabinet", "Drawer", "Shelf", "SideTable", "CounterTop", "StoveBurner", "GarbageCan"}
# The appliance each state-change task needs (the domain's actions test these types).
APPLIANCE = {"pick_clean_then_place_in_recep": "SinkBasin", "pick_heat_then_place_in_recep": "Microwave",
             "pick_cool_then_place_in_recep": "Fridge"}
ACTION_PROPERTY = {"pick_clean_then_place_in_recep": "Cleanable", "pick_heat_then_place_in_recep": "Heatable",
                   "pick_cool_then_place_in_recep": "Coolable"}
LAMP, LAMP_HOSTS = "DeskLamp", ("Desk", "SideTable", "Dresser")
# Constants the domain's actions name; declared in every problem.
DOMAIN_CONSTANTS = (("SinkBasinType", "rtype"), ("MicrowaveType", "rtype"), ("FridgeType", "rtype"),
                    ("KnifeType", "otype"), ("ButterKnifeType", "otype"))


def _alfworld_modules():
    try:
        import alfworld.gen.constants as constants
        import alfworld.gen.goal_library as goal_library
    except ImportError as e:
        raise UserError(f"generating ALFWorld games needs the alfworld package ({e}): "
                        f'pip install alfworld "textworld[pddl]"') from None
    return constants, goal_library


def _alfworld_data_text(name: str) -> str:
    spec = importlib.util.find_spec("alfworld")
    if spec is None or not spec.submodule_search_locations:
        raise UserError('generating ALFWorld games needs the alfworld package: pip install alfworld "textworld[pddl]"')
    return (Path(list(spec.submodule_search_locations)[0]) / "data" / name).read_text(encoding="utf-8")


@dataclasses.dataclass
class Receptacle:
    """A receptacle instance: its ALFRED class, id and location."""

    rtype: str
    rid: str
    loc: str
    contents: list[str] = dataclasses.field(default_factory=list)  # object ids


@dataclasses.dataclass
class GameSpec:
    """Everything one generated game is made of, before it is written as PDDL."""

    task_type: str
    room: str
    target: str
    parent: str  # receptacle class of the goal ("" for look_at_obj_in_light)
    toggle: str  # lamp class for look_at_obj_in_light, else ""
    task: str  # the sentence the player sees
    start: str  # agent's start location
    receptacles: list[Receptacle]
    objects: dict[str, str]  # object id -> class

    def signature(self) -> str:
        """A hash of the layout by class (ids and positions left out): equal layouts are the same game."""
        cls = self.objects
        layout = sorted([r.rtype, sorted(cls[o] for o in r.contents)] for r in self.receptacles)
        key = [self.task_type, self.room, self.target, self.parent, self.toggle, layout]
        return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class GameSize:
    """Size knobs of a generated room (appliances the task needs come on top of ``*_receptacles``)."""

    min_receptacles: int = 3
    max_receptacles: int = 3
    min_distractors: int = 0
    max_distractors: int = 2
    extra_target_prob: float = 0.5  # chance of one more object of the target class

    def check(self) -> None:
        """Raise UserError on impossible sizes."""
        if not 2 <= self.min_receptacles <= self.max_receptacles:
            raise UserError(f"receptacles: need 2 <= min ({self.min_receptacles}) <= max ({self.max_receptacles})")
        if not 0 <= self.min_distractors <= self.max_distractors:
            raise UserError(f"distractors: need 0 <= min ({self.min_distractors}) <= max ({self.max_distractors})")
        if not 0.0 <= self.extra_target_prob <= 1.0:
            raise UserError(f"extra_target_prob must be in [0, 1], got {self.extra_target_prob}")


def _mangle(text: str) -> str:
    # ALFRED ids -> PDDL names, as alfworld's PlannedGameState.fix_pddl_str_chars does.
    for a, b in (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        text = text.replace(a, b)
    return text


class _Ids:
    """Unique ALFRED-style ids and locations, drawn from one rng."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def _unique(self, make) -> str:
        while True:
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name

    def _coord(self, lo: float, hi: float) -> str:
        return f"{self.rng.uniform(lo, hi):+06.2f}"

    def thing(self, cls: str) -> str:
        def make():
            pos = f"{self._coord(-4, 4)}|{self._coord(0, 2)}|{self._coord(-4, 4)}"
            if cls in ("SinkBasin", "BathtubBasin"):  # ALFRED: Sink|x|y|z|SinkBasin
                return _mangle(f"{cls[:-5]}|{pos}|{cls}")
            return _mangle(f"{cls}|{pos}")
        return self._unique(make)

    def location(self) -> str:
        r = self.rng
        return self._unique(lambda: _mangle(
            f"loc|{r.randint(-12, 12)}|{r.randint(-12, 12)}|{r.randint(0, 3)}|{r.choice((0, 15, 30, 45, 60))}"))


def _room_for(task_type: str, rng: random.Random, constants) -> str:
    rooms = [r for r in ROOMS if r in constants.GOALS_VALID[task_type]]
    if task_type in APPLIANCE:
        rooms = [r for r in rooms if APPLIANCE[task_type] in ROOMS[r][0]]
    return rng.choice(sorted(rooms))


def sample_spec(task_type: str, rng: random.Random, size: GameSize = GameSize()) -> GameSpec | None:
    """Draw one game of ``task_type``; None when this draw cannot make a valid layout (draw again)."""
    constants, goal_library = _alfworld_modules()
    can = {r: set(objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}
    room = _room_for(task_type, rng, constants)
    rtypes, otypes = ROOMS[room]
    appliance = APPLIANCE.get(task_type, "")
    look = task_type == "look_at_obj_in_light"

    # Target class and goal receptacle class.
    candidates = [o for o in otypes if any(o in can[r] for r in rtypes)]
    if task_type in ACTION_PROPERTY:
        candidates = [o for o in candidates if o in constants.VAL_ACTION_OBJECTS[ACTION_PROPERTY[task_type]]]
    target = rng.choice(candidates)
    parent = toggle = ""
    if look:
        toggle = LAMP
        hosts = [r for r in LAMP_HOSTS if r in rtypes]
        if not hosts:
            return None
        required = [rng.choice(hosts)]
    else:
        parents = [r for r in rtypes if target in can[r] and r != appliance]
        if not parents:
            return None
        parent = rng.choice(parents)
        required = [parent]
    # A place the target can start from that is not the goal receptacle class nor the task's appliance.
    sources = [r for r in rtypes if target in can[r] and r not in (parent, appliance)
               and (r in MULTI or r not in required)]
    if not sources:
        return None
    required.append(rng.choice(sources))

    # Plain receptacles: the required ones plus random fill; the task's appliance comes on top.
    k = rng.randint(size.min_receptacles, size.max_receptacles)
    chosen = list(required)
    while len(chosen) < k:
        pool = [r for r in rtypes if r != appliance and (r in MULTI or r not in chosen)]
        chosen.append(rng.choice(pool))
    if appliance:
        chosen.append(appliance)

    ids = _Ids(rng)
    receptacles = [Receptacle(r, ids.thing(r), ids.location()) for r in chosen]
    start = ids.location()
    objects: dict[str, str] = {}

    def place(cls: str, allowed) -> bool:
        spots = [rc for rc in receptacles if cls in can.get(rc.rtype, ()) and allowed(rc)]
        if not spots:
            return False
        oid = ids.thing(cls)
        objects[oid] = cls
        rng.choice(spots).contents.append(oid)
        return True

    if look:
        host = next(rc for rc in receptacles if rc.rtype == required[0])
        lamp = ids.thing(LAMP)
        objects[lamp] = LAMP
        host.contents.append(lamp)
    copies = (2 if task_type == "pick_two_obj_and_place" else 1) + (rng.random() < size.extra_target_prob)
    for _ in range(copies):
        # Never in a goal-class receptacle (the goal would hold at the start) nor in the task's appliance.
        if not place(target, lambda rc: rc.rtype not in (parent, appliance)):
            return None
    others = [o for o in otypes if o != target and any(o in can.get(rc.rtype, ()) for rc in receptacles)]
    for _ in range(rng.randint(size.min_distractors, size.max_distractors)):
        if others:
            place(rng.choice(others), lambda rc: True)

    templates = goal_library.gdict[task_type]["templates"]
    task = rng.choice(templates).format(obj=target.lower(), recep=parent.lower(), toggle=toggle.lower(), mrecep="")
    return GameSpec(task_type, room, target, parent, toggle, task, start, receptacles, objects)


def render_problem(spec: GameSpec, name: str) -> str:
    """The PDDL problem of ``spec`` for domain ``alfred`` (goal from alfworld's goal library)."""
    constants, goal_library = _alfworld_modules()
    can = constants.VAL_RECEPTACLE_OBJECTS
    actions = constants.VAL_ACTION_OBJECTS
    obj_classes = sorted(set(spec.objects.values()) | {spec.target})
    rec_classes = sorted({r.rtype for r in spec.receptacles} | ({spec.parent} if spec.parent else set()))
    types = [(f"{c}Type", "otype") for c in obj_classes] + [(f"{c}Type", "rtype") for c in rec_classes]
    types += [t for t in DOMAIN_CONSTANTS if t not in types]
    objects = sorted(spec.objects)
    recs = sorted(spec.receptacles, key=lambda r: r.rid)
    locs = sorted({r.loc for r in recs} | {spec.start})

    decl = ["agent1 - agent"] + [f"{n} - {t}" for n, t in types] + [f"{o} - object" for o in objects]
    decl += [f"{r.rid} - receptacle" for r in recs] + [f"{loc} - location" for loc in locs]
    init = [f"(atLocation agent1 {spec.start})"]
    init += [f"(receptacleType {r.rid} {r.rtype}Type)" for r in recs]
    init += [f"(objectType {o} {spec.objects[o]}Type)" for o in objects]
    init += [f"(canContain {rc}Type {oc}Type)" for rc in rec_classes for oc in obj_classes if oc in can.get(rc, ())]
    for o in objects:
        cls = spec.objects[o]
        if cls == LAMP:
            init.append(f"(toggleable {o})")
            continue
        init.append(f"(pickupable {o})")
        if cls in constants.MOVABLE_RECEPTACLES_SET:
            init.append(f"(isReceptacleObject {o})")
        for prop, pred in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")):
            if cls in actions[prop]:
                init.append(f"({pred} {o})")
    init += [f"(openable {r.rid})" for r in recs if r.rtype in constants.OPENABLE_CLASS_SET]
    init += [f"(receptacleAtLocation {r.rid} {r.loc})" for r in recs]
    for r in recs:
        for o in sorted(r.contents):
            init += [f"(inReceptacle {o} {r.rid})", f"(objectAtLocation {o} {r.loc})"]

    goal = goal_library.gdict[spec.task_type]["pddl"].format(
        obj=spec.target, recep=spec.parent, toggle=spec.toggle, mrecep="").replace("#", "-")
    pad = "\n        "
    return (f"(define (problem {name})\n    (:domain alfred)\n    (:objects{pad}{pad.join(decl)}\n    )\n"
            f"    (:init{pad}{pad.join(init)}\n    )\n{goal.rstrip()}\n")


def game_files(spec: GameSpec, name: str) -> tuple[dict, dict]:
    """The ``game.tw-pddl`` and ``traj_data.json`` contents of ``spec`` (``solvable`` still to be verified)."""
    grammar = _alfworld_data_text("alfred.twl2")
    if "UNKNOWN GOAL" not in grammar:
        raise UserError("alfworld's alfred.twl2 has no 'UNKNOWN GOAL' placeholder: this alfworld version is not supported")
    game = {
        "pddl_domain": _alfworld_data_text("alfred.pddl"),
        "grammar": grammar.replace("UNKNOWN GOAL", spec.task),
        "pddl_problem": render_problem(spec, name),
        "solvable": False,
    }
    traj = {
        "task_type": spec.task_type,
        "pddl_params": {"object_target": spec.target, "parent_target": spec.parent, "toggle_target": spec.toggle,
                        "mrecep_target": "", "object_sliced": False},
        "task_desc": spec.task,
        "turk_annotations": {"anns": [{"task_desc": spec.task}]},
        "scene": {"room_type": spec.room, "receptacles": sorted(r.rtype for r in spec.receptacles),
                  "objects": sorted(spec.objects.values())},
    }
    return game, traj


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_signatures(games_dir: str | Path) -> set[str]:
    """The layout signatures of the games in a generated folder (from its manifest)."""
    manifest = Path(games_dir) / MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the manifest of generated ALFWorld games {manifest}: {e}") from None
    return {g["signature"] for g in data["games"]}


def generate_games(
    out_dir: str | Path, n: int, seed: int = 0, *, task_types: Iterable[int | str] | str | None = None,
    min_receptacles: int = 3, max_receptacles: int = 3, min_distractors: int = 0, max_distractors: int = 2,
    extra_target_prob: float = 0.5, max_expert_steps: int = 30, exclude_signatures: Iterable[str] = (),
    overwrite: bool = False, max_attempts: int = 50, progress: bool = False,
) -> list[Path]:
    """Write ``n`` verified ALFWorld games under ``out_dir`` and return their folders.

    Game ``i`` has task type ``task_types[i % len(task_types)]`` (all six by
    default, so each is present when ``n >= 6``) and is drawn from a seed made
    of ``(seed, i, attempt)``; a draw whose layout is invalid, repeats an
    earlier game or one in ``exclude_signatures``, or that the PLANNER expert
    does not win within ``max_expert_steps`` commands on the engine is drawn
    again with the next attempt. The set is written to a temporary folder and
    renamed into place, so ``out_dir`` never holds a partial set.

    Raises UserError if ``out_dir`` exists and is not empty (unless ``overwrite``
    and it holds a set this generator wrote), FileExistsError if another
    process created it meanwhile.
    """
    from onelayer.envs.alfworld_engine import Engine, solve_with_expert

    if n < 1:
        raise UserError(f"n must be >= 1 (number of games to generate), got {n}")
    size = GameSize(min_receptacles, max_receptacles, min_distractors, max_distractors, extra_target_prob)
    size.check()
    types = resolve_task_types(task_types)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise UserError(f"{out} already exists and is not empty: choose a new folder or pass overwrite=True "
                            f"(--overwrite) to replace a set generated earlier")
        if not (out / MANIFEST).is_file():
            raise UserError(f"refusing to overwrite {out}: it is not a folder of games written by this generator "
                            f"(no {MANIFEST})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        engine = Engine(expert="planner")
        seen = set(exclude_signatures)
        records = []
        for i in range(n):
            task_type = types[i % len(types)]
            for attempt in range(max_attempts):
                rng = random.Random(f"onelayer-alfworld:{seed}:{i}:{attempt}")
                spec = sample_spec(task_type, rng, size)
                if spec is None or spec.signature() in seen:
                    continue
                target = spec.parent or spec.toggle
                rel = f"{task_type}-{spec.target}-None-{target}-{i:04d}/trial_s{seed}_a{attempt}"
                folder = tmp / rel
                folder.mkdir(parents=True)
                game, traj = game_files(spec, f"plan_onelayer_s{seed}_g{i}_a{attempt}")
                _dump(folder / GAME_FILE, game)
                _dump(folder / TRAJ_FILE, traj)
                plan = solve_with_expert(folder / GAME_FILE, max_steps=max_expert_steps, engine=engine)
                if plan is None:
                    shutil.rmtree(tmp / rel.split("/")[0])
                    continue
                game["solvable"] = True
                traj["generator"] = {"name": "onelayer.envs.alfworld_gen", "version": GENERATOR_VERSION, "seed": seed,
                                     "index": i, "attempt": attempt, "signature": spec.signature(),
                                     "expert_plan": plan}
                _dump(folder / GAME_FILE, game)
                _dump(folder / TRAJ_FILE, traj)
                seen.add(spec.signature())
                records.append({"task_id": rel, "task_type": task_type, "task": spec.task, "room": spec.room,
                                "signature": spec.signature(), "expert_steps": len(plan)})
                if progress:
                    print(f"[{i + 1}/{n}] {rel}: {spec.task} ({len(plan)} expert steps)", file=sys.stderr)
                break
            else:
                raise UserError(f"could not generate a solvable {task_type} game #{i} in {max_attempts} attempts "
                                f"with these sizes; try larger rooms (max_receptacles) or another seed")
        manifest = {"generator": GENERATOR_VERSION, "seed": seed, "n": n, "task_types": types,
                    "size": dataclasses.asdict(size), "max_expert_steps": max_expert_steps, "games": records}
        _dump(tmp / MANIFEST, manifest)
        if out.exists():
            if overwrite and (out / MANIFEST).is_file():
                shutil.rmtree(out)
            elif not any(out.iterdir()):
                out.rmdir()
        os.rename(tmp, out)  # atomic; fails if another process created a non-empty `out` meanwhile
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if out.is_dir() and (out / MANIFEST).is_file():
            raise FileExistsError(f"{out} was written by another process") from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / r["task_id"] for r in records]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--out DIR --n N --seed S`` plus the size knobs; prints the folders written."""
    p = argparse.ArgumentParser(prog="onelayer alfworld generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    p.add_argument("--n", type=int, default=60, help="number of games (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed; equal arguments give byte-identical files (default 0)")
    p.add_argument("--task-types", default=None, help="comma-separated ids 1-6 or names (default: all six)")
    p.add_argument("--min-receptacles", type=int, default=3, help="plain receptacles per room, at least (default 3)")
    p.add_argument("--max-receptacles", type=int, default=3, help="plain receptacles per room, at most (default 3)")
    p.add_argument("--min-distractors", type=int, default=0, help="objects unrelated to the task, at least (default 0)")
    p.add_argument("--max-distractors", type=int, default=2, help="objects unrelated to the task, at most (default 2)")
    p.add_argument("--extra-target-prob", type=float, default=0.5,
                   help="chance of one more object of the target class (default 0.5)")
    p.add_argument("--overwrite", action="store_true", help="replace a set this generator wrote earlier in --out")
    p.add_argument("--quiet", action="store_true", help="no per-game progress on stderr")
    a = p.parse_args(argv)
    try:
        paths = generate_games(
            a.out, a.n, a.seed, task_types=a.task_types, min_receptacles=a.min_receptacles,
            max_receptacles=a.max_receptacles, min_distractors=a.min_distractors, max_distractors=a.max_distractors,
            extra_target_prob=a.extra_target_prob, overwrite=a.overwrite, progress=not a.quiet)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} games to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
