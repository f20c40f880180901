"""Math answer extraction and grading with math-verify."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

# math-verify warns on every call that its signal-based timeout is off; we run it off the main thread too.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"


@dataclass
class Grade:
    """Outcome of grading one response."""

    correct: bool
    extracted: str | None
    reason: str


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = text.find("{", start)
        if i == -1:
            return None
        depth, j = 0, i
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
            j += 1
        start = text.rfind("\\boxed", 0, start)
    return None


def extract_answer(text: str) -> str | None:
    """The final answer in a response: last ``\\boxed{}``, else after "answer is"/"Answer:", else the last number."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    m = list(re.finditer(r"answer\s*(?:is|:|=)\s*:?\s*\$?(" + _NUMBER + r"|\\frac\{[^{}]*\}\{[^{}]*\})", text, re.I))
    if m:
        return m[-1].group(1).replace(",", "")
    nums = re.findall(_NUMBER, text)
    if nums:
        return nums[-1].replace(",", "").rstrip(".")
    return None


def _parse(expr: str):
    from math_verify import parse

    parsed = parse(expr if "$" in expr or "\\" not in expr else f"${expr}$", parsing_timeout=None)
    if not parsed:
        parsed = parse(f"${expr}$", parsing_timeout=None)
    return parsed


def grade(response: str, gold: str) -> Grade:
    """Grade ``response`` against ``gold`` with math-verify (numbers, fractions, LaTeX, ``\\boxed{}``)."""
    from math_verify import verify

    extracted = extract_answer(response)
    if extracted is None:
        return Grade(False, None, "no answer found in the response")
    try:
        ok = bool(verify(_parse(gold), _parse(extracted), timeout_seconds=None))
    except Exception as e:  # math-verify raises on pathological input; a bad answer is just wrong
        return Grade(False, extracted, f"could not compare answers: {type(e).__name__}")
    return Grade(ok, extracted, "correct" if ok else f"expected {gold}, got {extracted}")


def same_answer(a: str, b: str) -> bool:
    """True when two extracted final answers are equal after math-verify normalisation (e.g. ``0.5`` and ``\\frac{1}{2}``)."""
    from math_verify import verify

    if a.strip() == b.strip():
        return True
    try:
        return bool(verify(_parse(a), _parse(b), timeout_seconds=None))
    except Exception:  # math-verify raises on pathological input: treat as different answers
        return False
