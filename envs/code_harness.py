"""Test a candidate program against a code problem in the sandbox, and say what went wrong.

``run_tests(problem, code)`` ships ``code_runner.py`` (as the sandbox's ``main.py``)
with a pickled task: the candidate, the problem's tests split into units, or its
EvalPlus inputs and reference solution. The runner reports one event per unit as
it goes, so a submission that hangs halfway still gets credit for the units that
finished. All feedback text is ASCII and free of run-dependent details (memory
addresses, temp paths, durations), so equal failures give equal observations.

Grading is isolated from the submission (see ``code_runner.py``): inside the sandbox
the candidate's code runs in a process of its own (the candidate server) that only
answers calls with plain data (``marshal``: numbers, strings, bytes, None and
containers of them); the tests run and pass/fail is decided in a second process
(the checker), non-dumpable and forked before the task is read, which alone holds
the result pipe to us. So the candidate cannot print, forge or patch its way to a
pass (fake result lines, the runner's reporting function, ``os._exit(0)``,
monkeypatched builtins, an object whose ``__eq__`` is always true, a subclass of
int), read the tests or the reference solution, or change the prompt's helpers the
tests use. In ``process`` isolation (only when opted in, see docs/sandbox.md) it runs as
the caller's user with no filesystem isolation, so nothing (the grader included) is safe from it there.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import marshal
import pathlib
import pickle
import re
import signal
from dataclasses import dataclass

from onelayer.envs.code_data import CodeProblem
from onelayer.envs.sandbox import run_in_sandbox
from onelayer.errors import UserError

_RUNNER = pathlib.Path(__file__).with_name("code_runner.py")
# The sandbox's wall clock allows this on top of timeout_s: the checker enforces timeout_s itself
# (and reports it), the sandbox's limit is the backstop for a checker that cannot.
_GRACE_S = 0.5
# EvalPlus' special oracles (evalplus/eval/__init__.py): entry point -> how outputs are compared.
_MBPP_ORACLES = {
    "are_equivalent": "always", "sum_div": "zero_ok", "surface_Area": "surface_area",
    "digit_distance_nums": "digit_distance", "check_str": "not_none", "text_match_three": "not_none",
    "text_starta_endb": "not_none",
    **dict.fromkeys(("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                     "larg_nnum", "intersection_array", "find_dissimilar", "Diff"), "set_eq"),
}
_MAX_ERROR = 300
_MAX_DETAILS = 1200


class SandboxFailure(RuntimeError):
    """The sandbox itself failed (not the candidate): the message carries its stderr."""


@dataclass(frozen=True)
class TestOutcome:
    """The verdict on one candidate.

    ``passed``: every unit passed and the run finished. ``pass_fraction``: units passed
    / units (0 on a syntax or load error). ``error``: one short line ('' when passed).
    ``details``: the failing test, its error and the candidate's traceback (for feedback).
    """

    __test__ = False  # not a pytest test class

    passed: bool
    pass_fraction: float
    units_passed: int
    units_total: int
    error: str
    details: str
    syntax_error: bool = False
    timeout: bool = False


@dataclass(frozen=True)
class TestPlan:
    """How a problem is tested: its units, and what the runner needs."""

    __test__ = False  # not a pytest test class

    kind: str  # "asserts" or "io"
    context: str  # the prompt's imports and helper definitions
    prelude: str = ""  # test code outside check()
    steps: tuple[tuple[str, bool], ...] = ()  # (statement source, is a test unit)
    unit_texts: tuple[str, ...] = ()  # the source of each unit, for messages
    names: tuple[str, ...] = ()  # names the tests call that only the solution defines (run in its process)

    @property
    def num_units(self) -> int:
        """How many units pass_fraction is out of (asserts kind; io counts inputs)."""
        return len(self.unit_texts)


def run_tests(problem: CodeProblem, code: str, *, timeout_s: float = 5.0, memory_mb: int = 1024,
              isolation: str | None = None) -> TestOutcome:
    """Run ``problem``'s tests on the candidate program ``code`` in the sandbox."""
    plan = plan_tests(problem)
    task = {"kind": plan.kind, "entry_point": problem.entry_point, "solution": code, "context": plan.context,
            "timeout_s": float(timeout_s)}
    if plan.kind == "io":
        total = len(problem.inputs or ())
        task.update(reference=problem.reference_code, inputs=problem.inputs, atol=problem.atol,
                    oracle=_oracle(problem))
    else:
        total = plan.num_units
        task.update(prelude=plan.prelude, steps=list(plan.steps), names=list(plan.names))
    payload = pickle.dumps(task, protocol=4)
    # EvalPlus inputs can be large: the sandbox's working directory must hold them (and leave room to spare).
    disk_mb = max(64, 2 * (len(payload) >> 20) + 32)
    # memory_mb limits each of the sandbox's two processes (the checker and the candidate server).
    result = run_in_sandbox(_runner_source(), timeout_s=timeout_s + _GRACE_S, memory_mb=memory_mb,
                            files={"task.pkl": payload}, isolation=isolation, disk_mb=disk_mb,
                            max_file_mb=max(16, disk_mb), max_output_bytes=8 << 20, result_pipe=True)
    if result.status == "error":
        raise SandboxFailure(f"the sandbox could not run {problem.task_id}: {result.stderr.strip()[-1000:]}")
    events = parse_events(result.result)
    broken = next((e for e in events if e.get("event") == "broken"), None)
    if broken is not None:
        raise SandboxFailure(f"the code grader could not run {problem.task_id}: {broken.get('error', '')}")
    return _verdict(problem, plan, total, events, result.status, result.returncode, result.stderr, timeout_s)


