"""``onelayer/ALFWorld-v0``: ALFWorld's text household tasks on the real engine.

One episode is one game (see ``alfworld_data`` for where games come from).
``reset(seed=...)`` picks the game from the seed alone (equal seeds -> equal
game, so GRPO/GiGPO groups share a task), ``reset(options={"task_id": ...})``
picks a given game (its ``task_id`` string or its index in the sorted list).
``step(command)`` sends the text to ALFWorld's engine (textworld PDDL + ALFWorld's
wrappers, see ``alfworld_engine``) and returns its feedback.

Invalid actions: the text is passed to the engine unchanged (after stripping
surrounding whitespace, as textworld does); a command that is not among the
admissible commands leaves the game as it is and the engine answers
"Nothing happens.", exactly as in ALFWorld. The step counts, and
``info["invalid_action"]`` is True; penalising it is the agent's job.

Reward: ``success_reward`` (10.0, as in verl-agent) on the step that wins the
game, 0 otherwise. The episode terminates when the game is won and is
truncated after ``max_steps`` steps (the registered id also has a TimeLimit of
50; pass ``max_episode_steps`` to ``gymnasium.make`` to change both).

``info`` after reset and every step: ``task_id``, ``task`` (the task sentence),
``task_type``, ``admissible_actions`` (the engine's admissible commands,
"help" / "look" / "inventory" included unless ``hide_commands`` drops them), ``won`` and ``success``,
``invalid_action`` (False at reset), ``anchor`` (the raw observation text, as
verl-agent's GiGPO anchors), ``state_anchor`` (a SHA-1 of the true atoms of
the engine's PDDL state: equal iff the world state is equal, whatever path led
there; ``env.facts()`` lists them), ``steps``, ``game_file`` and, when an
``expert`` is asked for, ``expert_plan`` (the expert's next command(s)).
"""

from __future__ import annotations

import string

import gymnasium as gym
from gymnasium import spaces

from onelayer.envs import number_option
from onelayer.envs.alfworld_data import GameRef, find_games, resolve_data_path
from onelayer.envs.alfworld_engine import Engine
from onelayer.envs.tasks import task_index
from onelayer.errors import UserError

BASE_CHARSET = string.printable


def _command_set(hide_commands) -> frozenset[str]:
    """``hide_commands`` (list or comma-separated string) as a set of stripped commands."""
    items = hide_commands.split(",") if isinstance(hide_commands, str) else hide_commands
    try:
        commands = [c.strip() for c in (items or ())]
    except (TypeError, AttributeError):
        raise UserError(f"hide_commands must be a list of command strings (or one comma-separated string), "
                        f"got {hide_commands!r}") from None
    return frozenset(c for c in commands if c)


