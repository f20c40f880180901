"""The machine a benchmark ran on, recorded next to its numbers."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform


def describe_machine(packages: tuple[str, ...] = ()) -> dict:
    """CPU model, cores, Python, torch (version, threads, GPU name when present) and the named packages' versions."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    for pkg in packages:
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    return info
