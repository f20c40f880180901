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


def vmhwm_bytes() -> int | None:
    """``VmHWM`` of /proc/self/status (Linux: the peak RSS since exec or the last clear_refs reset), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` on Linux, else ``ru_maxrss``.

    Not ``ru_maxrss`` where /proc exists: Linux folds the address space a process had before ``exec`` into it, so a
    process started from a large parent (``onelayer bench`` after its rollout section: 2.3 GB) reports the parent's
    size as its own peak. ``VmHWM`` belongs to the address space ``exec`` made."""
    hwm = vmhwm_bytes()
    if hwm is not None:
        return hwm
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
