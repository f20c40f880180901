"""Runs INSIDE the sandbox as ``main.py``: grades one candidate solution against one problem's tests.

Standard library only (it runs in a bare interpreter). Two processes, so the code that
decides pass/fail never shares a process with the candidate:

- the *checker* (this process) makes itself non-dumpable (no other process of its uid
  may ptrace it or open its ``/proc/PID/fd``, ``mem`` or ``environ``), drops the
  writable script directory from ``sys.path``, and forks the *candidate server*
  before it reads anything secret. Then it reads ``task.pkl`` (written by
  ``code_harness.py``) and deletes it, so the candidate can read neither the tests nor
  the reference solution, sends the candidate's source to the server, and runs the
  tests itself: HumanEval ``check(candidate)`` statements, or EvalPlus inputs whose
  expected outputs come from the reference solution (run here, before the candidate
  loads). The candidate's functions are :class:`Remote` proxies that forward each call
  to the server and wait for the answer until the run's deadline.
- the *candidate server* (the forked child) closes every descriptor but its two
  pipes to the checker (stdin, stdout and stderr become ``/dev/null``), executes the
  candidate's code and answers ``call`` requests. Values cross as ``marshal`` data and
  the checker accepts only plain built-in values (int, float, complex, str, bytes,
  bool, None, and tuples, lists, dicts, sets and frozensets of them, exact types):
  an object with its own ``__eq__``, a subclass of int or a function is a failed
  call, never a pass. An exception crosses as its class names, message and the
  candidate's traceback, and is raised again in the checker as the nearest built-in
  exception class, so tests that expect one still work. A server that dies, hangs,
  sends anything malformed or answers out of turn is finished: the unit running
  fails and no later unit runs.

Only the checker holds the result pipe (its descriptor number is in
``$ONELAYER_RESULT_FD``; the server closes it before any candidate code runs). It
writes one JSON event per line:

- ``{"event": "start", "units": N}``
- ``{"event": "syntax_error", "error": ...}`` / ``{"event": "load_error", "error": ..., "trace": ...}``
- ``{"event": "unit", "i": k, "ok": bool, ...}`` for each test unit, as it finishes
- ``{"event": "setup_error", "i": k, ...}``: a non-test statement of the tests failed before unit k
- ``{"event": "timeout"}``: the deadline passed while the candidate was running
- ``{"event": "crash", "how": "exit N" | "signal N" | "closed" | "protocol", "detail": ...}``: the server ended or broke
- ``{"event": "fatal", "error": ...}``: the problem itself is broken (its reference solution fails)
- ``{"event": "broken", "error": ...}``: the checker could not protect itself (a harness fault)
- ``{"event": "done"}``: every unit ran with the server still answering

Kinds of tests: ``asserts`` (HumanEval: each statement of ``check(candidate)`` holding
an ``assert`` that can depend on the candidate is one unit, as ``code_harness.plan_tests``
decides; other statements, ``assert True`` lines included, are setup run in order) and
``io`` (EvalPlus: each input is one unit).
"""

import builtins
import copy
import ctypes
import json
import linecache
import marshal
import math
import os
import pickle
import select
import signal
import sys
import time
import traceback

RESULT_FD_VAR = "ONELAYER_RESULT_FD"
SOLUTION_FILE = "solution.py"
_MAX_TEXT = 400
_MAX_FRAME = 64 << 20  # largest message either side accepts (bytes of marshal data)
_HEADER = 4
_PR_SET_DUMPABLE = 4
_ATOMS = frozenset((int, float, complex, str, bytes, bool, type(None)))
_CONTAINERS = frozenset((tuple, list, set, frozenset, dict))
_PLAIN_HELP = ("only plain data can be checked: int, float, complex, str, bytes, bool, None and tuples, "
               "lists, dicts and sets of them")


def _short(text, limit=_MAX_TEXT):
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_repr(value):
    try:
        return _short(repr(value), 200)
    except BaseException:  # e.g. an int too long to print
        return "<unprintable>"


def describe(exc):
    """``Type: message`` of an exception, short (for one raised by the candidate: as the server described it)."""
    remote = getattr(exc, "onelayer_remote", None)
    if remote is not None:
        return remote[0]
    try:
        message = str(exc)
    except BaseException:
        message = ""
    name = type(exc).__name__
    return _short(f"{name}: {message}" if message else name)