def parse_events(text: str) -> list[dict]:
    """The checker's JSON events, one per line of its result pipe (a torn last line is ignored)."""
    events = []
    for line in text.split("\n"):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _verdict(problem, plan, total, events, status, returncode, stderr, timeout_s) -> TestOutcome:
    by_kind: dict[str, list[dict]] = {}
    for e in events:
        by_kind.setdefault(e.get("event", ""), []).append(e)
    if "fatal" in by_kind:
        raise UserError(f"{problem.task_id}: {by_kind['fatal'][0].get('error')}: the problem's data is broken")
    if "syntax_error" in by_kind:
        msg = by_kind["syntax_error"][0].get("error", "")
        return _fail(total, 0, f"syntax error: {msg}", f"SyntaxError: {msg}", syntax_error=True)
    if "load_error" in by_kind:
        e = by_kind["load_error"][0]
        details = "\n".join(x for x in (e.get("error", ""), e.get("trace", "")) if x)
        return _fail(total, 0, f"error while loading the solution: {e.get('error', '')}", details)
    units = {u["i"]: u for u in by_kind.get("unit", []) if isinstance(u.get("i"), int)}
    passed = sum(1 for u in units.values() if u.get("ok"))
    done = "done" in by_kind and status == "ok"
    if done and passed == total and total > 0:
        return TestOutcome(True, 1.0, passed, total, "", "")
    failed = sorted(i for i, u in units.items() if not u.get("ok"))
    if failed:
        i = failed[0]
        u = units[i]
        label = f"test {i + 1} of {total} failed"
        if plan.kind == "asserts":
            test = plan.unit_texts[i] if i < len(plan.unit_texts) else "?"
            details = f"Failed test: {test}\nError: {u.get('error', '')}"
        else:
            test = f"input {u.get('input', '?')}"
            details = f"Failed on input: {u.get('input', '?')}"
            if u.get("error") == "wrong output":
                details += f"\nExpected: {u.get('expected', '?')}\nGot: {u.get('got', '?')}"
            else:
                details += f"\nError: {u.get('error', '')}"
        if u.get("trace"):
            details += "\nTraceback (your code):\n" + u["trace"]
        error = f"{label}: {_short(test, 160)}: {u.get('error', '')}"
    else:
        error, details = "", ""
    if "setup_error" in by_kind:
        s = by_kind["setup_error"][0]
        error = error or f"the tests stopped: {s.get('error', '')}"
        details = details or "\n".join(x for x in (s.get("error", ""), s.get("trace", "")) if x)
    if not done:
        # How the candidate's process ended, as the checker saw it; else how the sandbox ended.
        crash = by_kind["crash"][0] if "crash" in by_kind else None
        how = str(crash.get("how", "")) if crash else ""
        kind, _, number = how.partition(" ")
        if status == "timeout" or "timeout" in by_kind or (kind == "signal" and number == str(int(signal.SIGXCPU))):
            error = f"timeout: the tests did not finish within {timeout_s:g} s ({passed} of {total} passed before)"
            details = (details + "\n" if details else "") + (
                f"Your code did not finish within {timeout_s:g} seconds: an infinite loop or a too slow algorithm?")
            return _fail(total, passed, error, details, timeout=True)
        killed_by = int(number) if kind == "signal" and number.isdigit() else (
            -returncode if crash is None and status == "killed" and returncode is not None else None)
        if killed_by is not None:
            name = _signal_name(killed_by)
            error = f"the program was killed by {name} (memory limit or a crash) ({passed} of {total} passed before)"
            return _fail(total, passed, error, (details + "\n" if details else "") + error)
        if kind == "protocol":
            error = f"the program broke the test protocol ({passed} of {total} passed before): {crash.get('detail', '')}"
            return _fail(total, passed, error, (details + "\n" if details else "") + error)
        if crash is not None or not error:
            code = number if kind == "exit" else (returncode if crash is None else "unknown")
            tail = _short(stderr.strip().split("\n")[-1] if stderr.strip() and crash is None else "", 200)
            error = f"the program exited before the tests finished (exit code {code})" + (
                f": {tail}" if tail else "")
            details = (details + "\n" if details else "") + error
    return _fail(total, passed, error or "not every test passed", details)


