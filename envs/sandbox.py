"""Run untrusted Python code in a sandbox: one fresh, isolated process tree per call.

``run_in_sandbox(code, timeout_s, memory_mb)`` writes ``code`` to ``main.py`` in a
private working directory, runs it with the current Python interpreter and returns
a :class:`SandboxResult`. docs/sandbox.md says exactly what each level isolates.

``namespaces`` (root with CAP_SYS_ADMIN, e.g. a CI container or a server)
    New PID, mount, network, IPC and UTS namespaces via util-linux ``unshare``.
    The program sees a read-only root holding only the system libraries and the
    Python installation (wherever it lives, a venv under ``/tmp`` included), a
    private ``/tmp`` and its working directory ``/sandbox`` (size-limited tmpfs,
    gone when the run ends); no network interface is up; it runs as an unprivileged
    uid of its own with an empty capability bounding set and ``no_new_privs``. When
    the program ends or is killed, the kernel kills every process left in its PID
    namespace (double-forked, ``setsid`` daemons too).
``userns``
    The same through an unprivileged user namespace (no root needed), except that
    the program keeps the caller's uid (without capabilities).
``process``
    Weak isolation, used only when asked for by name (``isolation="process"`` or
    ``ONELAYER_SANDBOX_ISOLATION=process``): a new session with resource limits in a
    temporary directory; the process group is killed at the end and processes that
    left it are found by an environment tag and killed. There is NO filesystem,
    network or uid isolation: every such run logs a warning.

Fail closed: by default (:func:`isolation_level`) the strongest namespaced level
that works here is used; when none works, a :class:`UserError` says why and how to
fix it. The sandbox never falls back to ``process`` on its own.

In every mode: a wall-clock limit, a CPU-time limit (``RLIMIT_CPU``), an address
space limit (``RLIMIT_AS``), a process limit (``RLIMIT_NPROC``, against fork
bombs), a file size limit (``RLIMIT_FSIZE``) and a cap on the captured output.

``result_pipe=True`` gives the program a channel besides stdout: the write end of a
pipe, at the descriptor number in ``$ONELAYER_RESULT_FD``, whose content comes back
as ``SandboxResult.result``. Unlike stdout (a file, which in ``process`` mode sits
next to the program's working directory), nothing can reach it by path; a program
that runs untrusted code in a child closes it there (see ``code_runner.py``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
import secrets
import select
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from onelayer.errors import UserError

log = logging.getLogger(__name__)

LEVELS = ("namespaces", "userns", "process")
NAMESPACED = ("namespaces", "userns")
ISOLATION_VAR = "ONELAYER_SANDBOX_ISOLATION"
_INIT = str(pathlib.Path(__file__).with_name("sandbox_init.py"))
_TAG_VAR = "ONELAYER_SANDBOX_TAG"
RESULT_FD_VAR = "ONELAYER_RESULT_FD"
_BACKSTOP_S = 3.0
# Uids handed to sandboxed programs in ``namespaces`` mode: far above any login or
# system account, one per run, so RLIMIT_NPROC counts only that run's processes.
UID_BASE, UID_SPAN = 1_700_000_000, 1 << 20
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                 "/etc/ld.so.cache", "/etc/localtime")
# Binding one of these (or anything under the last three) would expose the host's /tmp or clash with
# the sandbox's own mounts.
_UNBINDABLE, _UNBINDABLE_UNDER = ("/", "/tmp"), ("/sandbox", "/proc", "/dev")
_FIX = ("install util-linux and run as root with CAP_SYS_ADMIN, or allow unprivileged user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0); "
        "or accept running untrusted code WITHOUT filesystem/network isolation with "
        f"{ISOLATION_VAR}=process or the Code-v0 option isolation=process (see docs/sandbox.md)")


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended.

    ``status``: ``ok`` (exit code 0), ``failed`` (non-zero exit, e.g. an uncaught
    exception), ``timeout`` (wall-clock or CPU limit), ``killed`` (ended by another
    signal, e.g. SIGSEGV) or ``error`` (the sandbox itself could not start; see
    ``stderr``). ``returncode`` is the exit code, or minus the signal number.
    ``stdout``/``stderr`` are decoded (UTF-8, invalid bytes replaced) and capped at
    ``max_output_bytes`` each. ``isolation`` is the level that ran it. ``result`` is
    what the program wrote to its result pipe (``result_pipe=True``), decoded and capped
    the same way.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    duration_s: float
    isolation: str
    result: str = ""

    @property
    def ok(self) -> bool:
        """True when the program exited with code 0 within its limits."""
        return self.status == "ok"


def run_in_sandbox(
    code: str,
    timeout_s: float = 3.0,
    memory_mb: int = 1024,
    *,
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    max_processes: int = 32,
    max_file_mb: int = 16,
    disk_mb: int = 64,
    max_output_bytes: int = 1 << 20,
    isolation: str | None = None,
    tmp_dir: str | os.PathLike | None = None,
    result_pipe: bool = False,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` with the current Python interpreter, isolated; never raises for bad code.

    Raises UserError when the sandbox cannot isolate it (no namespaced level works and
    ``process`` was not asked for) or for bad arguments.

    Args:
        code: Python source of the program.
        timeout_s: wall-clock limit; the CPU-time limit is ``ceil(timeout_s)`` seconds.
        memory_mb: address-space limit of each process (``RLIMIT_AS``).
        files: extra files for the working directory, ``{relative name: content}``.
        env: extra environment variables (the environment is otherwise minimal).
        max_processes: processes + threads the program may have at once (``RLIMIT_NPROC``).
        max_file_mb: largest file it may write (``RLIMIT_FSIZE``).
        disk_mb: size of its working directory and of its ``/tmp`` (namespaced modes).
        max_output_bytes: how much of stdout and of stderr is kept.
        isolation: ``namespaces``, ``userns`` or ``process`` (weak: see the module doc; warned about on
            every run). Default: :func:`isolation_level`, which raises UserError when no namespaced level works.
        tmp_dir: where the run's temporary directory goes (default: the system's).
        result_pipe: give the program a result pipe (``$ONELAYER_RESULT_FD``); see ``SandboxResult.result``.
    """
    level = isolation or isolation_level()
    if level not in LEVELS:
        raise UserError(f"unknown sandbox isolation {level!r}: use one of {', '.join(LEVELS)}")
    if timeout_s <= 0 or memory_mb <= 0 or max_processes < 1:
        raise UserError(f"sandbox limits must be positive (timeout_s={timeout_s}, memory_mb={memory_mb}, "
                        f"max_processes={max_processes})")
    if level == "process":
        log.warning(weak_isolation_warning())
    with tempfile.TemporaryDirectory(prefix="onelayer-sandbox-", dir=tmp_dir, ignore_cleanup_errors=True) as run_dir:
        return _run(code, timeout_s, memory_mb, dict(files or {}), dict(env or {}), max_processes,
                    max_file_mb, disk_mb, max_output_bytes, level, pathlib.Path(run_dir), result_pipe)


