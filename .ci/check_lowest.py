"""Fail unless every pin of the lowest-versions constraints file is what the venv holds.

    python .ci/check_lowest.py CONSTRAINTS INSTALLED   (INSTALLED: `pip list --format=freeze`)
"""

import re
import sys


def _read(path: str) -> dict[str, str]:
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.split("+")[0].strip()
    return out


def main(constraints: str, installed: str) -> int:
    want, have = _read(constraints), _read(installed)
    bad = [f"{n}: want {v}, installed {have.get(n, 'nothing')}" for n, v in want.items() if have.get(n) != v]
    for line in bad:
        print(f"lowest-versions venv: {line}", file=sys.stderr)
    print(f"lowest-versions venv: {len(want) - len(bad)} of {len(want)} pins installed as declared")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
