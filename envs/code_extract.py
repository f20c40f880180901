"""Pull the candidate program out of a model's reply to a code problem.

Accepted forms, tried in order:

1. fenced blocks (```` ```python ````, ```` ```py ````, or untagged; an unclosed last
   fence counts, since generation may stop mid-block): the last block that defines
   the entry point, else a block that continues the prompt's function body, else
   the longest block;
2. a bare function: the reply contains ``def <entry_point>(`` outside any fence;
3. a completion: the reply is indented code that continues the prompt's function
   body (base-model style), so the program is ``prompt + reply``.

The result is cleaned with EvalPlus' sanitizer (keeps imports and the definitions
the entry point needs, drops prose, tests and ``__main__`` blocks) when it is
installed and the code is of sane size; otherwise with a fallback that trims prose
around the code. Nothing here executes the reply; it is only parsed.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_PYTHON_TAGS = ("", "python", "python3", "py", "py3")
_CODE_START = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)")
# EvalPlus' sanitizer is quadratic in the number of lines; beyond this we use the fallback.
_SANITIZE_MAX_LINES = 300


@dataclass(frozen=True)
class ExtractedCode:
    """The candidate program (``None`` when the reply holds no code) and how it was found."""

    code: str | None
    method: str  # "fenced", "function", "completion" or "none"


def extract_code(response: str, prompt: str, entry_point: str) -> ExtractedCode:
    """The program to test for ``response`` to a problem with ``prompt`` and function ``entry_point``."""
    text = response.replace("\r\n", "\n")
    defines = re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", re.M)
    prompt_has_def = bool(defines.search(prompt))
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS and body.strip()]
    if blocks:
        with_def = [b for b in blocks if defines.search(b)]
        if with_def:
            return ExtractedCode(_clean(with_def[-1], entry_point), "fenced")
        body = next((b for b in blocks if prompt_has_def and _is_indented(b)), None)
        if body is not None:
            return ExtractedCode(_clean(_continue(prompt, body), entry_point), "completion")
        return ExtractedCode(_clean(max(blocks, key=len), entry_point), "fenced")
    if "```" in text:
        return ExtractedCode(None, "none")
    if defines.search(text):
        return ExtractedCode(_clean(text, entry_point), "function")
    if prompt_has_def and _is_indented(text):
        return ExtractedCode(_clean(_continue(prompt, text), entry_point), "completion")
    return ExtractedCode(None, "none")


def _is_indented(code: str) -> bool:
    first = next((line for line in code.split("\n") if line.strip()), "")
    return first[:1] in (" ", "\t")


def _continue(prompt: str, body: str) -> str:
    return prompt if not body.strip() else prompt.rstrip("\n") + "\n" + body.strip("\n") + "\n"


def _clean(code: str, entry_point: str) -> str:
    """EvalPlus' sanitizer where it keeps the entry point, else our prose trimmer."""
    code = code.strip("\n") + "\n"
    if code.count("\n") <= _SANITIZE_MAX_LINES:
        sanitize = _evalplus_sanitize()
        if sanitize is not None:
            try:
                cleaned = sanitize(code, entrypoint=entry_point)
            except Exception as e:  # a parser hiccup must not lose the reply
                log.debug("evalplus sanitize failed (%s); using the fallback", e)
            else:
                # The sanitizer returns its first line when nothing parses: keep only a real result.
                if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", cleaned) and _parses(cleaned):
                    return cleaned.strip("\n") + "\n"
    return trim_to_code(code, entry_point)


def trim_to_code(code: str, entry_point: str) -> str:
    """Drop prose before the first code line and after the last line that keeps the code parseable.

    A cut must keep ``def <entry_point>``; if no such prefix parses, the text from the
    first code line is returned unchanged, so the test run reports the syntax error.
    """
    defines = re.compile(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", re.M)
    lines = code.split("\n")
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), 0)
    lines = lines[start:]
    for end in range(len(lines), 0, -1):
        if end < len(lines) and lines[end][:1] in (" ", "\t"):
            continue  # cut only before an unindented line, never inside a block
        candidate = "\n".join(lines[:end])
        if not defines.search(candidate):
            break
        if _parses(candidate):
            return candidate.strip("\n") + "\n"
    return "\n".join(lines).strip("\n") + "\n"


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


@functools.lru_cache(maxsize=1)
def _evalplus_sanitize():
    try:
        from evalplus.sanitize import sanitize
    except Exception as e:  # evalplus (or tree-sitter) missing or broken: use the fallback
        log.info("evalplus sanitizer unavailable (%s); using onelayer's code trimmer", e)
        return None
    return sanitize