def remote_trace(exc):
    """The candidate's own traceback lines for an exception it raised ('' for the checker's own)."""
    remote = getattr(exc, "onelayer_remote", None)
    return remote[1] if remote is not None else ""


def is_plain(value):
    """Whether ``value`` is built only of plain built-in values (exact types; cycles allowed)."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _ATOMS:
            continue
        if t not in _CONTAINERS:
            return False
        if id(v) in seen:
            continue
        seen.add(id(v))
        if t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
        else:
            stack.extend(v)
    return True


def _frame(obj):
    data = marshal.dumps(obj)
    return len(data).to_bytes(_HEADER, "big") + data


# ---- the candidate server (the forked child) ------------------------------------------------


def _read_exact(fd, n):
    """Blocking read of ``n`` bytes (``None`` at end of file)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _receive(fd):
    header = _read_exact(fd, _HEADER)
    if header is None:
        return None
    data = _read_exact(fd, int.from_bytes(header, "big"))
    return None if data is None else marshal.loads(data)


def _send(fd, obj):
    data = memoryview(_frame(obj))
    while data:
        data = data[os.write(fd, data):]


def solution_trace(exc):
    """The candidate's own frames of a traceback (file, line, code), most recent last."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == SOLUTION_FILE]
    lines = [f"  line {f.lineno}, in {f.name}: {(f.line or '').strip()}" for f in frames[-4:]]
    return _short("\n".join(lines), 800)


def _load(source, context, entry_point):
    """Compile and run the candidate's module: ``(reply, namespace or None)``."""
    try:
        code = compile(source, SOLUTION_FILE, "exec")
    except SyntaxError as e:
        text = (e.text or "").strip()
        return ("syntax_error", _short(f"line {e.lineno}: {e.msg}" + (f": {text}" if text else ""))), None
    except (ValueError, OverflowError, MemoryError, RecursionError) as e:
        return ("syntax_error", describe(e)), None
    linecache.cache[SOLUTION_FILE] = (len(source), None, source.splitlines(True), SOLUTION_FILE)
    ns = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(context, ns)  # the prompt's own imports and helpers
        exec(code, ns)
    except BaseException as e:  # SystemExit and friends are the candidate's failures too
        return ("load_error", describe(e), solution_trace(e)), None
    if not callable(ns.get(entry_point)):
        return ("load_error", f"NameError: the solution defines no function named {entry_point!r}", ""), None
    return ("loaded",), ns


def _honest_plain(value, depth=0):
    """``value`` with the standard library's look-alikes of plain values made plain, or TypeError.

    A convenience for honest solutions (a namedtuple, an OrderedDict, defaultdict or
    Counter, a numpy scalar). It runs on the candidate's side and its output is checked
    like any other answer, so it gives hostile code nothing it could not send anyway.
    """
    t = type(value)
    if t in _ATOMS:
        return value
    if depth > 100:
        raise TypeError("nested too deeply")
    if t in _CONTAINERS or (isinstance(value, dict) and t.__module__ == "collections") or (
            isinstance(value, tuple) and hasattr(t, "_fields")):
        if isinstance(value, dict):
            return {_honest_plain(k, depth + 1): _honest_plain(v, depth + 1) for k, v in value.items()}
        base = next(b for b in (tuple, list, set, frozenset) if isinstance(value, b))
        return base(_honest_plain(v, depth + 1) for v in value)
    if t.__module__ == "numpy" and getattr(value, "shape", None) == ():
        item = value.item()
        if type(item) in _ATOMS:
            return item
    raise TypeError(f"the function returned a value of type {t.__name__!r}; {_PLAIN_HELP}")


def _answer(ns, seq, name, args, kwargs):
    """The reply to one call: ``ok`` with a plain value, or ``raise`` with the exception's description."""
    try:
        fn = ns.get(name)
        if not callable(fn):
            raise NameError(f"name {name!r} is not defined by the solution")
        value = fn(*args, **kwargs)
        try:
            return _frame(("ok", seq, value))
        except ValueError:  # not marshal data: try the standard look-alikes
            return _frame(("ok", seq, _honest_plain(value)))
    except BaseException as e:
        try:
            names = tuple(str(c.__name__) for c in type(e).__mro__)
            try:
                message = str(e)
            except BaseException:
                message = ""
            return _frame(("raise", seq, names, str(message), describe(e), solution_trace(e)))
        except BaseException:
            return _frame(("raise", seq, ("Exception",), "", "Exception: <unprintable exception>", ""))


