"""The llama.cpp rollout engine (``--engine llamacpp``): CPU sampling on the model's GGUF file.

On a CPU, decoding is bound by reading the weights once per step; llama.cpp reads
the 4-bit GGUF weights (SmolLM2: 100 MB instead of 540 MB in fp32) and runs its
own quantized kernels, so it samples several times faster than transformers.

How it stays the trainer's model:

* The engine writes its own GGUF files (``build_gguf``). In the ``source`` copy
  every tensor whose quantized form in the source GGUF dequantizes to exactly
  the HF model's value is copied as is and every other one is fp32, so
  llama.cpp holds the same weights as the HF model; its numerics differ (8-bit
  quantized activations against 4-bit weights, an f16 KV cache). Decoding many
  sequences is faster on bf16 matrices (llama.cpp's batched bf16 kernels), so
  by default (``weights="auto"``) a ``bf16`` copy (matrices rounded to bf16)
  serves micro-batches of ``bf16_from_batch`` sequences or more. In both, the
  tensors being trained (``requires_grad`` when the engine is built) are fp32.
  The trainer measures the engine/trainer log-prob mismatch and logs it
  (``logprob_mismatch_*``); ``benchmarks/rollout.py`` reports it too.
* llama.cpp memory-maps the files, and fp32 tensors are used in place, so
  ``sync_weights`` writes the new values of the trained tensors straight into
  the files' pages (a shared mapping: llama.cpp sees them at once; no reload).
  A tensor that was not fp32 yet is converted by rewriting the file and
  reloading the model (slow, once).

Sampling: identical prompts (a group's G samples) are prefilled once into one
sequence and the KV cache is copied to the others (``llama_memory_seq_cp``);
all live sequences then advance together, one ``llama_decode`` per token, and a
finished sequence simply leaves the batch. Tokens are drawn in Python from the
returned logits with the same sampler as the HF engine (``sample_tokens``), so
log-probs are those of ``softmax(logits / T)``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onelayer.agents.engine import Generation, SamplingParams, group_prompts, sample_tokens
from onelayer.errors import UserError

log = logging.getLogger("onelayer.llamacpp")


def use_extra_buffers(system_info: str) -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types. Not on a CPU with AMX: there its AMX
    buffers crash (SIGSEGV) on the default model's 4-bit weights as soon as a decode has more than one token
    (batch 8 on an AVX-512 + AMX Xeon, llama-cpp-python 0.3.36; llama.cpp issue 20824 reports the same crash in
    ggml_backend_amx_mul_mat). Off, the 4-bit copy decodes one sequence about a quarter slower there (59 against
    76 tokens/s) and the bf16 copy as fast."""
    return "AMX_INT8 = 1" not in system_info

# HF parameter suffix (after ``model.layers.{i}.``) -> GGUF tensor suffix (after ``blk.{i}.``).
_BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
_ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}  # HF model_type -> GGUF architecture


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of an HF Llama / Qwen2 / Qwen3 parameter name."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        suffix = ".".join(parts[3:])
        if suffix in _BLOCK_NAMES:
            return f"blk.{parts[2]}.{_BLOCK_NAMES[suffix]}"
    raise UserError(f"the llamacpp engine cannot place tensor {hf_name!r} in a GGUF file: "
                    "it supports Llama / Qwen2 / Qwen3 weights only; use --engine hf")


