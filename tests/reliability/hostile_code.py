"""Hostile programs against the code sandbox, run under whichever interpreter starts this file.

Usage: ``PYTHON hostile_code.py HOST_DIR PORT MARK``. ``test_hostile_code.py`` starts it
with the project's own interpreter and with venvs in several places (a venv under
``/tmp`` was where the sandbox once lost its interpreter and ran code unisolated), so
``sys.prefix`` here is really that venv. Each attack runs through ``run_in_sandbox``
with the default (fail-closed) isolation, then the file and network attacks again as a
Code-v0 submission, then a correct HumanEval solution must still pass. Prints one JSON
object: the interpreter, the isolation level, and how each attack ended. The caller
owns ``HOST_DIR`` (a canary file), the listener on ``PORT`` and the check that no
process whose command line holds ``MARK`` is left on the host.
"""

from __future__ import annotations

import json
import sys
import textwrap

import gymnasium as gym

import onelayer  # noqa: F401  (registers env ids)
from onelayer.envs.code_data import load_problems
from onelayer.envs.sandbox import isolation_level, run_in_sandbox

# Sleep durations that name this run: the forked children and the orphan exec `sleep` with them.
FORK_SLEEP, ORPHAN_SLEEP = "4001", "4002"


def attacks(host_dir: str, port: int, mark: str) -> dict[str, tuple[str, dict]]:
    """Each hostile program and its sandbox limits, by name."""
    canary = f"{host_dir}/canary.txt"
    return {
        "infinite_loop": ("while True: pass", {"timeout_s": 1.0}),
        "hundred_forks": (f"""
            import os
            n = 0
            for _ in range(100):
                try:
                    pid = os.fork()
                except OSError:
                    break
                if pid == 0:
                    os.execv('/bin/sleep', ['sleep', '{FORK_SLEEP}.{mark}'])
                n += 1
            print(n)
        """, {"max_processes": 10}),
        # Double fork + setsid: the grandchild is in no process group or session of ours and
        # outlives the program, which exits as soon as it has started.
        "detached_orphan": (f"""
            import os, time
            r, w = os.pipe()
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.write(w, b'x')
                    os.execv('/bin/sleep', ['sleep', '{ORPHAN_SLEEP}.{mark}'])
                os._exit(0)
            os.read(r, 1)
            time.sleep(0.2)
            print('orphan started')
        """, {}),
        "allocate_8gb": ("x = bytearray(8 << 30)\nprint('allocated')", {"memory_mb": 256}),
        "files_outside": (f"""
            import os, shutil
            attempts = {{
                'read': lambda: print('LEAKED', open({canary!r}).read()),
                'write': lambda: open({canary!r}, 'w').write('damaged'),
                'delete': lambda: os.remove({canary!r}),
                'create': lambda: open({host_dir!r} + '/new.txt', 'w').write('x'),
                'rmtree': lambda: shutil.rmtree({host_dir!r}),
            }}
            for name, attempt in attempts.items():
                try:
                    attempt()
                    print(name, 'DONE')
                except OSError as e:
                    print(name, 'blocked', type(e).__name__)
        """, {}),
        "connect_loopback": (f"""
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'pwned')
                print('CONNECTED')
            except OSError as e:
                print('connect blocked', type(e).__name__)
        """, {}),
    }


def hostile_submission(host_dir: str, port: int) -> str:
    """A Code-v0 reply for HumanEval/0 whose module code attacks the host's files and network."""
    return textwrap.dedent(f"""
        ```python
        import os, socket
        for attempt in (lambda: os.remove({host_dir!r} + '/canary.txt'),
                        lambda: open({host_dir!r} + '/from_code_env.txt', 'w').write('x'),
                        lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2)):
            try:
                attempt()
            except OSError:
                pass

        def has_close_elements(numbers, threshold):
            return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
        ```
    """)


def main() -> None:
    host_dir, port, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    report: dict = {"prefix": sys.prefix, "base_prefix": sys.base_prefix, "executable": sys.executable,
                    "isolation": isolation_level()}
    for name, (code, limits) in attacks(host_dir, port, mark).items():
        r = run_in_sandbox(textwrap.dedent(code), **{"timeout_s": 5.0, **limits})
        report[name] = {"status": r.status, "stdout": r.stdout, "stderr": r.stderr[-1500:], "isolation": r.isolation,
                        "duration_s": r.duration_s}
    env = gym.make("onelayer/Code-v0", split="all")
    env.reset(options={"task_id": "HumanEval/0"})
    _, reward, _, _, info = env.step(hostile_submission(host_dir, port))
    report["code_env_hostile"] = {"reward": reward, "error": info["error"], "isolation": env.unwrapped.isolation}
    problem = next(p for p in load_problems("humaneval") if p.task_id == "HumanEval/0")
    env.reset(options={"task_id": "HumanEval/0"})
    _, reward, _, _, info = env.step(f"```python\n{problem.prompt + problem.canonical_solution}\n```")
    report["canonical"] = {"reward": reward, "error": info["error"]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