def serve(requests, replies):
    """The candidate server's loop: load the solution, then answer calls until the checker hangs up."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    low, high = sorted((requests, replies))
    limit = os.sysconf("SC_OPEN_MAX")
    os.closerange(3, low)  # everything else, the checker's result pipe above all
    os.closerange(low + 1, high)
    os.closerange(high + 1, limit if limit > 0 else 65536)
    message = _receive(requests)
    if message is None:
        return
    _, source, context, entry_point = message
    reply, ns = _load(source, context, entry_point)
    _send(replies, reply)
    if ns is None:
        return
    while True:
        message = _receive(requests)
        if message is None:
            return
        _, seq, name, args, kwargs = message
        data = memoryview(_answer(ns, seq, name, args, kwargs))
        while data:
            data = data[os.write(replies, data):]


# ---- the checker -------------------------------------------------------------------------------


class ServerGone(BaseException):
    """The candidate server can no longer be trusted to answer.

    ``how``: ``timeout``, ``exit N``, ``signal N``, ``closed`` (it hung up but did not exit) or ``protocol``.
    """

    def __init__(self, how, detail=""):
        super().__init__(how, detail)
        self.how, self.detail = how, detail


class Server:
    """The checker's end of the candidate server: request/reply over two pipes, with a deadline."""

    def __init__(self, pid, requests, replies, deadline):
        self.pid, self.requests, self.replies, self.deadline = pid, requests, replies, deadline
        self.seq = 0
        self.gone = None  # the ServerGone that ended it (sticky)
        os.set_blocking(requests, False)

    def _fail(self, how, detail=""):
        if self.gone is None:
            if how not in ("timeout", "protocol"):
                how = self._how_it_ended() or "closed"
            self.gone = ServerGone(how, _short(detail, 200))
            self.kill()
        raise self.gone

    def _how_it_ended(self):
        # It closed its end of the pipe: usually it has exited (or is about to).
        for _ in range(50):
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                return (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                        else f"exit {os.waitstatus_to_exitcode(status)}")
            time.sleep(0.002)
        return None

    def kill(self):
        """End the server (idempotent)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def send(self, obj):
        """Send one request; ValueError when ``obj`` is not marshal data."""
        if self.gone is not None:
            raise self.gone
        data = memoryview(_frame(obj))
        while data:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([], [self.requests], [], left)[1]:
                self._fail("timeout")
            try:
                data = data[os.write(self.requests, data):]
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: it has closed its end
                self._fail("closed", "it stopped reading requests")

    def _read(self, n):
        buf = bytearray()
        while len(buf) < n:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                self._fail("timeout")
            chunk = os.read(self.replies, min(n - len(buf), 1 << 20))
            if not chunk:
                self._fail("closed", "it ended before answering")
            buf += chunk
        return bytes(buf)

    def receive(self, *kinds):
        """The next reply, a tuple whose first item is one of ``kinds``; anything else ends the server."""
        if self.gone is not None:
            raise self.gone
        size = int.from_bytes(self._read(_HEADER), "big")
        if size > _MAX_FRAME:
            self._fail("protocol", f"a reply of {size} bytes (at most {_MAX_FRAME})")
        data = self._read(size)
        try:
            reply = marshal.loads(data)
        except Exception as e:
            self._fail("protocol", f"an unreadable reply ({type(e).__name__})")
        if type(reply) is not tuple or not reply or reply[0] not in kinds or not is_plain(reply):
            self._fail("protocol", "a malformed reply")
        return reply

    def call(self, name, args, kwargs):
        """Call the solution's function ``name``; its plain result, or the matching built-in exception."""
        self.seq += 1
        try:
            self.send(("call", self.seq, name, args, kwargs))
        except ValueError:
            raise TypeError(f"the tests pass a value to {name} that cannot be sent to the solution") from None
        reply = self.receive("ok", "raise")
        if len(reply) < 3 or type(reply[1]) is not int or reply[1] != self.seq:
            self._fail("protocol", "a reply out of turn")
        if reply[0] == "ok":
            return reply[2]
        if len(reply) != 6 or type(reply[2]) not in (tuple, list) or any(type(x) is not str for x in reply[3:]):
            self._fail("protocol", "a malformed exception")
        names = [n for n in reply[2] if type(n) is str]
        raise remote_exception(names, reply[3], _short(reply[4]), _short(reply[5], 800))


