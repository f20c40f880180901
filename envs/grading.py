"""Math answer extraction and grading with math-verify, bounded in time in any thread.

Grading runs on every rollout of every training step and reads whatever the
model wrote, so it must be fast in the common case and bounded in the worst:

1. plain numbers (GSM8K, the procedural levels) compare exactly, in-process;
2. an answer whose evaluation could explode (a power tower such as
   ``9^{9^{9^{9}}}``, a huge exponent or factorial, a very long or deeply nested
   expression) is not evaluated at all: it scores 0 and ``Grade.reason`` says why;
3. everything else goes to math-verify in a worker process that is killed when
   a comparison takes longer than ``GRADE_TIMEOUT_S``: it scores 0 with a reason.

math-verify's own timeout is no bound here: it uses ``SIGALRM``, which only works
in the main thread and cannot interrupt C code (sympy computing a big-integer
power holds the interpreter until it is done). A separate process can always be
killed. If the worker cannot start at all, grading stops with a UserError
rather than scoring every answer 0.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction

# math-verify warns on every call that its signal-based timeout is off; we bound time with a worker process instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)

GRADE_TIMEOUT_S = 5.0
"""Wall-clock bound of one math-verify comparison (parse both answers and verify); past it the answer scores 0."""
MAX_ANSWER_CHARS = 1000
"""Longer final answers are not evaluated (no real answer is that long; parsing time grows with length)."""
MAX_NESTING = 16
"""Deeper bracket nesting is not evaluated (``\\frac{1}{\\frac{1}{...}}`` a thousand deep)."""
MAX_EXPONENT = 100_000
"""A literal exponent above this is not evaluated (``123456^{654321}`` has millions of digits)."""
MAX_FACTORIAL = 1000
"""A literal factorial or binomial argument above this is not evaluated."""
WORKER_START_TIMEOUT_S = 120.0
"""How long a grading worker may take to start (it imports math-verify and sympy)."""
MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Grading worker processes at most; more concurrent grades wait for a free one."""


@dataclass
class Grade:
    """Outcome of grading one response."""

    correct: bool
    extracted: str | None
    reason: str


# ------------------------------------------------------------------ extraction
# A number as a model writes it. Commas are kept in the run so it can be judged whole: thousands separators are
# valid only in groups of three (1,234 and 12,345,678); "4,2" or "1,2,3" is a list (or a decimal comma), not 42/123.
_NUMBER_RUN = r"-?\d(?:[\d,]*\d)?(?:\.\d+)?(?:/\d+)?|-?\.\d+"
_VALID_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*\$?(" + _NUMBER_RUN + r"|\\frac\{[^{}]*\}\{[^{}]*\})", re.I)
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) whose braces balance, or None."""
    # Match every brace once (linear in the text, whatever the model wrote), then look up each box's closing brace.
    close_of: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            close_of[stack.pop()] = i
    starts = sorted((m.start(), m.end()) for cmd in _BOX_COMMANDS for m in re.finditer(re.escape(cmd), text))
    for _, end in reversed(starts):
        i = end
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{" and i in close_of:
            return text[i + 1 : close_of[i]]
    return None


def _number(run: str) -> str | None:
    """A number run as a plain number (thousands separators removed), or None when its commas are not separators."""
    return run.replace(",", "") if _VALID_NUMBER.fullmatch(run) else None


def extract_answer(text: str) -> str | None:
    """The final answer in a response: the last ``\\boxed{}``, else the number after the last "answer is" /
    "Answer:", else the last number in the text.

    A number may use commas only as thousands separators (``1,234``; ``$1,000`` reads as 1000). A comma-joined run
    that is not one (``4,2``, ``1,2,3``) is a list, or a decimal comma, not one number: when it is the stated or the
    last number, there is no single final answer and this returns None (unboxed lists are not guessed at; a boxed
    ``\\boxed{1,2,3}`` is returned as written and math-verify compares it as a list).
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    stated = list(_ANSWER_IS.finditer(text))
    if stated:
        answer = stated[-1].group(1)
        return answer if answer.startswith("\\frac") else _number(answer)
    runs = re.findall(_NUMBER_RUN, text)
    return _number(runs[-1]) if runs else None