def _run(code, timeout_s, memory_mb, files, env, max_processes, max_file_mb, disk_mb, max_output_bytes,
         level, run_dir: pathlib.Path, result_pipe: bool) -> SandboxResult:
    inbox = run_dir / "work"
    inbox.mkdir()
    _write_files(inbox, {"main.py": code, **files})
    tag = secrets.token_hex(16)
    namespaced = level != "process"
    uid = (UID_BASE + secrets.randbelow(UID_SPAN)) if level == "namespaces" else None
    if level == "process":
        inbox.chmod(0o700)
    params = {
        "mode": level, "root": str(run_dir / "root"), "inbox": str(inbox),
        "binds": _bind_paths() if namespaced else [], "uid": uid, "gid": uid,
        "limits": {"cpu_s": max(1, math.ceil(timeout_s)), "as_bytes": memory_mb << 20,
                   "nproc": _nproc_limit(level, max_processes), "fsize_bytes": max_file_mb << 20,
                   "nofile": 256, "core": 0},
        "tmp_bytes": disk_mb << 20, "disk_bytes": disk_mb << 20,
        "argv": [sys.executable, "-s", "-B", "main.py"],
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/sandbox" if namespaced else str(inbox),
                "TMPDIR": "/tmp" if namespaced else str(inbox), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **env, _TAG_VAR: tag},
        "deadline_s": timeout_s, "status_fd": None,
    }
    (run_dir / "root").mkdir()
    out_path, err_path = run_dir / "stdout", run_dir / "stderr"
    status_r = status_w = result_r = result_w = None
    if result_pipe:
        result_r, result_w = os.pipe()
        os.set_blocking(result_r, False)
        params["result_fd"] = result_w
        params["env"][RESULT_FD_VAR] = str(result_w)
    if namespaced:
        status_r, status_w = os.pipe()
        os.set_blocking(status_r, False)
        params["status_fd"] = status_w
        cmd = [_unshare(level), "--pid", "--fork", "--kill-child", "--mount", "--net", "--ipc", "--uts"]
        if level == "userns":
            cmd += ["--user", "--map-root-user"]
        cmd += ["--", sys.executable, "-I", "-S", _INIT, json.dumps(params)]
    else:
        cmd = [sys.executable, "-I", "-S", _INIT, json.dumps(params)]
    start = time.monotonic()
    results = _Collector(result_r, max_output_bytes) if result_pipe else None
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=run_dir,
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
                                    pass_fds=tuple(fd for fd in (status_w, result_w) if fd is not None),
                                    start_new_session=True)
        except OSError as e:
            _close(status_r, status_w, result_r, result_w)
            return SandboxResult("error", "", f"cannot start the sandbox: {e}", None, 0.0, level)
        _close(status_w, result_w)
        # Namespaced: PID 1 enforces the time limit itself, so its exit (which the kernel
        # completes only once every process in the namespace is gone) comes before
        # unshare's; our own timer is a backstop for a PID 1 that hangs.
        timed_out = not _wait_exited(proc.pid, timeout_s + (_BACKSTOP_S if namespaced else 0.0), results)
        # The leader is dead or a zombie (not yet reaped), so its pid still names our process group.
        _kill_group(proc.pid)
        returncode = proc.wait()
        if not namespaced:
            _kill_tagged(tag)
    duration = time.monotonic() - start
    report = _read_status(status_r) if namespaced else ""
    _close(status_r)
    result = ""
    if results is not None:
        results.read_available()
        result = results.text()
        _close(result_r)
    stdout, stderr = _read_capped(out_path, max_output_bytes), _read_capped(err_path, max_output_bytes)
    status, code_out = _classify(timed_out, report, returncode, namespaced)
    if status == "error":
        stderr = (report.removeprefix("setup-error ").strip() or f"sandbox exited with {returncode}") + "\n" + stderr
    return SandboxResult(status, stdout, stderr, code_out, duration, level, result)


