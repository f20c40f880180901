"""Plugins: modules that register envs, suites or layers with onelayer, without editing it.

A pip-installed package declares an entry point in the group ``onelayer.plugins`` whose
value is a module::

    [project.entry-points."onelayer.plugins"]
    guessing = "my_package.onelayer_plugin"

``import onelayer`` imports every such module, so every command and every library user
sees what it registers (``gymnasium.register(...)``, ``onelayer.register_suite(...)``).
A module on the path that is not installed is loaded with ``--plugin MODULE`` on any
command (repeatable), or :func:`load_plugin`. A plugin that fails to import is an error
naming the plugin and the exception, never a silent skip.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from onelayer.errors import UserError

GROUP = "onelayer.plugins"
LOADED: dict[str, str] = {}
"""Module name -> where it came from (``entry point NAME (DIST)`` or ``--plugin``)."""
CURRENT: str | None = None
"""The plugin module being imported right now (what it registers is listed under its name)."""


class PluginError(UserError, ImportError):
    """A plugin could not be imported; the message names it and the exception."""


def load_plugin(module: str, source: str = "--plugin") -> None:
    """Import a plugin module once; PluginError (one line) when it fails."""
    global CURRENT
    if module in LOADED:
        return
    if source == "--plugin" and "" not in sys.path and "." not in sys.path:
        sys.path.append(".")  # a module in the working directory, as `python -m` would find it
    CURRENT = module
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (whatever a plugin raises, name it and stop)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PluginError(f"plugin {module!r} ({source}) failed to import: {type(e).__name__}"
                          + (f": {detail}" if detail else "")) from None
    finally:
        CURRENT = None
    LOADED[module] = source


def load_installed() -> None:
    """Import the module of every ``onelayer.plugins`` entry point of the installed distributions."""
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        load_plugin(ep.value.split(":", 1)[0].strip(), f"entry point {ep.name!r} of {dist}")


def invoked_as_cli() -> bool:
    """True when this process is the ``onelayer`` command (so errors print one line and exit 2)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.rsplit("/", 1)[-1] == "onelayer" or argv0.endswith(("onelayer/cli.py", "onelayer/__main__.py")):
        return True
    orig = list(getattr(sys, "orig_argv", []))  # `python -m onelayer.cli`: argv[0] is "-m" while packages import
    return any(a == "-m" and orig[i + 1:i + 2] in (["onelayer.cli"], ["onelayer"]) for i, a in enumerate(orig))


def argv_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--plugin MODULE`` / ``--plugin=MODULE`` out of a command line: (modules, the rest)."""
    modules, rest, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--plugin":
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise UserError("--plugin needs a module name (--plugin my_package.plugin)")
            modules.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--plugin="):
            modules.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return modules, rest