def _fail(total: int, passed: int, error: str, details: str, *, syntax_error: bool = False,
          timeout: bool = False) -> TestOutcome:
    fraction = passed / total if total else 0.0
    return TestOutcome(False, fraction, passed, total, clean_text(_short(error, _MAX_ERROR)),
                       clean_text(_short(details, _MAX_DETAILS)), syntax_error=syntax_error, timeout=timeout)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_text(text: str) -> str:
    """ASCII only (others backslash-escaped), no control characters but newline/tab, no memory addresses."""
    text = re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", text)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c in "\n\t" or 32 <= ord(c) < 127 else f"\\x{ord(c):02x}" for c in text)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _oracle(problem: CodeProblem) -> str | None:
    if problem.source == "mbpp+":
        return _MBPP_ORACLES.get(problem.entry_point)
    if problem.source == "humaneval+" and problem.entry_point == "find_zero":
        return "find_zero"
    return None


@functools.lru_cache(maxsize=1)
def _runner_source() -> str:
    """``main.py`` for the sandbox: ``code_runner.py``'s code object, compiled once here.

    Compiling the runner's source in every sandbox would cost about as much as running
    it; the sandbox runs this same interpreter, so its marshal data loads there as is.
    """
    code = compile(_RUNNER.read_text(), _RUNNER.name, "exec")
    return f"import marshal\nexec(marshal.loads({marshal.dumps(code)!r}))\n"


@functools.lru_cache(maxsize=4096)
def plan_tests(problem: CodeProblem) -> TestPlan:
    """Split ``problem``'s tests into units: each statement of ``check`` holding an assert on the candidate.

    Statements whose asserts cannot depend on the candidate (see :func:`tests_the_candidate`)
    run as setup, so ``pass_fraction`` counts only what the candidate can get right or wrong.
    """
    context = prompt_context(problem.prompt, problem.entry_point)
    if problem.inputs is not None:
        if problem.reference_code is None:
            raise UserError(f"{problem.task_id}: EvalPlus-style inputs need a canonical_solution")
        return TestPlan("io", context)
    try:
        module = ast.parse(problem.test)
    except SyntaxError as e:
        raise UserError(f"{problem.task_id}: its test code does not parse (line {e.lineno}: {e.msg})") from None
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is not None:
        prelude_nodes = [n for n in module.body if n is not check and not _calls_check(n)]
        body = check.body
    else:
        prelude_nodes, body = [], module.body
    names = _solution_names(module, context, problem.entry_point)
    params = {a.arg for a in check.args.args} if check is not None else set()
    tainted = candidate_dependent_names(module, {"candidate", *names, *params})
    # A statement whose asserts cannot depend on the candidate (HumanEval's `assert True, "..."` lines) still
    # runs, as setup, but is no unit: a stub would otherwise earn pass_fraction for it.
    steps = tuple((ast.unparse(n), tests_the_candidate(n, tainted)) for n in body)
    unit_texts = tuple(src for src, is_test in steps if is_test)
    if not unit_texts:
        raise UserError(f"{problem.task_id}: no assert of its tests depends on the solution (assert True and "
                        f"asserts on constants do not count): add one such as assert {problem.entry_point}(...) == ...")
    prelude = "\n".join(ast.unparse(n) for n in prelude_nodes)
    return TestPlan("asserts", context, prelude, steps, unit_texts, names)