def _classify(timed_out: bool, report: str, returncode: int, namespaced: bool) -> tuple[str, int | None]:
    """(status, returncode) from our timer, PID 1's report (namespaced) or the exit status (process)."""
    if timed_out:
        return "timeout", None
    if namespaced:
        first = report.strip().splitlines()[0] if report.strip() else ""
        kind, _, value = first.partition(" ")
        if kind == "exit":
            code = int(value)
            return ("ok" if code == 0 else "failed"), code
        if kind == "signal":
            sig = int(value)
            return ("timeout" if sig == signal.SIGXCPU else "killed"), -sig
        if kind == "timeout":
            return "timeout", None
        return "error", returncode
    if returncode == 0:
        return "ok", 0
    if returncode < 0:
        return ("timeout" if -returncode == signal.SIGXCPU else "killed"), returncode
    return "failed", returncode


def isolation_level() -> str:
    """The isolation :func:`run_in_sandbox` uses by default; UserError when no real isolation works.

    ``ONELAYER_SANDBOX_ISOLATION`` picks a level (``process`` opts in to weak isolation);
    otherwise the strongest namespaced level that works here. Never ``process`` unasked.
    """
    return resolve_isolation(None)


def resolve_isolation(isolation: str | None) -> str:
    """The level to run untrusted code at, checked to work here (fail closed).

    ``isolation`` (e.g. an env option) wins over ``ONELAYER_SANDBOX_ISOLATION``; with
    neither, the strongest of ``namespaces``/``userns`` that works. A namespaced level
    is probed once per process (and ``unshare`` location); ``process`` is accepted only
    by name, with a warning. Raises UserError naming the cause and the fix otherwise.
    """
    source = "isolation"
    if isolation is None:
        isolation, source = os.environ.get(ISOLATION_VAR) or None, ISOLATION_VAR
    if isolation is None:
        return _best_level()
    if isolation not in LEVELS:
        raise UserError(f"{source}={isolation!r}: use one of {', '.join(LEVELS)}")
    if isolation == "process":
        log.warning("%s=process: %s", source, weak_isolation_warning())
        return isolation
    problem = _probe(isolation, shutil.which("unshare"), os.geteuid())
    if problem:
        raise UserError(f"sandbox isolation {isolation!r} (asked for by {source}) does not work here: {problem}; "
                        f"fix: {_FIX}")
    return isolation


