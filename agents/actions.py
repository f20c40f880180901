"""Action parsing and projection: from a model's text to an env action, or an invalid one.

The agentic format (as verl-agent): optional reasoning in ``<think>...</think>``,
then the action in ``<action>...</action>``. When the env lists admissible
actions, the text is projected onto one of them (case and whitespace
insensitive); anything else is invalid and the trainer subtracts a penalty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ACTION = re.compile(r"<action>(.*?)</action>", re.S | re.I)


@dataclass(frozen=True)
class ParsedAction:
    """What the agent does: the env action text, whether it is valid, and why not."""

    action: str
    valid: bool
    reason: str = ""


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def parse_action(text: str, admissible: list[str] | None = None, require_tags: bool = True) -> ParsedAction:
    """Extract the action from ``text`` and map it onto ``admissible`` when given.

    With ``require_tags`` a response without ``<action>...</action>`` is invalid
    (its text still goes to the env, which answers as it would to any bad command).
    """
    text = text or ""
    found = _ACTION.findall(text)
    if found:
        candidate = found[-1].strip()
    elif require_tags:
        candidate = text.strip()[:200]
        if admissible:
            match = _project(candidate, admissible)
            if match is not None:
                return ParsedAction(match, False, "no <action> tags (the bare text matched an admissible action)")
        return ParsedAction(candidate, False, "no <action>...</action> in the response")
    else:
        candidate = text.strip()
    if not candidate:
        return ParsedAction("", False, "empty action")
    if admissible:
        match = _project(candidate, admissible)
        if match is None:
            return ParsedAction(candidate, False, "not an admissible action")
        return ParsedAction(match, True)
    return ParsedAction(candidate, True)


def _project(candidate: str, admissible: list[str]) -> str | None:
    key = _norm(candidate)
    for a in admissible:
        if _norm(a) == key:
            return a
    return None
