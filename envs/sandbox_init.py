"""The first process inside a sandbox: builds its filesystem, drops privileges, runs the program.

``envs/sandbox.py`` starts this file as ``python -I -S sandbox_init.py PARAMS_JSON``;
it imports nothing from onelayer (it runs before and outside the package's
environment) and only the standard library.

Modes (``PARAMS["mode"]``):

- ``namespaces`` / ``userns``: we run as PID 1 of fresh PID, mount, network, IPC
  and UTS namespaces (``unshare``; ``userns`` adds a user namespace for callers
  without root). We mount a minimal read-only root (system libraries and the Python
  installation, nothing else), a small private ``/tmp`` (with the installation's
  paths under ``/tmp``, if any, bound read-only on top) and ``/sandbox`` (tmpfs),
  ``pivot_root`` into it, fork the program with resource limits under an
  unprivileged uid and an empty capability bounding set, wait for it, report how it
  ended on the status pipe and exit. When PID 1 exits the kernel kills every process
  left in the namespace, daemons included.
- ``process``: weak isolation the caller opted in to; set the resource limits and exec the
  program in place (the caller kills its process group and sweeps for strays).

Status lines written to ``PARAMS["status_fd"]``: ``exit N``, ``signal N``,
``timeout`` or ``setup-error MESSAGE``. ``PARAMS["result_fd"]`` (optional) is the
program's result pipe: it passes to the program only; PID 1 closes its copy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import resource
import shutil
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, arg: int) -> int:
    return _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _bind_readonly(source: str, target: str) -> None:
    """Bind ``source`` at ``target`` read-only, keeping the flags a user namespace may not clear."""
    _mount(source, target, None, MS_BIND)
    st = os.statvfs(target).f_flag
    keep = 0
    for st_flag, ms_flag in ((os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if st & st_flag:
            keep |= ms_flag
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)


def _place(host_path: str, root: str) -> None:
    """Make ``host_path`` appear at the same path under ``root``: a symlink stays a symlink, else a ro bind."""
    target = root + host_path
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.islink(host_path):
        if not os.path.lexists(target):
            os.symlink(os.readlink(host_path), target)
        return
    if os.path.isdir(host_path):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        open(target, "a").close()
    _bind_readonly(host_path, target)


def _build_root(p: dict) -> None:
    """Mount the sandbox's filesystem under ``p["root"]`` and pivot into it."""
    root = p["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    # The private /tmp comes before the binds: a Python installation under the host's /tmp (a venv
    # in /tmp/venv) is then bound on top of it, read-only, and the rest of the host's /tmp stays out.
    os.makedirs(root + "/tmp", exist_ok=True)
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={p['tmp_bytes']},mode=1777")
    for path in p["binds"]:  # parents before children
        if os.path.lexists(path):
            _place(path, root)
    os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
    for dev in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{dev}", "a").close()
        _mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
    os.makedirs(root + "/proc", mode=0o755, exist_ok=True)
    try:  # a fresh procfs shows only this PID namespace; some user-namespace setups refuse it
        _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass
    uid, gid = p.get("uid"), p.get("gid")
    owner = f",uid={uid},gid={gid}" if uid is not None else ""
    os.makedirs(root + "/sandbox", exist_ok=True)
    _mount("tmpfs", root + "/sandbox", "tmpfs", MS_NOSUID | MS_NODEV, f"size={p['disk_bytes']},mode=0700{owner}")
    for name in os.listdir(p["inbox"]):
        src, dst = os.path.join(p["inbox"], name), os.path.join(root, "sandbox", name)
        (shutil.copytree if os.path.isdir(src) else shutil.copyfile)(src, dst)
    if uid is not None:
        for dirpath, dirnames, filenames in os.walk(root + "/sandbox"):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, gid)
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no path back.
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(number, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/sandbox")


def _apply_limits(limits: dict) -> None:
    """Hard resource limits (soft = hard, so the program cannot raise them)."""
    cpu = int(limits["cpu_s"])
    # SIGXCPU at the soft limit (reported as a timeout), SIGKILL one second later.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, key in (("RLIMIT_AS", "as_bytes"), ("RLIMIT_NPROC", "nproc"), ("RLIMIT_FSIZE", "fsize_bytes"),
                      ("RLIMIT_NOFILE", "nofile"), ("RLIMIT_CORE", "core")):
        value = limits.get(key)
        if value is not None:
            resource.setrlimit(getattr(resource, name), (int(value), int(value)))


def _drop_privileges(p: dict) -> None:
    """Empty the capability bounding set, switch to the sandbox uid, forbid regaining privileges."""
    cap = 0
    while _prctl(PR_CAPBSET_DROP, cap) == 0:  # EINVAL past the last capability
        cap += 1
    if p.get("uid") is not None:
        os.setgroups([])
        os.setgid(p["gid"])
        os.setuid(p["uid"])
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "no_new_privs")


def _run_child(p: dict, status_fd: int) -> None:
    """In the forked child: limits, privileges, exec. Never returns."""
    try:
        os.setsid()
        _apply_limits(p["limits"])
        _drop_privileges(p)
        os.execve(p["argv"][0], p["argv"], p["env"])
    except BaseException as e:  # report anything that stops the launch
        os.write(status_fd, f"setup-error cannot start the program: {type(e).__name__}: {e}\n".encode())
    os._exit(127)


class _Deadline(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Deadline


def _wait_for(child: int, deadline_s: float) -> str:
    """Reap children until ``child`` ends (or the deadline passes); describe how it ended."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, deadline_s)
    try:
        while True:
            pid, status = os.wait()
            if pid == child:
                break
    except _Deadline:
        return "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def main() -> None:
    """Entry point: ``python -I -S sandbox_init.py PARAMS_JSON``."""
    p = json.loads(sys.argv[1])
    if p["mode"] == "process":
        os.chdir(p["inbox"])
        _apply_limits(p["limits"])
        os.execve(p["argv"][0], p["argv"], p["env"])
    status_fd = p["status_fd"]
    os.set_inheritable(status_fd, False)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # if unshare dies, so do we, and with us the namespace
    _prctl(PR_SET_DUMPABLE, 0)  # the program may not open our fds through /proc/1/fd
    try:
        _build_root(p)
    except BaseException as e:
        os.write(status_fd, f"setup-error building the sandbox filesystem failed: {type(e).__name__}: {e}\n".encode())
        sys.exit(1)
    child = os.fork()
    if child == 0:
        _run_child(p, status_fd)
    if p.get("result_fd") is not None:
        os.close(p["result_fd"])
    os.write(status_fd, (_wait_for(child, p["deadline_s"]) + "\n").encode())
    # Exiting as PID 1 makes the kernel SIGKILL everything still alive in the namespace.


if __name__ == "__main__":
    main()
