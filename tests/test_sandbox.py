"""The sandbox contains what untrusted code can do: time, memory, processes, files, network.

Every test runs real hostile programs. On a machine where we are root with
CAP_SYS_ADMIN and util-linux ``unshare`` (CI, this dev box) the strong guarantees
(``namespaces`` isolation) are asserted, not skipped. Where no namespaces work the
sandbox refuses to run anything unless weak ``process`` isolation is asked for by
name (the last tests hide ``unshare`` to show it). tests/reliability/test_hostile_code.py
runs a hostile battery from venvs in several places, /tmp included.
"""

from __future__ import annotations

import ast
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import pytest

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs import sandbox
from onelayer.envs.code_data import load_problems
from onelayer.envs.sandbox import ISOLATION_VAR, UID_BASE, isolation_level, run_in_sandbox
from onelayer.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _can_namespace() -> bool:
    status = pathlib.Path("/proc/self/status").read_text()
    cap_eff = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff")), 16)
    return os.geteuid() == 0 and bool(cap_eff & (1 << 21)) and shutil.which("unshare") is not None


strong = pytest.mark.skipif(not _can_namespace(), reason="needs root with CAP_SYS_ADMIN and util-linux unshare")


def run(code: str, **kw):
    kw.setdefault("timeout_s", 3.0)
    return run_in_sandbox(textwrap.dedent(code), **kw)


def _alive(pid: int) -> bool:
    """True while ``pid`` is a live (non-zombie) process on the host."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _host_processes(predicate) -> list[int]:
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if predicate(entry) and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _sandbox_uid_processes() -> list[int]:
    def sandboxed(entry):
        uid_line = next(x for x in (entry / "status").read_text().splitlines() if x.startswith("Uid:"))
        return int(uid_line.split()[1]) >= UID_BASE
    return _host_processes(sandboxed)


def _with_cmdline(marker: str) -> list[int]:
    return _host_processes(lambda e: marker in (e / "cmdline").read_bytes().decode(errors="replace"))


@strong
def test_root_with_unshare_gets_full_namespace_isolation():
    assert isolation_level() == "namespaces"
    assert run("print('hi')").isolation == "namespaces"


def test_a_normal_program_runs_and_its_output_is_captured():
    r = run("""
        import sys
        print('out', 6 * 7)
        print('err', file=sys.stderr)
    """)
    assert r.status == "ok" and r.ok and r.returncode == 0
    assert r.stdout == "out 42\n" and r.stderr == "err\n"
    assert 0 < r.duration_s < 3


def test_exceptions_and_exit_codes_are_reported_as_failed():
    r = run("raise ValueError('boom')")
    assert r.status == "failed" and r.returncode == 1 and "ValueError: boom" in r.stderr
    assert run("import sys; sys.exit(3)").returncode == 3
    crashed = run("import ctypes; ctypes.string_at(0)")
    assert crashed.status == "killed" and crashed.returncode == -11


def test_extra_files_and_environment_reach_the_program():
    r = run("import os; print(open('data/in.txt').read(), os.environ['GREETING'], os.path.exists('main.py'))",
            files={"data/in.txt": "payload"}, env={"GREETING": "hello"})
    assert r.stdout.split() == ["payload", "hello", "True"]


def test_an_infinite_loop_hits_the_time_limit():
    r = run("while True: pass", timeout_s=1.0)
    # the wall-clock timer (no exit code) or, on a busy machine, the equal CPU-time limit (SIGXCPU) ends it
    assert r.status == "timeout" and r.returncode in (None, -signal.SIGXCPU)
    assert 1.0 <= r.duration_s < 2.5


def test_a_sleeping_program_hits_the_wall_clock_limit():
    r = run("import time; time.sleep(60)", timeout_s=1.0)
    assert r.status == "timeout" and r.duration_s < 2.5


def test_resource_limits_are_in_force_inside():
    r = run("""
        import resource as R
        for name in ('RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_CORE'):
            print(name, *R.getrlimit(getattr(R, name)))
    """, timeout_s=2.0, memory_mb=256, max_processes=8, max_file_mb=4)
    limits = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in r.stdout.splitlines()}
    assert limits["RLIMIT_CPU"] == (2, 3)
    assert limits["RLIMIT_AS"] == (256 << 20, 256 << 20)
    assert limits["RLIMIT_FSIZE"] == (4 << 20, 4 << 20)
    assert limits["RLIMIT_CORE"] == (0, 0)
    if r.isolation != "process":
        assert limits["RLIMIT_NPROC"] == (8, 8)


def test_a_huge_allocation_fails_inside_and_the_host_is_untouched():
    r = run("x = bytearray(8 << 30)\nprint('allocated')", memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.stderr and "allocated" not in r.stdout


@strong
def test_fork_is_refused_beyond_max_processes():
    r = run("""
        import os, time
        n = 0
        for _ in range(100):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
        print(n)
    """, max_processes=10)
    assert r.status == "ok"
    assert int(r.stdout) == 9  # the program itself is the tenth process
    assert not _sandbox_uid_processes()  # its 9 sleeping children died with it


@strong
def test_a_fork_bomb_is_contained_and_leaves_no_process_behind():
    r = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout_s=1.5, max_processes=16)
    assert r.status == "timeout" and r.duration_s < 3.5
    assert not _sandbox_uid_processes()


@strong
def test_a_double_forked_setsid_daemon_dies_with_the_program():
    marker = f"{time.time_ns() % 10**9}.5"  # a unique `sleep` argument to find it on the host
    r = run(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                open('/sandbox/daemon.pid', 'w').write(str(os.getpid()))
                os.execv('/bin/sleep', ['sleep', '{marker}'])
            os._exit(0)
        while not os.path.exists('/sandbox/daemon.pid'):
            time.sleep(0.01)
        time.sleep(0.2)
        print('daemon started', open('/proc/' + open('/sandbox/daemon.pid').read() + '/cmdline').read())
    """)
    assert r.status == "ok" and "daemon started" in r.stdout and marker in r.stdout
    assert r.duration_s < 3
    assert not _with_cmdline(marker)


