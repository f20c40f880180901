"""Run directories: trained weights, checkpoints and resume state, all written atomically.

Layout of a run directory::

    config.json             resolved config, layer selection, model source
    metrics.jsonl           one JSON object per step
    trained.safetensors     the trained tensors' values (model state_dict names)
    eval.json               last evaluation (per-item outcomes)
    checkpoints/step-000010/{trained.safetensors, optimizer.pt, state.json}

Every ``.safetensors`` file holds exactly the trained tensors (values, not
differences); optimizer and RNG state live in other files. ``state.json`` is
written last and records the other files' sizes, so a checkpoint without it
is incomplete (ignored) and one whose files do not match it is damaged (resume
says so and falls back to the previous checkpoint).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from onelayer.errors import UserError
from onelayer.io import atomic_write, atomic_write_json

TRAINED_FILE = "trained.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
_CKPT_NAME = re.compile(r"step-(\d+)")


def trained_state(model, names: list[str]) -> dict[str, torch.Tensor]:
    """The current values of the named parameters (contiguous CPU copies)."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu").contiguous().clone() for n in names}


def save_trained(path: str | Path, model, names: list[str], metadata: dict | None = None) -> None:
    """Write the named parameters' values to a safetensors file, atomically."""
    tensors = trained_state(model, names)
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_trained(model, path: str | Path, strict_names: bool = True) -> list[str]:
    """Copy tensors from a trained.safetensors file into ``model``; returns the names loaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: a run directory holds trained.safetensors once a step has finished "
                        f"(`onelayer train --resume --out {path.parent}` rewrites it from the last checkpoint)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # truncated or overwritten: safetensors checks the header against the file size
        fix = (f": `onelayer train --resume --out {path.parent}` rewrites it from the last checkpoint"
               if (path.parent / CONFIG_FILE).is_file() else "")
        raise UserError(f"{path} is damaged ({' '.join(str(e).split())[:200]}){fix}") from None
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing and strict_names:
        raise UserError(f"{path} holds tensors the model does not have ({', '.join(missing[:3])}...): wrong base model?")
    with torch.no_grad():
        for n, t in tensors.items():
            if n in params:
                if params[n].shape != t.shape:
                    raise UserError(f"{path}: {n} has shape {tuple(t.shape)}, the model's is {tuple(params[n].shape)}")
                params[n].copy_(t.to(params[n].device, params[n].dtype))
    return list(tensors)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Folder of the checkpoint after ``step``."""
    return run_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(run_dir: Path, step: int, model, names: list[str], optimizer, state: dict, keep: int) -> Path:
    """Write a complete checkpoint (weights, optimizer, state last) and prune old ones."""
    d = checkpoint_dir(run_dir, step)
    d.mkdir(parents=True, exist_ok=True)
    (d / STATE_FILE).unlink(missing_ok=True)  # rewriting a checkpoint: incomplete until state.json is back
    save_trained(d / TRAINED_FILE, model, names, {"step": step})
    atomic_write(d / OPTIMIZER_FILE, lambda tmp: torch.save(optimizer.state_dict(), tmp))
    sizes = {n: (d / n).stat().st_size for n in (TRAINED_FILE, OPTIMIZER_FILE)}
    atomic_write_json(d / STATE_FILE, {"step": step, **state, "files": sizes})
    save_trained(run_dir / TRAINED_FILE, model, names, {"step": step})
    done = complete_checkpoints(run_dir)
    for old in done[:-keep]:
        # Renamed first, so a kill mid-delete never leaves a half-deleted dir that looks like a checkpoint.
        gone = old.with_name(f".{old.name}.deleting")
        shutil.rmtree(gone, ignore_errors=True)
        old.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)
    return d


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every ``checkpoints/step-N`` folder, complete or not, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _CKPT_NAME.fullmatch(p.name))


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint folder (missing or damaged file), or None when it looks whole.

    Only cheap checks: files present, state.json readable, sizes as recorded. Loading
    the tensors (resume does that next) catches the rest.
    """
    if not (ckpt / STATE_FILE).is_file():
        return f"is incomplete (no {STATE_FILE}: the run was stopped while writing it)"
    try:
        state = load_state(ckpt)
        step = int(state["step"])
    except (ValueError, KeyError, TypeError) as e:
        return f"has a damaged {STATE_FILE} ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    if step != int(_CKPT_NAME.fullmatch(ckpt.name).group(1)):
        return f"has a {STATE_FILE} for step {step}, not for {ckpt.name}"
    for name in (TRAINED_FILE, OPTIMIZER_FILE):
        if not (ckpt / name).is_file():
            return f"is missing {name}"
        want = (state.get("files") or {}).get(name)
        if want is not None and (ckpt / name).stat().st_size != want:
            return f"has a damaged {name} ({(ckpt / name).stat().st_size} bytes, {want} written)"
    return None


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete temporary files of interrupted atomic writes and half-pruned checkpoints; return what was removed."""
    run_dir = Path(run_dir)
    found = [p for d in [run_dir, run_dir / "checkpoints", *checkpoint_dirs(run_dir)] if d.is_dir()
             for p in d.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".deleting"))]
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints that finished writing, oldest first."""
    return [p for p in checkpoint_dirs(run_dir) if (p / STATE_FILE).is_file() and (p / TRAINED_FILE).is_file()]


def load_state(ckpt: Path) -> dict:
    """The state.json of a checkpoint."""
    state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise ValueError(f"{STATE_FILE} holds {type(state).__name__}, not an object")
    return state


def read_run_config(run_dir: str | Path) -> dict:
    """The config.json of a run directory, with a clear error when it is not one or it is damaged."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise UserError(f"{run_dir} is not a onelayer run directory (no {CONFIG_FILE}); pass the --out of a `onelayer train` run")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is damaged (not valid JSON: {' '.join(str(e).split())[:120]}): it holds the run's options; "
                        "restore it from a copy, or start a new run with another --out") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise UserError(f"{p} is damaged (no 'config' object): it holds the run's options; restore it from a copy, "
                        "or start a new run with another --out")
    return data