def remote_exception(names, message, description, trace):
    """The first built-in exception class among ``names`` (the class and its bases), built with ``message``."""
    for name in names:
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            try:
                exc = cls(message)
            except Exception:  # e.g. UnicodeDecodeError needs five arguments
                continue
            break
    else:
        exc = Exception(message)
    exc.onelayer_remote = (description, trace)
    return exc


class Remote:
    """Stands in for one of the solution's functions in the tests: each call runs in the candidate server."""

    def __init__(self, server, name):
        self._server, self.__name__ = server, name

    def __call__(self, *args, **kwargs):
        return self._server.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<function {self.__name__}>"


class _Sink:
    """Stands in for ``sys.stdout`` while tests and the reference run: prints are dropped."""

    def write(self, s):
        return len(s)

    def flush(self):
        pass


class Reporter:
    """Writes events to the result pipe."""

    def __init__(self, fd):
        self._out = os.fdopen(fd, "w", encoding="utf-8")

    def emit(self, event, **fields):
        """Write one event line."""
        self._out.write(json.dumps({"event": event, **fields}) + "\n")
        self._out.flush()


def run_asserts(task, server, report):
    """HumanEval-style tests: run the steps of ``check(candidate)`` one by one, here, against proxies."""
    tns = {"__name__": "tests", "__builtins__": builtins}
    for name in task["names"]:
        tns[name] = Remote(server, name)
    # The prompt's helpers come from the prompt, never from the candidate, so a solution
    # that redefines one (e.g. ``poly`` for find_zero) cannot change what the tests check.
    exec(task["context"], tns)
    try:
        exec(task["prelude"], tns)
    except BaseException as e:
        report.emit("setup_error", i=0, error="the tests could not start: " + describe(e), trace=remote_trace(e))
        return False
    tns["candidate"] = tns[task["entry_point"]] = Remote(server, task["entry_point"])
    unit = 0
    for source, is_test in task["steps"]:
        try:
            exec(compile(source, "test.py", "exec"), tns)
            error = None
        except BaseException as e:
            error = e
        if server.gone is not None:  # whatever the tests made of it (a bare except, say), this unit failed
            if is_test:
                report.emit("unit", i=unit, ok=False, error=_gone_text(server.gone), trace="")
            return False
        if error is not None and not is_test:
            report.emit("setup_error", i=unit, error=describe(error), trace=remote_trace(error))
            return False
        if is_test:
            if error is None:
                report.emit("unit", i=unit, ok=True)
            else:
                report.emit("unit", i=unit, ok=False, error=describe(error), trace=remote_trace(error))
        unit += is_test
    return True


def run_io(task, server, expected, report):
    """EvalPlus-style tests: compare the candidate's output with the reference's on every input."""
    fn = Remote(server, task["entry_point"])
    for i, (inp, exp) in enumerate(zip(task["inputs"], expected)):
        try:
            out = fn(*inp)
            ok = matches(out, exp, inp, task["oracle"], task["atol"])
        except ServerGone as e:
            report.emit("unit", i=i, ok=False, error=_gone_text(e), trace="", input=_safe_repr(inp))
            return False
        except BaseException as e:
            report.emit("unit", i=i, ok=False, error=describe(e), trace=remote_trace(e), input=_safe_repr(inp))
            continue
        if ok:
            report.emit("unit", i=i, ok=True)
        else:
            report.emit("unit", i=i, ok=False, error="wrong output", input=_safe_repr(inp),
                        expected=_safe_repr(exp), got=_safe_repr(out))
    return True


def _gone_text(gone):
    if gone.how == "timeout":
        return "timeout"
    if gone.how == "protocol":
        return "the solution's process broke the test protocol: " + gone.detail
    return f"the solution's process ended ({gone.how})"


def reference_outputs(task, report):
    """The reference solution's output on every input (``None`` after emitting ``fatal``)."""
    ns = {"__name__": "reference", "__builtins__": builtins}
    try:
        exec(task["reference"], ns)
        ref = ns[task["entry_point"]]
        outputs = []
        for i, inp in enumerate(task["inputs"]):
            try:
                out = ref(*copy.deepcopy(inp))
            except BaseException as e:
                report.emit("fatal", error=f"the reference solution fails on input {i} {_safe_repr(inp)}: "
                                           f"{describe(e)}")
                return None
            outputs.append((out is not None) if task["oracle"] == "not_none" else out)
        return outputs
    except BaseException as e:
        report.emit("fatal", error="the reference solution does not load: " + describe(e))
        return None