class ALFWorldEnv(gym.Env):
    """ALFWorld (TextWorld engine) as a Gymnasium text env.

    Args:
        data_path: a folder of ALFWorld-format games (real or generated). None:
            the generated set ``generated_games`` if given, else the real ALFWorld
            split under ``$ALFWORLD_DATA`` if downloaded, else the default
            generated set (cached, see ``alfworld_data``).
        generated_games: ``"default"`` or ``"easy"`` (rooms of 2 receptacles, the two
            shortest task types): play that generated set even when the real
            games are downloaded. Not with ``data_path``.
        split: ``train``, ``eval`` (in distribution: ALFWorld's valid_seen) or
            ``eval_ood`` (valid_unseen); with a ``data_path``, it picks the
            ``data_path/<split>`` subfolder when there is one.
        task_types: keep only these task types (ids 1-6 or names; default all).
        success_reward: reward of the winning step.
        max_steps: steps before truncation.
        expert: None, ``"planner"`` or ``"handcoded"``: adds ``info["expert_plan"]``
            (the planner costs a fast-downward search per step).
        max_length: longest observation/action text the spaces admit.
        hide_commands: commands left out of ``info["admissible_actions"]`` (a list,
            or a comma-separated string), e.g. ``["help", "look", "inventory"]``: they
            never change the world, and verl-agent drops "help" from the list it shows
            the agent. A hidden command sent anyway still reaches the engine and
            counts as an invalid action.
    """

    metadata = {"render_modes": [], "onelayer": {
        "name": "agentic", "metric": "success_rate", "actions": True,
        "train": {"env_kwargs": {}, "max_new_tokens": 32, "max_turns": 15, "num_tasks": 2, "num_generations": 4},
        "suite": "alfworld-gen"}}

    @staticmethod
    def suite_options(kwargs: dict) -> dict:
        """A suite's options as this env takes them: ``split`` + ``real`` / ``generated`` become a ``data_path``.

        Suites name their games by where they come from (``{"split": "eval", "generated": "easy"}``); this
        resolves that to the folder (generating the set once, offline), or raises SuiteDataMissing-style
        UserError naming the data and how to get it. Evaluation code calls it when an env class has it.
        """
        from onelayer.envs.alfworld_data import ensure_default_games, real_data_path
        from onelayer.errors import DataMissing

        kw = dict(kwargs)
        split = kw.pop("split")
        if kw.pop("real", False):
            path = real_data_path(split)
            if path is None:
                raise DataMissing(
                    f"the real ALFWorld games (json_2.1.1/{'valid_seen' if split == 'eval' else 'valid_unseen'}) are "
                    "not here: pip install alfworld, run `alfworld-download`, and set $ALFWORLD_DATA if not "
                    "~/.cache/alfworld")
            kw["data_path"] = str(path)
        elif kw.get("generated"):
            games = kw.pop("generated")
            kw["data_path"] = str(ensure_default_games(split, "default" if games is True else games))
        return kw

    def __init__(self, data_path=None, split: str = "train", task_types=None, success_reward: float = 10.0,
                 max_steps: int = 50, expert: str | None = None, max_length: int = 8192,
                 hide_commands=(), generated_games: str | None = None):
        max_steps = number_option("onelayer/ALFWorld-v0", "max_steps", max_steps)
        success_reward = number_option("onelayer/ALFWorld-v0", "success_reward", success_reward, float)
        if int(max_steps) < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        self.hide_commands = _command_set(hide_commands)
        self.data_path = resolve_data_path(data_path, split, generated_games)
        self.split = split
        self.games: list[GameRef] = find_games(self.data_path, task_types)
        self._index = {g.task_id: i for i, g in enumerate(self.games)}
        self.success_reward = float(success_reward)
        self.max_steps = int(max_steps)
        self._engine = Engine(expert=expert)
        self.expert = expert
        charset = set(BASE_CHARSET)
        for g in self.games:
            charset.update(g.task)
        self.observation_space = spaces.Text(max_length=max_length, min_length=0, charset="".join(sorted(charset)))
        self.action_space = spaces.Text(max_length=max_length, min_length=0, charset=BASE_CHARSET)
        self._game: GameRef | None = None
        self._admissible: list[str] = []
        self._steps = 0
        self._done = True

    @property
    def num_tasks(self) -> int:
        """Number of games in this split (after the task-type filter)."""
        return len(self.games)

    def task_id_of(self, index: int) -> str:
        """The ``task_id`` of game ``index`` in the sorted game list."""
        return self.games[index].task_id

    def _resolve(self, task_id) -> int:
        if isinstance(task_id, str) and task_id in self._index:
            return self._index[task_id]
        try:
            index = int(task_id)
        except (TypeError, ValueError):
            raise UserError(f"unknown ALFWorld task_id {task_id!r}: use a game folder relative to {self.data_path} "
                            f"(info['task_id']) or an index 0..{self.num_tasks - 1}") from None
        if not 0 <= index < self.num_tasks:
            raise UserError(f"ALFWorld task index {index} out of range: this split has games 0..{self.num_tasks - 1}")
        return index

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "task_id" in options:
            index = self._resolve(options["task_id"])
        else:
            index = task_index(seed, self.num_tasks, self.np_random)
        self._game = self.games[index]
        self._engine.load(self._game.game_file)
        state = self._engine.reset()
        self._steps, self._done = 0, state.won
        return state.feedback, self._info(state, invalid=False)

    def step(self, action: str):
        if self._game is None or self._done:
            raise RuntimeError("onelayer/ALFWorld-v0: call reset() before step() (the episode is over or not started)")
        command = str(action).strip()
        invalid = command not in self._admissible
        state = self._engine.step(command)
        self._steps += 1
        terminated = state.won
        truncated = not terminated and self._steps >= self.max_steps
        self._done = terminated or truncated
        reward = self.success_reward if state.won else 0.0
        return state.feedback, reward, terminated, truncated, self._info(state, invalid)

    def _info(self, state, invalid: bool) -> dict:
        self._admissible = [c for c in state.admissible_commands if c not in self.hide_commands]
        info = {
            "task_id": self._game.task_id, "task": self._game.task, "task_type": self._game.task_type,
            "admissible_actions": list(self._admissible), "won": state.won, "success": state.won,
            "invalid_action": invalid, "anchor": state.feedback, "state_anchor": state.facts_key,
            "steps": self._steps, "game_file": str(self._game.game_file),
        }
        if state.expert_plan is not None:
            info["expert_plan"] = list(state.expert_plan)
        return info

    def facts(self) -> list[str]:
        """The engine's current facts (for debugging; ``state_anchor`` is their hash)."""
        return self._engine.facts()
