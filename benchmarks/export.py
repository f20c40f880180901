"""``onelayer export``: a run as a plain Hugging Face model directory (base model with the trained tensors merged in).

The export is the model ``load_run_model`` builds (the base model as onelayer
loads it, any inserted block, LoRA adapters merged, the trained tensors copied
in), written so that ``AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load it with nothing but transformers.

A GGUF base model (the default ``smollm2-135m``) is dequantized by
transformers at load time but keeps its quantizer attached, and
``save_pretrained`` refuses such a model. The weights in memory are already
plain tensors, so the export drops the quantization marker (transformers' own
``remove_quantization_config``) and saves the model as an ordinary one.

Nothing is trusted: the directory is written to a hidden sibling folder,
loaded back with plain transformers and compared with the run's model (same
module classes, every parameter and buffer bit-identical, no missing or
unexpected keys, same logits and token ids on a probe text); only then is it
renamed onto ``--out``. A run that cannot be written as a plain HF model (a
custom inserted block, say) fails with a one-line error and leaves ``--out``
untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from onelayer.agents.models import make_plain
from onelayer.benchmarks.evaluate import load_run_model, read_run_train_config
from onelayer.errors import UserError
from onelayer.io import atomic_write_json
from onelayer.training import checkpoint as ckpt

EXPORT_FILE = "onelayer_export.json"
"""Provenance of an export (run, model, dtype, trained tensors); also marks a directory ``export`` may replace."""

PROBE_TEXT = "onelayer export check: 12 + 30 = 42. The quick brown fox jumps over the lazy dog."
"""Text whose logits the written model must reproduce."""

LOGIT_TOLERANCE = 1e-5
"""Largest |logit difference| allowed on the probe, relative to max(1, max |logit|): identical tensors and module
classes on the same CPU give identical logits; a lost config field (rope, norm eps, a custom block) moves them far more."""


@dataclass
class ExportResult:
    """What ``export_run`` wrote."""

    out: Path
    """The model directory."""
    dtype: str
    """The dtype of every tensor written (float32, bfloat16 or float16)."""
    num_tensors: int
    """Parameters and buffers checked bit-identical after loading the directory back."""
    trained: list[str] = field(default_factory=list)
    """Names in the run's trained.safetensors (LoRA runs: the adapter tensors, merged into their weights)."""
    max_logit_diff: float = 0.0
    """Largest |logit difference| between the run's model and the reloaded export on the probe text."""
    seconds: float = 0.0
    """Wall time of the export, loading and checking included."""


def export_dtype(run_dtype: str, dtype: str | None = None) -> str:
    """The dtype to export in: ``dtype`` when given, else the run's ``--dtype``; ``auto`` means float32.

    The export runs on the CPU, where onelayer's ``auto`` is float32: the base
    model as loaded and the trained tensors (fp32 master weights by default)
    are written without rounding. A run that computed in bf16 on a GPU
    (``--dtype auto`` there) is reproduced exactly by ``--dtype bfloat16``.
    """
    from onelayer.agents.models import choose_dtype

    return str(choose_dtype(dtype or run_dtype, torch.device("cpu"))).removeprefix("torch.")


