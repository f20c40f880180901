"""Run directories: trained weights, checkpoints and resume state, all written atomically.

Layout of a run directory::

    config.json             resolved config, layer selection, model source
    metrics.jsonl           one JSON object per step
    trained.safetensors     the trained tensors' values (model state_dict names)
    eval.json               last evaluation (per-item outcomes)
    checkpoints/step-000010/{trained.safetensors, optimizer.pt, state.json}

Every ``.safetensors`` file holds exactly the trained tensors (values, not
differences); optimizer and RNG state live in other files. ``state.json`` is
written last, so a checkpoint without it is incomplete and is ignored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from onelayer.errors import UserError
from onelayer.io import atomic_write, atomic_write_json

TRAINED_FILE = "trained.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


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
        raise UserError(f"{path} does not exist: a run directory holds trained.safetensors once a step has finished")
    tensors = load_file(str(path))
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
    save_trained(d / TRAINED_FILE, model, names, {"step": step})
    atomic_write(d / "optimizer.pt", lambda tmp: torch.save(optimizer.state_dict(), tmp))
    atomic_write_json(d / "state.json", {"step": step, **state})
    save_trained(run_dir / TRAINED_FILE, model, names, {"step": step})
    done = complete_checkpoints(run_dir)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return d


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints that finished writing, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "state.json").is_file() and (p / TRAINED_FILE).is_file())


def load_state(ckpt: Path) -> dict:
    """The state.json of a checkpoint."""
    return json.loads((ckpt / "state.json").read_text(encoding="utf-8"))


def read_run_config(run_dir: str | Path) -> dict:
    """The config.json of a run directory, with a clear error when it is not one."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise UserError(f"{run_dir} is not a onelayer run directory (no {CONFIG_FILE}); pass the --out of a `onelayer train` run")
    return json.loads(p.read_text(encoding="utf-8"))