def weak_isolation_warning() -> str:
    """The warning every ``process``-isolated run logs: what the untrusted code can do."""
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return (f"UNSAFE sandbox isolation 'process' (opted in): untrusted code runs as {who} with NO filesystem, "
            "network or uid isolation; it can read, change and delete this user's files and reach the network "
            "(docs/sandbox.md)")


def _best_level() -> str:
    unshare, euid = shutil.which("unshare"), os.geteuid()
    reasons = []
    for level in NAMESPACED:
        problem = _probe(level, unshare, euid)
        if not problem:
            return level
        reasons.append(f"{level}: {problem}")
    raise UserError(f"no sandbox isolation works here, so untrusted code will not run ({'; '.join(reasons)}); "
                    f"fix: {_FIX}")


_WORKS: set[tuple[str, str, int]] = set()


def _probe(level: str, unshare: str | None, euid: int) -> str:
    """'' when ``level`` runs a program here, else why not (one line).

    A success is remembered per (level, unshare path, euid); a failure is probed again next
    time, so a probe that lost a race on a busy machine does not refuse for good.
    """
    if unshare is None:
        return "util-linux `unshare` is not on PATH"
    if level == "namespaces" and euid != 0:
        return "needs root (with CAP_SYS_ADMIN)"
    if (level, unshare, euid) in _WORKS:
        return ""
    r = run_in_sandbox("print('sandbox-ok')", timeout_s=10.0, isolation=level)
    if r.status == "ok" and r.stdout.strip() == "sandbox-ok":
        _WORKS.add((level, unshare, euid))
        log.info("sandbox isolation: %s (PID/mount/net namespaces%s)", level,
                 ", unprivileged uid" if level == "namespaces" else ", user namespace")
        return ""
    return f"{r.status}: {' '.join(r.stderr.split())[-300:]}"


def _write_files(inbox: pathlib.Path, files: Mapping[str, str | bytes]) -> None:
    for name, content in files.items():
        rel = pathlib.PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise UserError(f"sandbox file name {name!r} must be a relative path inside the working directory")
        path = inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


