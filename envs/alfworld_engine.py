"""The real ALFWorld text engine: textworld's PDDL backend with ALFWorld's own wrappers.

``Engine`` plays ``game.tw-pddl`` files exactly as ALFWorld's ``AlfredTWEnv``
does: textworld's ``PddlEnv`` (fast-downward) runs ALFWorld's ``alfred.pddl``
domain and ``alfred.twl2`` grammar; ``AlfredDemangler`` turns ALFRED ids into
the names players type ("mug 1"); ``AlfredInfos`` adds the game file;
``AlfredExpert`` (optional) adds the expert's next command. Observations,
admissible commands and ``won`` all come from the engine.

``memoize_textworld_parsing`` (on by default) caches textworld's re-parsing of
the same grammar strings on every step; outputs are unchanged, steps ~3x faster.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from onelayer.errors import UserError

EXPERT_TYPES = ("planner", "handcoded")
INSTALL_HINT = 'pip install alfworld "textworld[pddl]"'
_MEMO_LIMIT = 100_000
_memo_installed = False


def _textworld():
    try:
        import textworld
        from alfworld.agents.environment import alfred_tw_env
    except ImportError as e:
        raise UserError(f"ALFWorld needs the alfworld and textworld[pddl] packages ({e}): {INSTALL_HINT}") from None
    return textworld, alfred_tw_env


def memoize_textworld_parsing() -> bool:
    """Cache textworld's parsing of grammar templates and fact queries (steps about 3x faster).

    textworld re-parses the same template strings (``"#look.feedback#"``,
    ``"holds(a:agent, o:object)"``, ...) with tatsu on every step. Both parses
    are pure functions of the string; this wraps them in a dict cache and hands
    out deep copies of the parsed symbols (textworld mutates them), so the
    engine's outputs are unchanged (tests compare transcripts with and without).
    Process-wide; skipped when ``ONELAYER_TEXTWORLD_MEMO=0`` or when textworld's
    internals do not look as expected. Returns whether the cache is active.
    """
    global _memo_installed
    if _memo_installed:
        return True
    if os.environ.get("ONELAYER_TEXTWORLD_MEMO", "1") == "0":
        return False
    try:
        import textworld.envs.pddl.textgen as textgen
        from textworld.logic import Rule
    except ImportError:
        return False
    parse = getattr(textgen, "_parse_and_convert", None)
    query = Rule.__dict__.get("parse_conjunctive_query")
    if parse is None or not isinstance(query, classmethod):
        return False
    query = query.__func__
    symbols: dict = {}
    rules: dict = {}

    def cached_parse(text, rule_name="symbols", **kwargs):
        if kwargs.get("trace"):
            return parse(text, rule_name=rule_name, **kwargs)
        key = (text, rule_name)
        if key not in symbols:
            if len(symbols) > _MEMO_LIMIT:
                symbols.clear()
            symbols[key] = parse(text, rule_name=rule_name, **kwargs)
        return copy.deepcopy(symbols[key])

    def cached_query(cls, expr):
        if expr not in rules:  # Rule objects are not mutated by textworld's queries
            if len(rules) > _MEMO_LIMIT:
                rules.clear()
            rules[expr] = query(cls, expr)
        return rules[expr]

    textgen._parse_and_convert = cached_parse
    Rule.parse_conjunctive_query = classmethod(cached_query)
    _memo_installed = True
    return True


@dataclass
class EngineState:
    """What the engine reports after a reset or a step."""

    feedback: str
    admissible_commands: list[str]
    won: bool
    facts_key: str
    expert_plan: list[str] | None


@contextlib.contextmanager
def _keep_sys_argv():
    """Give the caller its ``sys.argv`` back: fast-downward's ``pddl2sas`` sets it to
    ``["translate.py", "domain", "task"]`` for its options module, so a program that
    records its command line after loading a game would record that instead."""
    saved = sys.argv
    try:
        yield
    finally:
        sys.argv = saved


class Engine:
    """One textworld PDDL env with ALFWorld's wrappers; ``load`` a game file, then ``reset`` / ``step``.

    Args:
        expert: ``None`` (no expert), ``"planner"`` (fast-downward's plan from the
            current state, ALFWorld's ``AlfredExpertType.PLANNER``) or
            ``"handcoded"`` (ALFWorld's hand-coded policy; reads ``traj_data.json``).
    """

    def __init__(self, expert: str | None = None):
        if expert is not None and expert not in EXPERT_TYPES:
            raise UserError(f"unknown ALFWorld expert {expert!r}: use None, 'planner' or 'handcoded'")
        textworld, tw_env = _textworld()
        memoize_textworld_parsing()
        self.expert = expert
        extras = ["gamefile"] + (["expert_plan"] if expert else [])
        # facts=True: the hand-coded expert reads them; we hash them into the state key.
        infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True, extras=extras)
        from textworld.envs.pddl import PddlEnv

        try:
            env = PddlEnv(infos)
        except ImportError as e:  # textworld without its [pddl] extra (fast-downward)
            raise UserError(f"ALFWorld's engine needs fast-downward ({e}): {INSTALL_HINT}") from None
        wrappers = [tw_env.AlfredDemangler(shuffle=False), tw_env.AlfredInfos]
        if expert:
            kind = tw_env.AlfredExpertType.PLANNER if expert == "planner" else tw_env.AlfredExpertType.HANDCODED
            wrappers.append(tw_env.AlfredExpert(expert_type=kind))
        for wrapper in wrappers:
            env = wrapper(env)
        self._env = env
        self.game_file: Path | None = None
        self._state = None

    def load(self, game_file: str | Path) -> None:
        """Load a ``game.tw-pddl`` file (PDDL parsing and grounding happen here)."""
        game_file = Path(game_file)
        if self.game_file == game_file:
            return
        self.game_file = None
        try:
            with _keep_sys_argv():
                self._env.load(str(game_file))
        except UserError:
            raise
        except Exception as e:  # fast-downward / tatsu raise many kinds of errors on bad PDDL
            raise UserError(f"the ALFWorld engine cannot load {game_file}: {type(e).__name__}: {e}; "
                            f"the game file is malformed (check its pddl_problem), regenerate or remove it") from None
        self.game_file = game_file

    def reset(self) -> EngineState:
        """Start the loaded game from its initial state."""
        if self.game_file is None:
            raise RuntimeError("Engine.reset() before load()")
        with _keep_sys_argv():
            self._state = self._env.reset()
        return self._observe()

    def step(self, command: str) -> EngineState:
        """Send a command to the engine; one that is not admissible gives the engine's "Nothing happens."."""
        if self._state is None:
            raise RuntimeError("Engine.step() before reset()")
        with _keep_sys_argv():
            self._state, _score, _done = self._env.step(command)
        return self._observe()

    def facts(self) -> list[str]:
        """The true atoms of the engine's PDDL state (over the raw ids), sorted.

        textworld also keeps the atoms an action made false (``not_atlocation``,
        ...) as bookkeeping; they are left out, so equal world states give equal
        lists whatever path led to them.
        """
        return sorted(str(f) for f in self._state["_facts"] if not f.name.startswith(("not_", "new-axiom@")))

    def _observe(self) -> EngineState:
        s = self._state
        key = hashlib.sha1("\n".join(self.facts()).encode()).hexdigest()
        plan = list(s["extra.expert_plan"]) if self.expert else None
        return EngineState(s.feedback, list(s["admissible_commands"]), bool(s["won"]), key, plan)


def solve_with_expert(game_file: str | Path, max_steps: int = 50, engine: Engine | None = None) -> list[str] | None:
    """Play the planner expert's next command until ``won``; the commands, or None if it does not win.

    Returns None when the game is won before any step (a broken goal) or the
    expert has no plan or needs more than ``max_steps`` commands.
    """
    engine = engine or Engine(expert="planner")
    engine.load(game_file)
    state = engine.reset()
    if state.won:
        return None
    commands: list[str] = []
    while len(commands) < max_steps:
        if not state.expert_plan or state.expert_plan[0] not in state.admissible_commands:
            return None
        commands.append(state.expert_plan[0])
        state = engine.step(commands[-1])
        if state.won:
            return commands
    return None