# ------------------------------------------------------------------ fast path
_PLAIN = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_FRAC = re.compile(r"([+-]?)(?:\\[dt]?frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))")


def _plain_value(answer: str) -> Fraction | None:
    """The exact value of a plain number (``42``, ``-3.5``, ``1,234``, ``3/4``, ``\\frac{3}{4}``), else None."""
    s = answer.strip().strip("$").replace(" ", "")
    if len(s) > 60:  # long digit strings go to math-verify (and int() refuses > 4300 digits anyway)
        return None
    if _PLAIN.fullmatch(s):
        return Fraction(s.replace(",", ""))
    m = _FRAC.fullmatch(s)
    if m:
        num, den = (m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))
        if int(den) == 0:
            return None
        return Fraction(int(num), int(den)) * (-1 if m.group(1) == "-" else 1)
    return None


def _plain_compare(gold: str, answer: str) -> bool | None:
    """True/False when plain-number arithmetic settles the comparison, None when math-verify must decide.

    Equal values are equal; two different integers are different. Two different non-integers go to math-verify,
    which rounds floats (``0.333333`` against ``1/3``), so the result matches what it would say.
    """
    g, a = _plain_value(gold), _plain_value(answer)
    if g is None or a is None:
        return None
    if g == a:
        return True
    return False if g.denominator == 1 and a.denominator == 1 else None


# ------------------------------------------------------------------ pre-screen
_POWER = re.compile(r"\^|\*\*")
_INT = re.compile(r"\d+")
_OPERAND = re.compile(r"-?\d+(?:\.\d+)?|\\[A-Za-z]+|[A-Za-z]")


