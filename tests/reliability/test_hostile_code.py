"""Hostile code is contained wherever the interpreter lives: the project's own, a venv under /tmp, a venv elsewhere.

A venv under ``/tmp`` once made the sandbox lose its own interpreter (the private
``/tmp`` hid it); namespaces then "failed" and submissions ran unisolated, deleting
files outside the sandbox. Each case here runs the battery in ``hostile_code.py``
with that interpreter (``sys.prefix`` really is the venv) and checks the host from
outside: the canary next to the venv is intact and alone, the loopback listener was
never reached, no process of the battery is left, the level is a namespaced one,
and a correct solution still passes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from onelayer.envs.sandbox import NAMESPACED

BATTERY = pathlib.Path(__file__).with_name("hostile_code.py")
REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare (namespaces)")


def _processes_with(needle: str) -> list[str]:
    """Command lines of live host processes that contain ``needle``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if state != "Z" and needle in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture(params=["installed", "venv-in-tmp", "venv-in-var-tmp"])
def interpreter_and_host_dir(request):
    """(python, host_dir): the interpreter to run the battery with, and a host directory beside it to attack."""
    if request.param == "installed":
        parent = pathlib.Path(tempfile.mkdtemp(prefix="onelayer-hostile-"))
        python = sys.executable
    else:
        base = "/tmp" if request.param == "venv-in-tmp" else "/var/tmp"
        parent = pathlib.Path(tempfile.mkdtemp(prefix="onelayer-hostile-", dir=base))
        # --system-site-packages: the venv sees the installed project without installing anything.
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", parent / "venv"],
                       check=True, timeout=120)
        python = str(parent / "venv" / "bin" / "python")
    host_dir = parent / "host"
    host_dir.mkdir()
    (host_dir / "canary.txt").write_text("intact")
    # World-writable file in a world-writable directory: only the sandbox's mounts keep it safe.
    (host_dir / "canary.txt").chmod(0o666)
    host_dir.chmod(0o777)
    yield python, host_dir
    shutil.rmtree(parent, ignore_errors=True)


def test_the_hostile_battery_is_contained_and_a_correct_solution_still_passes(interpreter_and_host_dir):
    python, host_dir = interpreter_and_host_dir
    mark = str(time.time_ns() % 10**9)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        proc = subprocess.run([python, str(BATTERY), str(host_dir), str(port), mark], capture_output=True, text=True,
                              timeout=600, cwd=REPO, env={**os.environ, "ONELAYER_SANDBOX_ISOLATION": ""})
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected, from any attack
    finally:
        listener.close()

    # The battery really ran from where we put it, and with real isolation.
    if python != sys.executable:
        assert report["prefix"] == str(pathlib.Path(python).parents[1])
        assert report["prefix"] != report["base_prefix"]
    assert report["isolation"] in NAMESPACED
    attacks = {k: v for k, v in report.items() if isinstance(v, dict) and "status" in v}
    assert len(attacks) == 6 and all(a["isolation"] == report["isolation"] for a in attacks.values())

    assert attacks["infinite_loop"]["status"] == "timeout"
    forks = attacks["hundred_forks"]
    assert forks["status"] == "ok", forks["stderr"]
    assert int(forks["stdout"]) < 100
    if report["isolation"] == "namespaces":
        assert int(forks["stdout"]) == 9  # a uid of its own: the program itself is the tenth process
    orphan = attacks["detached_orphan"]
    assert orphan["status"] == "ok" and "orphan started" in orphan["stdout"], orphan["stderr"]
    alloc = attacks["allocate_8gb"]
    assert alloc["status"] == "failed" and "MemoryError" in alloc["stderr"] and "allocated" not in alloc["stdout"]
    files = attacks["files_outside"]
    assert files["status"] == "ok", files["stderr"]
    assert "DONE" not in files["stdout"] and "LEAKED" not in files["stdout"]
    assert files["stdout"].count("blocked") == 5
    assert "connect blocked" in attacks["connect_loopback"]["stdout"]
    assert report["code_env_hostile"]["isolation"] == report["isolation"]

    assert (host_dir / "canary.txt").read_text() == "intact"
    assert sorted(p.name for p in host_dir.iterdir()) == ["canary.txt"]
    assert not _processes_with(f".{mark}")  # the 9 forked children and the orphan died with their programs
    assert report["canonical"] == {"reward": 1.0, "error": ""}