def to_gguf_layout(hf_name: str, value: torch.Tensor, config) -> np.ndarray:
    """An HF tensor as the fp32 array llama.cpp expects: Llama's q/k rows are interleaved for its RoPE."""
    arr = value.detach().to("cpu", torch.float32).numpy()
    if config.model_type == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
        arr = arr.reshape(heads, 2, arr.shape[0] // heads // 2, *arr.shape[1:]).swapaxes(1, 2).reshape(arr.shape)
    return np.ascontiguousarray(arr)


def _hparams(config, arch: str) -> dict:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hp = {
        "block_count": config.num_hidden_layers, "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size, "feed_forward_length": config.intermediate_size,
        "attention.head_count": config.num_attention_heads,
        "attention.head_count_kv": config.num_key_value_heads or config.num_attention_heads,
        "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        "attention.key_length": head_dim, "attention.value_length": head_dim,
        "rope.dimension_count": head_dim, "vocab_size": config.vocab_size,
    }
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    hp["rope.freq_base"] = float(theta)
    return {f"{arch}.{k}": v for k, v in hp.items()}


def build_gguf(model, template: str | os.PathLike, out: str | os.PathLike, fp32: Iterable[str] = (),
               matrices: str = "source") -> dict[str, str]:
    """Write a GGUF file of ``model``'s current weights for llama.cpp; returns {HF name: GGUF name} of its fp32 tensors.

    Metadata (tokenizer, chat template) comes from ``template``; hyper-parameters
    from ``model.config``. Tensors named in ``fp32`` and all 1-D tensors are fp32.
    With ``matrices="source"`` a matrix is copied from ``template`` in its quantized
    form if that dequantizes to exactly the model's value, else written in fp32
    (the same weights as the model). With ``matrices="bf16"`` matrices are the
    model's values rounded to bf16 (llama.cpp's fast batched kernels; other weights).
    """
    import gguf
    from gguf.quants import dequantize, quantize

    if matrices not in ("source", "bf16"):
        raise ValueError(f"matrices must be source or bf16, got {matrices!r}")

    config = model.config
    arch = _ARCHS.get(config.model_type)
    if arch is None:
        raise UserError(f"the llamacpp engine supports Llama / Qwen2 / Qwen3 models, not {config.model_type!r}: use --engine hf")
    reader = gguf.GGUFReader(str(template))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != config.vocab_size:
        raise UserError(f"GGUF {template} has {0 if tokens is None else len(tokens.data)} tokens but the model has "
                        f"{config.vocab_size}: pass gguf_path= a GGUF file of this model's tokenizer")
    old_arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith(("GGUF.", f"{old_arch}.")):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for key, value in _hparams(config, arch).items():
        writer.add_key_value(key, value, gguf.GGUFValueType.FLOAT32 if isinstance(value, float) else gguf.GGUFValueType.UINT32)
    templ = {t.name: t for t in reader.tensors}
    wanted = set(fp32)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    items, fp32_names = [], {}
    for name, value in model.state_dict().items():
        if (tied and name == "lm_head.weight") or "rotary_emb" in name:
            continue
        gname = gguf_name(name)
        arr = to_gguf_layout(name, value, config)
        t = templ.get(gname)
        if name not in wanted and arr.ndim == 2 and matrices == "bf16":
            bf16 = quantize(arr, gguf.GGMLQuantizationType.BF16).view(np.uint8).reshape(arr.shape[0], -1)
            items.append((gname, bf16, gguf.GGMLQuantizationType.BF16))
            continue
        if name not in wanted and t is not None:
            raw = np.asarray(t.data)
            deq = raw if t.tensor_type == gguf.GGMLQuantizationType.F32 else dequantize(raw, t.tensor_type)
            if deq.shape == arr.shape and np.array_equal(deq, arr):
                items.append((gname, raw, t.tensor_type))
                continue
        items.append((gname, arr, gguf.GGMLQuantizationType.F32))
        fp32_names[name] = gname
    for gname, data, qtype in items:
        writer.add_tensor_info(gname, data.shape, data.dtype, data.nbytes, qtype)  # quantized: shape in bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _ in items:
        writer.write_tensor_data(data)
    writer.close()
    return fp32_names


def find_gguf(model) -> Path:
    """The GGUF file a model was loaded from (its directory's only .gguf), else the default model's (for its tokenizer)."""
    from onelayer.agents.models import _smollm2_gguf

    src = getattr(model.config, "_name_or_path", "") or ""
    p = Path(src)
    if p.suffix == ".gguf" and p.is_file():
        return p
    if p.is_dir():
        files = sorted(p.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
    return _smollm2_gguf()


@dataclass
class SyncStats:
    """What the last ``sync_weights`` wrote: tensors, bytes, wall time, and whether the model had to be reloaded."""

    tensors: int
    bytes: int
    seconds: float
    reloaded: bool = False


@dataclass
class _Variant:
    """One llama.cpp copy of the model: its GGUF file, the loaded model, a context, and writable fp32 views."""

    matrices: str
    path: Path
    model: object = None
    ctx: object = None
    ctx_shape: tuple[int, int] = (0, 0)
    fp32: dict | None = None
    views: dict | None = None


class LlamaCppEngine:
    """Batched multi-sequence sampling with llama.cpp on a GGUF copy of the trainer's model.

    Args:
        model, tokenizer: the HF model being trained (its weights define the GGUF) and its tokenizer.
        max_batch_size: sequences decoded together.
        gguf_path: source of metadata and quantized tensors (default: the file the model was loaded from).
        n_threads: llama.cpp threads (default: torch's thread count).
        kv_type: "f16" (llama.cpp's default) or "f32" KV cache.
        share_prefix: prefill identical prompts once and copy their KV cache.
        flash_attn: llama.cpp's flash attention (None: its own choice; it computes in f16, False: exact fp32
            attention, which with ``kv_type="f32"`` and fp32 weights matches the HF model to ~1e-6).
        weights: "source" (the source GGUF's quantized tensors where they equal the model's weights: the
            same weights, 4-bit reads, fastest for few sequences), "bf16" (matrices rounded to bf16:
            llama.cpp's batched bf16 kernels, fastest for many sequences) or "auto" (both copies; a
            micro-batch of at least ``bf16_from_batch`` sequences uses bf16). Trained tensors are fp32 in all.
        bf16_prefill: with ``weights="auto"``, prefill the prompts of a micro-batch that decodes on the 4-bit copy
            with the bf16 copy (its batched kernels prefill ~2.5x faster) and move their KV cache over. The
            prompt's keys and values and the first token's log-prob then carry bf16 rounding, as a large batch's do.
    """

    def __init__(self, model, tokenizer, max_batch_size: int = 64, gguf_path: str | None = None,
                 n_threads: int | None = None, kv_type: str = "f16", share_prefix: bool = True,
                 flash_attn: bool | None = None, weights: str = "auto", bf16_from_batch: int = 16,
                 bf16_prefill: bool = True):
        try:
            import llama_cpp
        except ImportError:
            raise UserError("the llamacpp engine needs llama-cpp-python: pip install llama-cpp-python") from None
        from onelayer.agents.engine import HFEngine

        self._L = llama_cpp
        self.hf_model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        ref = HFEngine(model, tokenizer)  # the same EOS / pad rules as the HF engine
        self.eos_ids, self.pad_id = ref.eos_ids, ref.pad_id
        self.n_threads = n_threads or torch.get_num_threads()
        if kv_type not in ("f16", "f32"):
            raise UserError(f"kv_type must be f16 or f32, got {kv_type!r}")
        if weights not in ("source", "bf16", "auto"):
            raise UserError(f"weights must be source, bf16 or auto, got {weights!r}")
        self.kv_type = llama_cpp.GGML_TYPE_F16 if kv_type == "f16" else llama_cpp.GGML_TYPE_F32
        self.share_prefix = share_prefix
        self.flash_attn = flash_attn
        self.bf16_from_batch = bf16_from_batch
        self.bf16_prefill = bf16_prefill
        self._cap = max(512, max_batch_size)  # tokens per llama_decode call
        self.template = Path(gguf_path) if gguf_path else find_gguf(model)
        self._dir = tempfile.mkdtemp(prefix="onelayer-llamacpp-")
        kinds = ["source", "bf16"] if weights == "auto" else [weights]
        self._variants = {k: _Variant(k, Path(self._dir) / f"model-{k}.gguf") for k in kinds}
        self._silence_logs()
        llama_cpp.llama_backend_init()
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        for v in self._variants.values():
            self._load(v, trained)
        self.last_sync: SyncStats | None = None

    @property
    def fp32(self) -> dict[str, str]:
        """{HF name: GGUF name} of the tensors every copy holds in fp32 (synced in place)."""
        common = None
        for v in self._variants.values():
            common = dict(v.fp32) if common is None else {k: g for k, g in common.items() if k in v.fp32}
        return common or {}

    # ------------------------------------------------------------ model file
    def _silence_logs(self) -> None:
        L = self._L
        if os.environ.get("ONELAYER_LLAMACPP_LOGS"):
            return
        self._log_cb = L.llama_log_callback(lambda level, text, user: None)  # kept alive with the engine
        L.llama_log_set(self._log_cb, ctypes.c_void_p())

    def _load(self, v: _Variant, fp32: Iterable[str]) -> None:
        """(Re)write a copy's GGUF with ``fp32`` tensors in fp32, load it memory-mapped, map its fp32 tensors for writing."""
        import gguf

        L = self._L
        self._free(v)
        t0 = time.perf_counter()
        v.fp32 = build_gguf(self.hf_model, self.template, v.path, fp32, v.matrices)
        params = L.llama_model_default_params()
        params.load_mode = L.LLAMA_LOAD_MODE_MMAP  # tensors live in the file's pages: sync writes reach them
        if not use_extra_buffers(L.llama_print_system_info().decode(errors="replace")):
            params.use_extra_bufts = False
        v.model = L.llama_model_load_from_file(str(v.path).encode(), params)
        if not v.model:
            raise RuntimeError(f"llama.cpp could not load {v.path}")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(v.model))
        reader = gguf.GGUFReader(str(v.path))
        offsets = {t.name: (t.data_offset, tuple(int(x) for x in reversed(t.shape))) for t in reader.tensors}
        file = np.memmap(v.path, dtype=np.uint8, mode="r+")
        v.views = {}
        for hf_name, gname in v.fp32.items():
            off, shape = offsets[gname]
            v.views[hf_name] = file[off : off + 4 * int(np.prod(shape))].view(np.float32).reshape(shape)
        log.info("llama.cpp %s model written and loaded in %.1f s (%d fp32 tensors)", v.matrices,
                 time.perf_counter() - t0, len(v.fp32))

    def _free(self, v: _Variant) -> None:
        L = self._L
        if v.ctx is not None:
            L.llama_free(v.ctx)
            v.ctx, v.ctx_shape = None, (0, 0)
        if v.model is not None:
            L.llama_model_free(v.model)
            v.model = None
        v.views = {}

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        """Write the trained tensors into the memory-mapped GGUF copies (in place; a reload only for tensors not yet fp32)."""
        t0 = time.perf_counter()
        items = list(named_tensors)
        for n, _ in items:
            gguf_name(n)  # unknown names fail here, with a message
        reloaded = False
        for v in self._variants.values():
            missing = [n for n, _ in items if n not in v.views]
            if missing:
                log.warning("llamacpp engine: %d tensors (e.g. %s) were not fp32 in its %s copy; rewriting and reloading it",
                            len(missing), missing[0], v.matrices)
                self._load(v, set(v.fp32) | set(missing))  # the file now holds the current values of everything
                reloaded = True
        nbytes = 0
        for name, value in items:
            arr = to_gguf_layout(name, value, self.hf_model.config)
            for v in self._variants.values():
                view = v.views[name]
                if arr.shape != view.shape:
                    raise ValueError(f"sync_weights: {name} has shape {arr.shape}, the engine's copy {view.shape}")
                view[...] = arr
            nbytes += arr.nbytes
        self.last_sync = SyncStats(len(items), nbytes, time.perf_counter() - t0, reloaded)
        return self.last_sync

    def _variant(self, n: int) -> _Variant:
        if len(self._variants) == 1:
            return next(iter(self._variants.values()))
        return self._variants["bf16" if n >= self.bf16_from_batch else "source"]

    # -------------------------------------------------------------- sampling
    def _context(self, v: _Variant, n_seq: int, per_seq: int):
        """A context of copy ``v`` with at least ``n_seq`` sequences of ``per_seq`` cells each (reused while big enough)."""
        L = self._L
        if v.ctx is not None and n_seq <= v.ctx_shape[0] and per_seq <= v.ctx_shape[1]:
            L.llama_memory_clear(L.llama_get_memory(v.ctx), True)
            return v.ctx
        if v.ctx is not None:
            L.llama_free(v.ctx)
            v.ctx = None
            n_seq, per_seq = max(n_seq, v.ctx_shape[0]), max(per_seq, v.ctx_shape[1])
        cp = L.llama_context_default_params()
        cp.n_seq_max = n_seq
        cp.n_ctx = n_seq * per_seq
        cp.n_batch = cp.n_ubatch = self._cap
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.kv_unified = False  # one KV stream per sequence: attention reads only that sequence's cells
        cp.type_k = cp.type_v = self.kv_type
        cp.no_perf = True
        cp.flash_attn_type = {None: L.LLAMA_FLASH_ATTN_TYPE_AUTO, True: L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                              False: L.LLAMA_FLASH_ATTN_TYPE_DISABLED}[self.flash_attn]
        v.ctx = L.llama_init_from_model(v.model, cp)
        if not v.ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {n_seq} x {per_seq} tokens")
        v.ctx_shape = (n_seq, per_seq)
        return v.ctx

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample one response per prompt, in micro-batches of ``max_batch_size``, seeded by ``params.seed``."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        gen = torch.Generator(device="cpu").manual_seed(int(params.seed))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            for i, g in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params, gen)):
                out[i] = g
        return out  # type: ignore[return-value]

    def _decode(self, ctx, batch, tokens: list[tuple[int, int, int, bool]]) -> None:
        """Run (token, position, sequence, wants_logits) entries through llama_decode, ``_cap`` at a time."""
        L = self._L
        for s in range(0, len(tokens), self._cap):
            part = tokens[s : s + self._cap]
            for j, (tok, pos, seq, want) in enumerate(part):
                batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = tok, pos, 1, want
                batch.seq_id[j][0] = seq
            batch.n_tokens = len(part)
            rc = L.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc} (context too small?)")

    def _move_sequences(self, src, dst, pairs: list[tuple[int, int]]) -> None:
        """Copy the KV cache of each (sequence in ``src``, sequence in ``dst``) pair between two contexts of copies
        with the same architecture and KV type (llama.cpp's per-sequence state: cells, positions, keys, values)."""
        L = self._L
        for a, b in pairs:
            size = L.llama_state_seq_get_size(src, a)
            buf = (ctypes.c_uint8 * size)()
            got = L.llama_state_seq_get_data(src, buf, size, a)
            if not got or not L.llama_state_seq_set_data(dst, buf, got, b):
                raise RuntimeError(f"llama.cpp could not move sequence {a}'s KV cache ({size} bytes) to sequence {b}")

    def _compact(self, mem, seq_of: list[int], done: list[int], still: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Free the finished rows' sequences and move the live ones into sequences 0..k-1, ``still`` in sequence order.

        With one KV stream per sequence llama.cpp puts only consecutive sequence ids in one micro-batch, so a
        batch with gaps is computed in several passes over the weights (measured: 59 of 64 rows took 1.8x as
        long as all 64). Each gap below k takes the highest live sequence: one KV copy per finished row at most.
        """
        L = self._L
        for row in done:
            L.llama_memory_seq_rm(mem, seq_of[row], -1, -1)
        k = len(still)
        holes = sorted(set(range(k)) - {seq_of[row] for row, _ in still})
        movers = sorted((row for row, _ in still if seq_of[row] >= k), key=lambda r: seq_of[r])
        for hole, row in zip(holes, movers):
            L.llama_memory_seq_cp(mem, seq_of[row], hole, -1, -1)
            L.llama_memory_seq_rm(mem, seq_of[row], -1, -1)
            seq_of[row] = hole
        return sorted(still, key=lambda e: seq_of[e[0]])

    def _logits(self, ctx, rows: int) -> torch.Tensor:
        ptr = self._L.llama_get_logits(ctx)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab)))

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator) -> list[Generation]:
        L = self._L
        n = len(prompts)
        uniq, owner = group_prompts(prompts) if self.share_prefix else (prompts, list(range(n)))
        per_seq = -(-(max(len(p) for p in prompts) + params.max_new_tokens + 1) // 256) * 256
        v = self._variant(n)
        ctx = self._context(v, n, per_seq)
        first = {}  # distinct prompt -> the sequence that decodes it first
        for row, u in enumerate(owner):
            first.setdefault(u, row)
        pre = self._variants.get("bf16") if self.bf16_prefill and v.matrices == "source" else None
        pctx, pseq = ctx, [first[u] for u in range(len(uniq))]  # the context that prefills, each prompt's sequence there
        if pre:
            pctx, pseq = self._context(pre, *v.ctx_shape), list(range(len(uniq)))
            if pre.ctx_shape != v.ctx_shape:  # llama.cpp moves a sequence only between contexts of as many streams
                ctx = self._context(v, *pre.ctx_shape)
        batch = L.llama_batch_init(self._cap, 0, 1)
        try:
            # Logits come back in batch order: the last token of each prefilled prompt.
            entries = [(tok, j, pseq[u], j == len(uniq[u]) - 1) for u in range(len(uniq)) for j, tok in enumerate(uniq[u])]
            logits_rows: list[torch.Tensor] = []
            for s in range(0, len(entries), self._cap):
                part = entries[s : s + self._cap]
                self._decode(pctx, batch, part)
                k = sum(e[3] for e in part)
                if k:
                    logits_rows.append(self._logits(pctx, k).clone())
            uniq_logits = torch.cat(logits_rows)
            if pre:
                self._move_sequences(pctx, ctx, [(pseq[u], first[u]) for u in range(len(uniq))])
            mem = L.llama_get_memory(ctx)
            for row, u in enumerate(owner):
                if row != first[u]:
                    L.llama_memory_seq_cp(mem, first[u], row, -1, -1)
            logits = uniq_logits[torch.tensor(owner)]
            pos = [len(p) for p in prompts]
            tokens: list[list[int]] = [[] for _ in range(n)]
            logps: list[list[float]] = [[] for _ in range(n)]
            finish = ["length"] * n
            alive = list(range(n))
            seq_of = list(range(n))  # row -> its sequence in the context
            greedy = params.temperature <= 0
            eos = set(self.eos_ids)
            for t in range(params.max_new_tokens):
                u = None if greedy else torch.rand(n, generator=gen, dtype=torch.float64)[alive]
                nxt, lp = sample_tokens(logits, params, u)
                still = []
                for r, (tok, lpv) in enumerate(zip(nxt.tolist(), lp.tolist())):
                    row = alive[r]
                    tokens[row].append(tok)
                    logps[row].append(lpv)
                    if tok in eos:
                        finish[row] = "stop"
                    else:
                        still.append((row, tok))
                if not still or t == params.max_new_tokens - 1:
                    break
                if len(still) < len(alive):
                    still = self._compact(mem, seq_of, [r for r in alive if finish[r] == "stop"], still)
                self._decode(ctx, batch, [(tok, pos[row], seq_of[row], True) for row, tok in still])
                for row, _ in still:
                    pos[row] += 1
                alive = [row for row, _ in still]
                logits = self._logits(ctx, len(alive))
        finally:
            L.llama_batch_free(batch)
        return [Generation(t, lp, f) for t, lp, f in zip(tokens, logps, finish)]

    def close(self) -> None:
        """Free llama.cpp's model and context and delete the engine's GGUF file."""
        if getattr(self, "_L", None) is None:
            return
        for v in self._variants.values():
            self._free(v)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._L = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