def _is_floats(x):
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(i, float) for i in x)


def _allclose(out, exp, atol, rtol=1e-07):
    """``numpy.allclose(out, exp, rtol, atol)`` for numbers and flat sequences of numbers."""
    if isinstance(exp, (list, tuple)):
        if not isinstance(out, (list, tuple)) or len(out) != len(exp):
            return False
        return all(_allclose(o, e, atol, rtol) for o, e in zip(out, exp))
    return abs(out - exp) <= atol + rtol * abs(exp)


def _poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _pyramid_surface_area(base_edge, height):
    # Mbpp/581 accepts the slant-height reading of "height" too (as EvalPlus does).
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 2 * base_edge * slant)


def _digit_distance(a, b):
    # Mbpp/558 accepts zero-padding the shorter number (as EvalPlus does).
    sa, sb = str(a), str(b)
    width = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(width), sb.zfill(width)))


def matches(out, exp, inp, oracle, atol):
    """Whether output ``out`` is right for expected ``exp``, with EvalPlus' tolerance and special oracles."""
    if oracle == "find_zero":
        return abs(_poly(*inp, out)) <= atol
    if oracle == "set_eq":
        return set(out) == set(exp)
    if oracle == "not_none":
        return out == exp if isinstance(out, bool) else exp == (out is not None)
    exact = bool(out == exp)
    if oracle == "always":
        return True
    if oracle == "zero_ok":
        exact = exact or out == 0
    elif oracle == "surface_area":
        exact = exact or abs(out - _pyramid_surface_area(*inp)) <= atol
    elif oracle == "digit_distance":
        exact = exact or out == _digit_distance(*inp)
    if exact:
        return True
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if atol == 0 or type(out) is not type(exp):
        return False
    return _allclose(out, exp, atol)


def _protect_checker():
    """Make this process unreachable for others of its uid, and its imports independent of writable paths."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    # The script's directory is the sandbox's writable working directory: a module the
    # candidate drops there must never be imported by the tests run here.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p not in ("", ".", here)]


def _start_server():
    """Fork the candidate server; the checker's ends of its request and reply pipes."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            serve(req_r, rep_w)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(rep_w)
    return pid, req_w, rep_r


def main():
    """Fork the candidate server, load ``task.pkl``, run its tests against the candidate, report events."""
    start = time.monotonic()
    fd = os.environ.pop(RESULT_FD_VAR, None)
    if fd is None:
        sys.exit(f"{RESULT_FD_VAR} is not set: run this through code_harness.run_tests")
    result_fd = int(fd)
    os.set_inheritable(result_fd, False)
    report = None
    try:
        _protect_checker()
    except BaseException as e:
        Reporter(result_fd).emit("broken", error=f"the checker cannot protect itself: {describe(e)}")
        return
    pid, requests, replies = _start_server()  # before the task is read: the server's memory holds none of it
    report = Reporter(result_fd)
    with open("task.pkl", "rb") as f:
        task = pickle.load(f)
    os.remove("task.pkl")
    server = Server(pid, requests, replies, start + task["timeout_s"])
    io = task["kind"] == "io"
    report.emit("start", units=len(task["inputs"]) if io else sum(1 for _, t in task["steps"] if t))
    sys.stdout = _Sink()
    try:
        server.send(("load", task["solution"], task["context"], task["entry_point"]))
        expected = reference_outputs(task, report) if io else None  # while the server loads the solution
        if io and expected is None:
            return
        reply = server.receive("loaded", "syntax_error", "load_error")
        if reply[0] == "syntax_error":
            report.emit("syntax_error", error=_short(reply[1]) if len(reply) > 1 else "")
            return
        if reply[0] == "load_error":
            report.emit("load_error", error=_short(reply[1]) if len(reply) > 1 else "",
                        trace=_short(reply[2], 800) if len(reply) > 2 else "")
            return
        finished = run_io(task, server, expected, report) if io else run_asserts(task, server, report)
        if finished and server.gone is None:
            report.emit("done")
    except ServerGone:
        pass
    finally:
        sys.stdout = sys.__stdout__
        if server.gone is not None:
            gone = server.gone
            if gone.how == "timeout":
                report.emit("timeout")
            else:
                report.emit("crash", how=gone.how, detail=gone.detail)
        server.kill()


if __name__ == "__main__":
    main()
    # Nothing is left to do: skip the interpreter's teardown (about 10 ms a run).
    sys.__stdout__.flush()
    os._exit(0)
