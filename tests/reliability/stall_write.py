"""Run the `onelayer` command with one file write stalled halfway, so a test can SIGKILL it mid-write.

Usage: ``python stall_write.py SUFFIX MARK onelayer-args...``. When an atomic write
whose target path ends with SUFFIX starts, half of the file's bytes go to the
temporary file, MARK is created, and the process sleeps until it is killed.
Every other write runs normally. Nothing in onelayer itself knows about this.
"""

import sys
import time
from pathlib import Path

import onelayer.io as io
from onelayer.training import checkpoint

SUFFIX, MARK = sys.argv[1], Path(sys.argv[2])
_atomic_write = io.atomic_write


def stalled_atomic_write(path, write):
    if not str(path).endswith(SUFFIX):
        return _atomic_write(path, write)

    def half_then_wait(tmp):
        write(tmp)
        data = Path(tmp).read_bytes()
        Path(tmp).write_bytes(data[: len(data) // 2])  # what a kill in the middle of the write leaves
        MARK.write_text(str(path))
        time.sleep(600)

    return _atomic_write(path, half_then_wait)


io.atomic_write = stalled_atomic_write  # atomic_write_json / _text look it up here
checkpoint.atomic_write = stalled_atomic_write  # imported by name there

if __name__ == "__main__":
    from onelayer.cli import main

    sys.argv = ["onelayer", *sys.argv[3:]]
    main()