def check_out_dir(out: Path) -> None:
    """``out`` may be a new path, an empty directory or a previous export (it holds ``onelayer_export.json``)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} exists and is not a directory: pass a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        raise UserError(f"--out {out} is a non-empty directory that is not an onelayer export (no {EXPORT_FILE}): "
                        "pass a new or empty directory")


def export_run(run_dir: str | Path, out: str | Path, dtype: str | None = None) -> ExportResult:
    """Write run ``run_dir`` as a plain HF model + tokenizer directory at ``out``, checked by loading it back.

    ``out`` is replaced in one rename once the written copy has passed the
    check; a failure leaves it as it was.
    """
    t0 = time.time()
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist: pass the --out of a `onelayer train` run")
    config = read_run_train_config(run_dir)  # a missing or damaged config.json is a one-line error
    run_info = ckpt.read_run_config(run_dir)
    check_out_dir(out)  # before the (slow) model load
    dt = export_dtype(config.dtype, dtype)
    model, tok, _ = load_run_model(run_dir, device="cpu", dtype=dt, config=config)
    _make_plain(model)
    _check_structure(model)  # before writing anything: names the first tensor a plain model would not have
    trained = _trained_names(run_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", suffix=".tmp", dir=out.parent))
    try:
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        except OSError as e:
            raise UserError(f"cannot write the export next to {out} ({type(e).__name__}: {' '.join(str(e).split())[:200]}): free disk space or "
                            "pass another --out") from None
        num, diff = _verify(tmp, model, tok, dt)
        atomic_write_json(tmp / EXPORT_FILE, {
            "run": str(run_dir.resolve()), "model": config.model, "model_source": run_info.get("model_source"),
            "layers": config.layers, "dtype": dt, "trained_tensors": trained,
            "insert_layer": config.insert_layer, "insert_at": config.insert_at, "lora": run_info.get("lora"),
            "onelayer_version": run_info.get("onelayer_version"), "torch_version": torch.__version__,
            "transformers_version": _transformers_version(),
        })
        _publish_permissions(tmp)
        _fsync_tree(tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out=out, dtype=dt, num_tensors=num, trained=trained, max_logit_diff=diff,
                        seconds=time.time() - t0)


def _trained_names(run_dir: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(run_dir / ckpt.TRAINED_FILE), "pt") as f:  # load_run_model has checked the file already
        return sorted(f.keys())


def _make_plain(model) -> None:
    """``agents.models.make_plain``, then refuse LoRA adapters that did not merge."""
    make_plain(model)
    left = [n for n, _ in model.named_parameters() if ".lora_" in n]
    if left:
        raise UserError(f"the run's LoRA adapters did not merge ({left[0]} is still in the model): "
                        "cannot export it as a plain HF model")


def _check_structure(model) -> None:
    """The model must have the modules and tensor shapes that its own config builds (no custom inserted block)."""
    from transformers import AutoModelForCausalLM

    what = f"the export of this run cannot be represented as a plain {type(model).__name__}"
    with torch.device("meta"):  # shapes only, no memory
        skeleton = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    ours = dict(model.named_parameters(remove_duplicate=False))
    theirs = dict(skeleton.named_parameters(remove_duplicate=False))
    extra, missing = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    if extra or missing:
        raise UserError(f"{what}: it has tensors a model built from its config would not have ({extra[:2]}) or lacks "
                        f"some it would have ({missing[:2]}); a custom inserted block needs its own model class")
    for n, p in ours.items():
        if p.shape != theirs[n].shape:
            raise UserError(f"{what}: {n} has shape {tuple(p.shape)}, a model built from its config has "
                            f"{tuple(theirs[n].shape)}; a custom inserted block needs its own model class")
    ours_m = [(n, type(m).__name__) for n, m in model.named_modules()]
    theirs_m = [(n, type(m).__name__) for n, m in skeleton.named_modules()]
    if ours_m != theirs_m:
        bad = next((a for a, b in zip(ours_m, theirs_m) if a != b), None) or ours_m[len(theirs_m):][:1]
        raise UserError(f"{what}: its module {bad} is not what its config builds; a custom inserted block needs "
                        "its own model class")


def _verify(tmp: Path, model, tok, dtype: str) -> tuple[int, float]:
    """Load ``tmp`` with plain transformers and compare it with ``model``; returns (tensors checked, logit diff)."""
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer

    what = f"the export of this run cannot be represented as a plain {type(model).__name__}"
    level = logging.getLogger("transformers").level
    logging.getLogger("transformers").setLevel(logging.ERROR)  # the check below reports what matters, in one line
    try:
        back, info = AutoModelForCausalLM.from_pretrained(tmp, dtype=getattr(torch, dtype), output_loading_info=True)
        back_tok = AutoTokenizer.from_pretrained(tmp)
    except Exception as e:  # anything transformers cannot load is a broken export
        raise UserError(f"{what}: transformers cannot load it back ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
    finally:
        logging.getLogger("transformers").setLevel(level)
    back.eval()
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        keys = sorted(map(str, info.get(kind) or []))
        if keys:
            raise UserError(f"{what}: loading it back reports {kind.replace('_', ' ')} ({', '.join(keys[:3])}"
                            f"{'...' if len(keys) > 3 else ''})")
    ours = [(n, type(m)) for n, m in model.named_modules()]
    theirs = [(n, type(m)) for n, m in back.named_modules()]
    if ours != theirs:
        bad = next(((a, b) for a, b in zip(ours, theirs) if a != b), None) or (ours[len(theirs):] or theirs[len(ours):])[:1]
        raise UserError(f"{what}: its modules load back differently ({bad}); a custom inserted block needs its own "
                        "model class")
    num = 0
    for get in ("named_parameters", "named_buffers"):
        a = dict(getattr(model, get)(remove_duplicate=False))
        b = dict(getattr(back, get)(remove_duplicate=False))
        if a.keys() != b.keys():
            raise UserError(f"{what}: its {get[6:]} differ by name ({sorted(a.keys() ^ b.keys())[:3]})")
        for n, t in a.items():
            if t.dtype != b[n].dtype or t.shape != b[n].shape or not torch.equal(t, b[n]):
                raise UserError(f"{what}: {n} loads back as {b[n].dtype} {tuple(b[n].shape)} with other values "
                                f"than the run's {t.dtype} {tuple(t.shape)}")
            num += 1
    ids = tok(PROBE_TEXT, return_tensors="pt")["input_ids"]
    if back_tok(PROBE_TEXT, return_tensors="pt")["input_ids"].tolist() != ids.tolist():
        raise UserError(f"{what}: its tokenizer encodes text differently from the run's")
    if getattr(back_tok, "chat_template", None) != getattr(tok, "chat_template", None):
        raise UserError(f"{what}: its tokenizer lost the run's chat template")
    with torch.no_grad():
        want, got = model(ids).logits.float(), back(ids).logits.float()
    diff = float((want - got).abs().max())
    if not diff <= LOGIT_TOLERANCE * max(1.0, float(want.abs().max())):
        raise UserError(f"{what}: the reloaded model's logits differ from the run's by up to {diff:.3g}")
    return num, diff


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _publish_permissions(root: Path) -> None:
    """Give the folder and its files the usual permissions (the temporary folder and files are private: 0700/0600)."""
    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for p in root.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def _fsync_tree(root: Path) -> None:
    """Flush every written file, so the rename below never publishes a directory of empty files after a crash."""
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; a previous export there is moved aside first and then deleted."""
    check_out_dir(out)  # again: something may have appeared there while the model was written
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", suffix=".tmp", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)  # rename(2) replaces an empty directory in one step
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