def tests_the_candidate(stmt: ast.stmt, tainted: set[str]) -> bool:
    """Whether ``stmt`` (one statement of the tests) holds an assert whose verdict can depend on the candidate.

    ``tainted``: the names that may hold the candidate or anything it returned
    (:func:`candidate_dependent_names`). A plain ``assert`` counts when its test reads
    one of them; ``assert True`` or an assert on constants or on the tests' own values
    never does. An assert nested in a statement that calls the candidate also counts
    when its outcome is not constant-true, since control flow can carry the verdict:
    ``try: candidate(-1) except ValueError: pass else: assert False``.
    """
    asserts = [n for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
    if any(_reads(a.test, tainted) for a in asserts):
        return True
    if isinstance(stmt, ast.Assert) or not _reads(stmt, tainted):
        return False
    return any(not (isinstance(a.test, ast.Constant) and a.test.value) for a in asserts)


def candidate_dependent_names(tests: ast.Module, sources: set[str]) -> set[str]:
    """``sources`` and every name of ``tests`` that may be bound to something computed from one of them.

    A may-analysis over the whole module, blind to scopes and order (so it errs towards
    "dependent"): a name becomes dependent when it is bound (assignment, loop or
    ``with`` target, walrus, comprehension, ``except ... as``, a ``def`` or ``class``)
    from code that reads a dependent name, or passed bare to a call of one (which may
    mutate it), or the object whose method gets such code as an argument (``out.append(...)``).
    Iterated to a fixed point.
    """
    # Modules are not containers: math.fabs(candidate(x)) does not make `math` the candidate's output.
    imported = {(a.asname or a.name).split(".")[0] for n in ast.walk(tests) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}
    bindings = []  # (names bound, the nodes they are computed from)
    for node in ast.walk(tests):
        if isinstance(node, ast.Assign):
            bindings.append((_target_names(*node.targets), [node.value]))
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            bindings.append((_target_names(node.target), [node.value]))
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            bindings.append((_target_names(node.target), [node.iter]))
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            bindings.append((_target_names(node.optional_vars), [node.context_expr]))
        elif isinstance(node, ast.NamedExpr):
            bindings.append((_target_names(node.target), [node.value]))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bindings.append(({node.name}, [node]))
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            caught = {h.name for h in node.handlers if h.name}
            if caught:
                bindings.append((caught, node.body))
        elif isinstance(node, ast.Call):
            bindings.append(({a.id for a in node.args if isinstance(a, ast.Name)}, [node.func]))
            if isinstance(node.func, ast.Attribute):  # results.append(candidate(x)): results holds its output
                bindings.append((_target_names(node.func.value) - imported,
                                 [*node.args, *(k.value for k in node.keywords)]))
    tainted = set(sources)
    changed = True
    while changed:
        changed = False
        for bound, sources_of in bindings:
            if not bound <= tainted and any(_reads(n, tainted) for n in sources_of):
                tainted |= bound
                changed = True
    return tainted


def _target_names(*targets: ast.AST) -> set[str]:
    # Every name in a target, the base of ``x[i] = ...`` or ``x.a = ...`` included.
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _reads(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _solution_names(tests: ast.Module, context: str, entry_point: str) -> tuple[str, ...]:
    """The entry point, then every other name the tests use but neither they, the prompt nor builtins define."""
    used, defined = set(), set(dir(builtins)) | {"candidate", entry_point}
    for tree in (tests, ast.parse(context)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                if not isinstance(node.ctx, ast.Load):
                    defined.add(node.id)
                elif tree is tests:
                    used.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
            elif isinstance(node, ast.alias):
                defined.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                defined.add(node.name)
    return (entry_point, *sorted(used - defined))


def _calls_check(node: ast.stmt) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "check")


def prompt_context(prompt: str, entry_point: str) -> str:
    """The prompt's imports and definitions other than the entry point (helpers the solution may call)."""
    try:
        module = ast.parse(prompt)
    except SyntaxError:
        return ""
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign)
    parts = [ast.unparse(n) for n in module.body
             if isinstance(n, keep) and getattr(n, "name", None) != entry_point]
    return "\n\n".join(parts) + ("\n" if parts else "")