def _group_end(s: str, i: int) -> int:
    """Index just past the bracket group opening at ``s[i]`` (the end of ``s`` when it never closes)."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    depth, opener, closer = 0, s[i], pairs[s[i]]
    for j in range(i, len(s)):
        if s[j] == opener:
            depth += 1
        elif s[j] == closer:
            depth -= 1
            if depth == 0:
                return j + 1
    return len(s)


def _operand_after(s: str, i: int) -> tuple[str, int]:
    """The operand starting at ``s[i]`` (a bracket group, a number, a name or a ``\\command``) and its end."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] in "{([":
        end = _group_end(s, i)
        return s[i + 1 : end - 1], end
    m = _OPERAND.match(s, i)
    return (m.group(0), m.end()) if m else (s[i], i + 1)


def _operand_before(s: str, i: int) -> str:
    """The operand ending just before ``s[i]`` (a bracket group or a number or name)."""
    j = i - 1
    while j >= 0 and s[j] == " ":
        j -= 1
    if j < 0:
        return ""
    if s[j] in "})]":
        opener = {"}": "{", ")": "(", "]": "["}[s[j]]
        depth = 0
        for k in range(j, -1, -1):
            if s[k] == s[j]:
                depth += 1
            elif s[k] == opener:
                depth -= 1
                if depth == 0:
                    return s[k + 1 : j]
        return s[: j]
    m = re.search(r"(?:\d+|[A-Za-z]+)$", s[: j + 1])
    return m.group(0) if m else ""


def _big_literal(expr: str, limit: int) -> bool:
    return any(len(d) > len(str(limit)) or int(d) > limit for d in _INT.findall(expr))


def evaluation_risk(answer: str) -> str | None:
    """Why evaluating ``answer`` could take unbounded time or memory, or None when it looks safe to evaluate.

    A cheap syntactic screen run before math-verify: power towers (a power in an exponent, ``9^{9^{9^{9}}}``,
    ``2**3**4``), a literal exponent above ``MAX_EXPONENT``, a factorial or binomial of a literal above
    ``MAX_FACTORIAL`` or of a power, more than ``MAX_ANSWER_CHARS`` characters, bracket nesting deeper than
    ``MAX_NESTING``. It is a first line only; the worker-process timeout bounds whatever it lets through.
    """
    if len(answer) > MAX_ANSWER_CHARS:
        return f"the answer is {len(answer)} characters long (more than {MAX_ANSWER_CHARS})"
    depth = deepest = 0
    for ch in answer:
        depth += ch in "{(["
        depth -= ch in "})]"
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        return f"the answer nests brackets {deepest} deep (more than {MAX_NESTING})"
    for m in _POWER.finditer(answer):
        exponent, end = _operand_after(answer, m.end())
        if _POWER.search(exponent) or _POWER.match(answer[end:].lstrip()):
            return f"a power tower (a power in an exponent) near {answer[max(0, m.start() - 10): end + 10]!r}"
        if _big_literal(exponent, MAX_EXPONENT):
            return f"an exponent above {MAX_EXPONENT} in {answer[max(0, m.start() - 10): end + 10]!r}"
    for m in re.finditer(r"!", answer):
        if answer[m.end() : m.end() + 1] == "=":  # "!=" is not a factorial
            continue
        arg = _operand_before(answer, m.start())
        if _POWER.search(arg) or _big_literal(arg, MAX_FACTORIAL):
            return f"a factorial of a power or of a number above {MAX_FACTORIAL} ({arg}!)"
    for m in re.finditer(r"\\[dt]?binom|\\choose", answer):
        if m.group(0) == "\\choose":  # {n \choose k}
            args = [_operand_before(answer, m.start()), _operand_after(answer, m.end())[0]]
        else:
            first, end = _operand_after(answer, m.end())
            args = [first, _operand_after(answer, end)[0]]
        if any(_POWER.search(a) or _big_literal(a, MAX_FACTORIAL) for a in args):
            return f"a binomial of a power or of a number above {MAX_FACTORIAL} ({', '.join(args)})"
    return None


# ------------------------------------------------------------------ math-verify, in-process (worker side)
def _parse(expr: str):
    """math-verify's reading of an answer: as LaTeX first (so ``1+x^2`` is a polynomial, ``1,234`` a number and
    ``4,2`` the list {4, 2}), as plain text when LaTeX finds nothing."""
    from math_verify import parse

    parsed = parse(expr if "$" in expr else f"${expr}$", parsing_timeout=None)
    if not parsed:
        parsed = parse(expr, parsing_timeout=None)
    return parsed


def _verify_here(gold: str, answer: str) -> bool:
    """math-verify's verdict, unbounded: only ever called inside a worker process (see ``_serve``)."""
    from math_verify import verify

    return bool(verify(_parse(gold), _parse(answer), timeout_seconds=None))


def _serve() -> None:
    """A grading worker's loop: one JSON request ``{"gold", "answer"}`` per stdin line, one JSON reply per line."""
    # Replies go to a private copy of stdout; fd 1 itself now points at stderr, so nothing math-verify, sympy or a
    # C extension prints can corrupt them.
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:  # a runaway big-number computation fails with MemoryError instead of taking the machine's memory
        import resource

        with open("/proc/self/statm") as f:
            in_use = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = in_use + (4 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ImportError, ValueError, OSError):  # not Linux, or a lower hard limit already set: keep what there is
        pass
    import math_verify  # noqa: F401  (fails here, visibly, when it is not installed)

    _verify_here("1", "1")  # warm the parser so the first real grade is not charged for it
    protocol.write('{"ready": true}\n')
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"same": _verify_here(request["gold"], request["answer"])}
        except Exception as e:  # math-verify raises on pathological input; the caller scores it 0 with the reason
            reply = {"error": type(e).__name__}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


# ------------------------------------------------------------------ math-verify, bounded (caller side)
class GradeTimeout(Exception):
    """A comparison ran past its time bound; its worker was killed."""


class _Worker:
    """One grading process: ``python -m onelayer.envs.grading`` answering comparisons over pipes."""

    def __init__(self) -> None:
        from onelayer.errors import UserError

        self.proc = subprocess.Popen([sys.executable, "-m", "onelayer.envs.grading"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self._read(WORKER_START_TIMEOUT_S)
        if not line or line.strip() != '{"ready": true}':
            self.kill()
            raise UserError(
                f"the math grading worker (python -m onelayer.envs.grading) did not start within "
                f"{WORKER_START_TIMEOUT_S:g} s (exit code {self.proc.returncode}; its error, if any, is printed above): "
                "math answers cannot be graded with a time bound; check that math-verify imports "
                "(pip install math-verify) and that this system can start Python subprocesses")

    def _read(self, timeout_s: float) -> str | None:
        """The next reply line, or None when none came within ``timeout_s`` (a dead worker gives "")."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return self.proc.stdout.readline() if ready else None

    def compare(self, gold: str, answer: str, timeout_s: float) -> dict:
        """The worker's reply to one comparison; GradeTimeout (and the worker killed) when it takes too long."""
        try:
            self.proc.stdin.write(json.dumps({"gold": gold, "answer": answer}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return {"error": "the grading worker died"}
        line = self._read(timeout_s)
        if line is None:
            self.kill()
            raise GradeTimeout
        if not line:
            self.kill()
            return {"error": f"the grading worker died (exit code {self.proc.poll()})"}
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class _WorkerPool:
    """Up to ``MAX_WORKERS`` grading processes shared by every thread of this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child must not share its parent's workers (their pipes are the parent's)
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(MAX_WORKERS)
        self._lock = threading.Lock()

    def compare(self, gold: str, answer: str, timeout_s: float) -> dict:
        with self._slots:  # each comparison holds one worker; its bound keeps the wait bounded too
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive:
                worker = _Worker()
            reply = worker.compare(gold, answer, timeout_s)  # GradeTimeout: the worker is dead, not returned
            if worker.alive:
                with self._lock:
                    self._idle.append(worker)
            return reply

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for w in workers:
            w.kill()


_pool: _WorkerPool | None = None
_pool_lock = threading.Lock()


def _workers() -> _WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _WorkerPool()
            atexit.register(_pool.close)
        return _pool


def _bounded_compare(gold: str, answer: str, timeout_s: float) -> tuple[bool, str | None]:
    """(same, None) from math-verify in a worker, or (False, why not) on a timeout or a math-verify error."""
    try:
        reply = _workers().compare(gold, answer, timeout_s)
    except GradeTimeout:
        return False, f"comparing the answers took longer than {timeout_s:g} s; the answer scores 0"
    if "error" in reply:
        return False, f"could not compare answers: {reply['error']}"
    return bool(reply["same"]), None


# ------------------------------------------------------------------ public API
def grade(response: str, gold: str, timeout_s: float = GRADE_TIMEOUT_S) -> Grade:
    """Grade ``response`` against ``gold`` (numbers, fractions, LaTeX, ``\\boxed{}``), within about ``timeout_s``.

    Safe to call from any thread. An answer that could not be compared in time, or is not evaluated at all (see
    :func:`evaluation_risk`), is wrong, and ``reason`` says why.
    """
    extracted = extract_answer(response)
    if extracted is None:
        return Grade(False, None, "no answer found in the response")
    wrong = f"expected {gold}, got {extracted}"
    if extracted == gold.strip():
        return Grade(True, extracted, "correct")
    plain = _plain_compare(gold, extracted)
    if plain is not None:
        return Grade(plain, extracted, "correct" if plain else wrong)
    risk = evaluation_risk(extracted)
    if risk:
        return Grade(False, extracted, f"answer not evaluated: {risk}; it scores 0")
    ok, why_not = _bounded_compare(gold, extracted, timeout_s)
    if why_not:
        return Grade(False, extracted, why_not)
    return Grade(ok, extracted, "correct" if ok else wrong)


def same_answer(a: str, b: str, timeout_s: float = GRADE_TIMEOUT_S) -> bool:
    """True when two extracted final answers are equal after math-verify normalisation (e.g. ``0.5`` and
    ``\\frac{1}{2}``); answers that cannot be compared within the time bound count as different."""
    if a.strip() == b.strip():
        return True
    plain = _plain_compare(a, b)
    if plain is not None:
        return plain
    if evaluation_risk(a) or evaluation_risk(b):
        return False
    return _bounded_compare(a, b, timeout_s)[0]


if __name__ == "__main__":
    _serve()