@strong
def test_a_daemon_dies_when_its_program_times_out():
    marker = f"{time.time_ns() % 10**9}.25"
    r = run(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv('/bin/sleep', ['sleep', '{marker}'])
            os._exit(0)
        while True:
            pass
    """, timeout_s=1.0)
    assert r.status == "timeout"
    assert not _with_cmdline(marker)


@strong
def test_files_outside_the_sandbox_cannot_be_read(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    canary.chmod(0o644)  # world-readable: only the sandbox's mounts keep it out
    tmp_path.chmod(0o755)
    targets = [str(canary), "/root/.bashrc", str(REPO / "README.md"), "/etc/passwd", "/proc/1/environ"]
    r = run(f"""
        for path in {targets!r}:
            try:
                print(path, 'LEAKED', open(path).read()[:20])
            except OSError as e:
                print(path, 'blocked', type(e).__name__)
    """)
    assert r.status == "ok"
    assert "LEAKED" not in r.stdout and "secret" not in r.stdout
    assert r.stdout.count("blocked") == len(targets)


@strong
def test_files_outside_the_sandbox_cannot_be_damaged(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("intact")
    canary.chmod(0o666)  # world-writable in a world-writable directory
    tmp_path.chmod(0o777)
    pwned = REPO / "PWNED_BY_SANDBOX"
    r = run(f"""
        import os, shutil
        attempts = [
            lambda: open({str(canary)!r}, 'w').write('damaged'),
            lambda: os.remove({str(canary)!r}),
            lambda: shutil.rmtree({str(tmp_path)!r}),
            lambda: open({str(pwned)!r}, 'w').write('x'),
            lambda: open('/usr/lib/pwned', 'w').write('x'),
            lambda: open('/pwned', 'w').write('x'),
        ]
        for attempt in attempts:
            try:
                attempt()
                print('DAMAGED')
            except OSError as e:
                print('blocked', type(e).__name__)
        os.system('rm -rf ~')  # HOME is the sandbox's own directory
        print('home is', os.path.expanduser('~'))
    """)
    assert r.status == "ok" and "DAMAGED" not in r.stdout and r.stdout.count("blocked") == 6
    assert "home is /sandbox" in r.stdout
    assert canary.read_text() == "intact"
    assert not pwned.exists() and (REPO / "README.md").exists()


@strong
def test_no_network_not_even_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        r = run(f"""
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=1)
                print('CONNECTED')
            except OSError as e:
                print('connect blocked', e.errno)
            try:
                socket.getaddrinfo('pypi.org', 443)
                print('RESOLVED')
            except OSError:
                print('dns blocked')
        """)
        assert r.status == "ok" and "connect blocked" in r.stdout and "dns blocked" in r.stdout
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody knocked
    finally:
        server.close()


@strong
def test_it_runs_as_an_unprivileged_uid_without_capabilities():
    r = run("""
        import os
        status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
        print(os.getuid(), int(status['CapEff'].strip(), 16), int(status['CapBnd'].strip(), 16),
              status['NoNewPrivs'].strip())
    """)
    uid, cap_eff, cap_bnd, no_new_privs = r.stdout.split()
    assert int(uid) >= UID_BASE and cap_eff == "0" and cap_bnd == "0" and no_new_privs == "1"


def test_its_working_directory_is_private_and_removed_afterwards(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    first = run("open('left.txt', 'w').write('x'); import os; print(os.listdir('.'))", tmp_dir=runs)
    second = run("import os; print(os.path.exists('left.txt'))", tmp_dir=runs)
    assert first.status == "ok" and "left.txt" in first.stdout
    assert second.stdout.strip() == "False"
    assert list(runs.iterdir()) == []


def test_the_result_pipe_carries_what_the_program_writes_there_and_only_that():
    r = run("""
        import os
        print('to stdout')
        os.write(int(os.environ['ONELAYER_RESULT_FD']), b'result line\\n')
    """, result_pipe=True)
    assert r.status == "ok" and r.result == "result line\n" and r.stdout == "to stdout\n"
    plain = run("import os; print('ONELAYER_RESULT_FD' in os.environ)")
    assert plain.stdout.strip() == "False" and plain.result == ""


def test_the_result_pipe_is_drained_while_the_program_runs_and_capped():
    # 4 MiB is far more than a pipe buffers: a parent that read only at the end would leave the writer blocked.
    r = run("""
        import os
        fd = int(os.environ['ONELAYER_RESULT_FD'])
        for _ in range(64):
            os.write(fd, b'z' * 65536)
        print('finished')
    """, result_pipe=True, max_output_bytes=1000)
    assert r.status == "ok" and r.stdout == "finished\n"
    assert r.result.startswith("z" * 1000) and r.result.endswith("[output truncated]")


def test_output_and_file_sizes_are_capped():
    loud = run("import sys; sys.stdout.write('y' * (4 << 20))", max_output_bytes=1000)
    assert loud.stdout.startswith("y" * 1000) and loud.stdout.endswith("[output truncated]")
    assert len(loud.stdout) < 1100
    big = run("open('f', 'wb').write(b'x' * (64 << 20))", max_file_mb=8)
    assert big.status == "failed" and "File too large" in big.stderr


@strong
def test_its_disk_space_is_limited():
    r = run("""
        for i in range(100):
            open(f'f{i}', 'wb').write(b'x' * (4 << 20))
    """, disk_mb=16, max_file_mb=8)
    assert r.status == "failed" and "No space left on device" in r.stderr


@strong
def test_concurrent_runs_do_not_interfere_even_with_a_fork_bomb_among_them():
    bomb = "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass\n"
    programs = [bomb] + [f"print({i} * 2)" for i in range(6)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda code: run(code, timeout_s=2.0, max_processes=16), programs))
    assert results[0].status == "timeout"
    assert [r.stdout.strip() for r in results[1:]] == [str(i * 2) for i in range(6)]
    assert not _sandbox_uid_processes()


def test_process_mode_still_enforces_time_and_kills_strays():
    slow = run("while True: pass", timeout_s=1.0, isolation="process")
    assert slow.status == "timeout" and slow.isolation == "process"
    r = run("""
        import os, time
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()  # leave the sandbox's process group and session
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                time.sleep(60)
            os._exit(0)
        print(os.read(r, 32).decode())
    """, isolation="process")
    daemon = int(r.stdout)
    deadline = time.monotonic() + 2
    while _alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(daemon)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_userns_mode_hides_the_host_filesystem():
    r = run(f"import os; print(os.path.exists({str(REPO)!r}), os.getcwd())", isolation="userns")
    assert r.status == "ok", r.stderr
    assert r.stdout.split() == ["False", "/sandbox"]


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="isolation"):
        run_in_sandbox("pass", isolation="docker")
    with pytest.raises(UserError, match="positive"):
        run_in_sandbox("pass", timeout_s=0)
    with pytest.raises(UserError, match="relative path"):
        run_in_sandbox("pass", files={"../escape.txt": "x"})


@strong
def test_its_tmp_is_private_and_writable_and_shows_only_the_interpreter():
    r = run("""
        import os
        open('/tmp/mine.txt', 'w').write('x')
        print(sorted(os.listdir('/tmp')))
    """)
    assert r.status == "ok", r.stderr
    # Only what the sandbox binds from the host's /tmp (a venv there) may show besides our own file.
    bound = {p.split("/")[2] for p in sandbox._bind_paths() if p.startswith("/tmp/")}
    assert set(ast.literal_eval(r.stdout)) == {"mine.txt"} | bound


# ---- fail closed: no namespaces, no untrusted code (unless weak isolation is asked for by name) ----

def _hide_namespaces(monkeypatch, tmp_path, how: str) -> str:
    """Make namespaces unavailable to the sandbox; returns the cause its refusal must name."""
    monkeypatch.delenv(ISOLATION_VAR, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if how == "no unshare":
        monkeypatch.setenv("PATH", str(bin_dir))
        return "`unshare` is not on PATH"
    # An `unshare` that fails the way it does in a container that forbids namespaces.
    fake = bin_dir / "unshare"
    fake.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return "Operation not permitted"


@pytest.mark.parametrize("how", ["no unshare", "namespaces forbidden"])
def test_without_namespaces_untrusted_code_is_refused_in_one_line_naming_the_fix(monkeypatch, tmp_path, how):
    cause = _hide_namespaces(monkeypatch, tmp_path, how)
    canary = tmp_path / "canary.txt"
    canary.write_text("intact")
    for attempt in (isolation_level, lambda: run_in_sandbox(f"import os; os.remove({str(canary)!r})"),
                    lambda: gym.make("onelayer/Code-v0")):
        with pytest.raises(UserError) as refusal:
            attempt()
        message = str(refusal.value)
        assert "\n" not in message and "untrusted code will not run" in message and cause in message
        assert f"{ISOLATION_VAR}=process" in message and "isolation=process" in message
    assert canary.read_text() == "intact"


def test_a_namespaced_level_asked_for_by_name_that_does_not_work_is_refused(monkeypatch, tmp_path):
    _hide_namespaces(monkeypatch, tmp_path, "namespaces forbidden")
    with pytest.raises(UserError, match="'userns' .* does not work here: .*Operation not permitted"):
        gym.make("onelayer/Code-v0", isolation="userns")
    monkeypatch.setenv(ISOLATION_VAR, "namespaces")
    with pytest.raises(UserError, match=f"'namespaces' \\(asked for by {ISOLATION_VAR}\\) does not work here"):
        gym.make("onelayer/Code-v0")


@pytest.mark.parametrize("opt_in", ["env option", "environment variable"])
def test_weak_isolation_runs_only_when_asked_for_and_warns_on_every_run(monkeypatch, tmp_path, caplog, opt_in):
    _hide_namespaces(monkeypatch, tmp_path, "namespaces forbidden")
    if opt_in == "env option":
        env = gym.make("onelayer/Code-v0", split="all", isolation="process")
    else:
        monkeypatch.setenv(ISOLATION_VAR, "process")
        env = gym.make("onelayer/Code-v0", split="all")
    assert env.unwrapped.isolation == "process"
    problem = next(p for p in load_problems("humaneval") if p.task_id == "HumanEval/0")
    caplog.set_level(logging.WARNING, logger="onelayer.envs.sandbox")
    caplog.clear()
    for _ in range(2):
        env.reset(options={"task_id": "HumanEval/0"})
        _, reward, *_ = env.step(f"```python\n{problem.prompt + problem.canonical_solution}\n```")
        assert reward == 1.0
    unsafe = [r for r in caplog.records if r.levelno == logging.WARNING and "UNSAFE" in r.getMessage()]
    assert len(unsafe) == 2  # one per run, not once per process
    assert "NO filesystem, network or uid isolation" in unsafe[0].getMessage()


def _cli(*args, path: str):
    env = dict(os.environ, PATH=path)
    env.pop(ISOLATION_VAR, None)
    return subprocess.run([sys.executable, "-m", "onelayer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_the_cli_refuses_code_v0_without_isolation_and_runs_it_when_weak_isolation_is_asked_for(
        monkeypatch, tmp_path, tiny_model_dirs):
    _hide_namespaces(monkeypatch, tmp_path, "namespaces forbidden")
    path, model = os.environ["PATH"], tiny_model_dirs["qwen3"]
    for args in (["train", "--model", model, "--env", "onelayer/Code-v0", "--steps", "1", "--out", tmp_path / "run",
                  "--quiet"],
                 ["eval", "--model", model, "--env", "onelayer/Code-v0", "--num-items", "1", "--max-new-tokens", "4"]):
        r = _cli(*args, path=path)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "untrusted code will not run" in errors[0]
    assert not (tmp_path / "run").exists()  # stopped before any training work
    r = _cli("eval", "--model", model, "--env", "onelayer/Code-v0", "--env-kwargs", "isolation=process",
             "--num-items", "1", "--max-new-tokens", "4", "--out", tmp_path / "eval.json", path=path)
    assert r.returncode == 0, r.stderr
    assert "UNSAFE sandbox isolation 'process'" in r.stderr and (tmp_path / "eval.json").is_file()