@functools.lru_cache(maxsize=1)
def _bind_paths() -> list[str]:
    """Host paths visible (read-only) in the sandbox: system libraries and this Python installation.

    The installation is found wherever it lives (sandbox_init binds paths under ``/tmp``
    on top of the private ``/tmp``): the prefixes, the interpreter and its real path, the
    standard library and the site-packages in use, each as given and resolved. Parents
    come before children; a path inside one already listed is left out.
    """
    wanted = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, sys.executable,
              os.path.dirname(sys.executable), getattr(sys, "_base_executable", sys.executable)]
    wanted += [p for p in site.getsitepackages() if os.path.exists(p)]
    paths = sysconfig.get_paths()
    wanted += [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if os.path.exists(paths[k])]
    candidates = {os.path.abspath(p) for p in wanted if p} | {os.path.realpath(p) for p in wanted if p}
    for p in candidates:
        if p in _UNBINDABLE or any(p == q or p.startswith(q + "/") for q in _UNBINDABLE_UNDER):
            raise UserError(f"the Python installation path {p} cannot be shown inside the sandbox (it would expose "
                            "or clash with the sandbox's own /, /tmp, /dev, /proc or /sandbox): install Python "
                            "or the venv in a directory of its own")
    chosen = list(_SYSTEM_PATHS)
    for p in sorted(candidates, key=lambda p: (p.count("/"), p)):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in chosen):
            chosen.append(p)
    return chosen


def _unshare(level: str) -> str:
    path = shutil.which("unshare")
    if path is None:
        raise UserError(f"sandbox isolation {level!r} needs util-linux `unshare` on PATH (apt-get install "
                        f"util-linux); or opt in to weak isolation with {ISOLATION_VAR}=process (docs/sandbox.md)")
    return path


def _nproc_limit(level: str, max_processes: int) -> int:
    # RLIMIT_NPROC counts every process of the uid. Namespaced runs have a uid (or user
    # namespace) of their own; a process-mode run shares the caller's, so allow what it already has.
    if level != "process":
        return max_processes
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count + max_processes


class _Collector:
    """Drains a non-blocking pipe into memory: the first ``limit`` bytes are kept, the rest read and dropped."""

    def __init__(self, fd: int, limit: int):
        self.fd, self.limit = fd, limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False

    def read_available(self) -> None:
        """Read what the pipe holds now (never blocks)."""
        while not self.eof:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self.eof = True
                return
            if self.size < self.limit:
                self.chunks.append(data[: self.limit - self.size])
            self.size += len(data)

    def text(self) -> str:
        """What was kept, decoded (UTF-8, invalid bytes replaced), marked when truncated."""
        text = b"".join(self.chunks).decode(errors="replace")
        return text + ("\n[output truncated]" if self.size > self.limit else "")


def _wait_exited(pid: int, timeout_s: float, drain: _Collector | None = None) -> bool:
    """Wait until ``pid`` exits without reaping it, draining ``drain`` meanwhile; False on timeout."""
    deadline = time.monotonic() + timeout_s
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            while True:
                watched = [fd] + ([drain.fd] if drain is not None and not drain.eof else [])
                ready, _, _ = select.select(watched, [], [], max(0.0, deadline - time.monotonic()))
                if fd in ready:
                    return True
                if not ready:
                    return False
                drain.read_available()
        finally:
            os.close(fd)
    while time.monotonic() < deadline:
        if drain is not None:
            drain.read_available()
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.005)
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_sweep_lock = threading.Lock()


def _kill_tagged(tag: str) -> None:
    """Process mode: kill processes that left the process group but still carry this run's tag."""
    needle = f"{_TAG_VAR}={tag}".encode()
    with _sweep_lock:
        for _ in range(3):  # a stray may fork while we sweep
            found = False
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/environ", "rb") as f:
                        if needle in f.read().split(b"\0"):
                            os.kill(int(entry.name), signal.SIGKILL)
                            found = True
                except OSError:
                    pass
            if not found:
                return


def _read_status(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def _read_capped(path: pathlib.Path, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode(errors="replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
