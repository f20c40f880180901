"""Rollout engines: the interface and the HF-transformers implementation.

An engine turns prompt token ids into sampled responses with the per-token
log-probabilities of the sampled tokens. The trainer only talks to this
interface, so a vLLM (GPU) or llama.cpp (CPU) engine can replace the HF one.

Log-probs are those of the tempered distribution ``softmax(logits / T)``
(``T = 1`` for greedy decoding), before top-p truncation, as vLLM reports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from onelayer.agents.scoring import action_log_probs


@dataclass
class SamplingParams:
    """How to sample. ``temperature = 0`` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Generation:
    """One sampled response."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (hit EOS) or "length" (hit max_new_tokens)
    # With ``HFEngine.capture_block`` set: the hidden states that entered that decoder block while this response
    # was sampled, one row per position of prompt + response except the last response token (never fed back),
    # shape (len(prompt) + len(token_ids) - 1, hidden).
    hidden: torch.Tensor | None = None


class RolloutEngine(Protocol):
    """What the trainer and the rollout collector need from an inference engine."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample one response per prompt (token ids in, token ids + log-probs out)."""
        ...

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Receive updated weights (only the trained ones) after an optimizer step."""
        ...


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return probs
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(-1)
    drop = cum - sorted_p > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, idx, sorted_p)


SAMPLE_CHUNK_ROWS = 16
"""Rows :func:`sample_tokens` works on at a time: its (rows, vocab) temporaries, four of them at the last decoding
step next to a full KV cache, are the sampler's peak memory above the cache (every op is row-wise, so a chunk's
values are those of the whole block)."""


def sample_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens for a (rows, vocab) block of logits and their log-probs under ``softmax(logits / T)``.

    Greedy (``T <= 0``) takes the argmax. Otherwise one uniform per row (``uniforms``)
    picks a token by inverting the CDF of the top-p-truncated distribution: one
    random number per row instead of ``torch.multinomial``'s one per vocabulary
    entry, and a row's draw does not depend on which other rows are in the batch.
    """
    n = logits.shape[0]
    if n > SAMPLE_CHUNK_ROWS:
        parts = [_sample_rows(logits[i : i + SAMPLE_CHUNK_ROWS], params,
                              None if uniforms is None else uniforms[i : i + SAMPLE_CHUNK_ROWS])
                 for i in range(0, n, SAMPLE_CHUNK_ROWS)]
        return torch.cat([t for t, _ in parts]), torch.cat([lp for _, lp in parts])
    return _sample_rows(logits, params, uniforms)


def _sample_rows(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    greedy = params.temperature <= 0
    if greedy:
        logprobs = torch.log_softmax(logits, dim=-1)
        nxt = logits.argmax(-1)
    else:
        # One (rows, vocab) temporary at a time, updated in place: the sampler's peak memory is the KV cache
        # plus these, at the last decoding step (the values are those of the out-of-place expressions).
        logprobs = torch.log_softmax(logits / params.temperature, dim=-1)
        cdf = _top_p_filter(logprobs.exp(), params.top_p).double()
        cdf.cumsum_(-1)
        target = uniforms.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:]
        nxt = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
        del cdf
    return nxt, logprobs.gather(-1, nxt[:, None]).squeeze(-1)


KV_GROWTH = 32
"""Positions a RoomyLayer's buffers grow by when a decode step runs out of room (one copy per 32 steps)."""


def roomy_cache(max_length: int):
    """A transformers ``DynamicCache`` whose layers keep keys and values in buffers with room to grow: a decode step
    writes its token in place instead of concatenating (copying) the whole cache, which ``DynamicLayer`` does on
    every step (9% of the default model's sampling in results/profile_step.json). ``max_length`` caps the room
    (prompt width + max new tokens). The keys and values attention reads are the same numbers, as views."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        _kbuf: torch.Tensor | None = None
        _vbuf: torch.Tensor | None = None
        _len = 0

        def _filled(self) -> int:
            """Positions the layer holds (the buffers' filled part, or the keys put there from outside)."""
            if self._intact():
                return self._len
            return 0 if self.keys is None or self.keys.numel() == 0 else self.keys.shape[-2]

        def _intact(self) -> bool:
            """The layer's keys are still the view update() made (crop or reorder from outside replaces them)."""
            kb = self._kbuf
            return (kb is not None and self.keys is not None and self.keys.data_ptr() == kb.data_ptr()
                    and tuple(self.keys.shape) == (kb.shape[0], kb.shape[1], self._len, kb.shape[3]))

        def _allocate(self, rows: torch.Tensor | None, like: torch.Tensor, room: int) -> None:
            """Buffers of ``room`` positions holding the current keys/values (of ``rows`` only, when given)."""
            keep = self._filled()
            k, v = (self.keys, self.values) if keep else (None, None)
            if k is not None and rows is not None:
                k, v = k[rows], v[rows]
            b = like.shape[0] if k is None else k.shape[0]
            self._kbuf = like.new_empty((b, like.shape[1], max(room, keep), like.shape[3]))
            self._vbuf = like.new_empty((b, like.shape[1], max(room, keep), like.shape[3]))
            if keep:
                self._kbuf[:, :, :keep] = k
                self._vbuf[:, :, :keep] = v
            self._len = keep
            self.keys, self.values = self._kbuf[:, :, :keep], self._vbuf[:, :, :keep]

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if not self._intact() or self._len + n > self._kbuf.shape[2]:
                have = self._filled()
                self._allocate(None, key_states, max(have + n, min(max_length, have + n + KV_GROWTH)))
                self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            end = self._len + n
            self._kbuf[:, :, self._len:end] = key_states
            self._vbuf[:, :, self._len:end] = value_states
            self._len = end
            self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if not self._intact():
                return super().batch_select_indices(indices)
            self._allocate(indices, self._kbuf, self._kbuf.shape[2])  # copies the filled positions only

    cache = DynamicCache()
    cache.layer_class_to_replicate = RoomyLayer
    return cache


def group_prompts(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Distinct prompts (first-seen order) and, for every prompt, the index of its distinct one."""
    first: dict[tuple[int, ...], int] = {}
    owner = [first.setdefault(tuple(p), len(first)) for p in prompts]
    uniq = [list(k) for k in first]
    return uniq, owner


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a response: the tokenizer's EOS and the model's generation config EOS ids."""
    eos: set[int] = set()
    for src in (getattr(tokenizer, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            eos.add(src)
        elif isinstance(src, (list, tuple)):
            eos.update(int(x) for x in src)
    if not eos:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token")
    return sorted(eos)


class HFEngine:
    """Batched sampling with a KV cache on a transformers causal LM.

    Prompts are left-padded. Identical prompts in a micro-batch (a GRPO group's G
    samples of one task) are prefilled once and their cache rows copied. Finished
    sequences leave the batch: their cache rows are dropped once they make up
    ``compact_fraction`` of it (a cache copy costs about as much as a few decode
    steps of dead rows). Neither changes what is computed for a live row, so
    greedy tokens equal those of the plain path (``share_prefix=False,
    compact_fraction=0``) and of ``model.generate``. The KV cache grows in
    place (``roomy_cache``: no per-step copy of the whole cache; ``False``:
    transformers' ``DynamicCache``), with the same numbers.

    ``capture_block = l`` (the trainer sets it while sampling for an update that
    trains only blocks >= l) keeps, for every generation, the hidden states that
    entered block ``l`` (``Generation.hidden``): the frozen blocks below it then
    need not run again in the update. Storing them is the only cost.
    """

    capture_block: int | None = None

    def __init__(self, model, tokenizer, max_batch_size: int = 64, share_prefix: bool = True,
                 compact_fraction: float = 0.25, roomy_cache: bool = True):
        self.model = model
        self.roomy_cache = roomy_cache
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
        self.compact_fraction = compact_fraction
        self.eos_ids = eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # transformers 5 renamed `past_key_values` to `cache`; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def sync_weights(self, named_tensors) -> None:
        """The HF engine samples from the trained model itself: nothing to copy."""

    @torch.no_grad()
    def score_actions(self, prompts: list[list[int]], candidates: list[list[list[int]]], norm: str = "mean",
                      temperature: float = 1.0) -> list[list[float]]:
        """``log pi(a_k | prompt)`` for each prompt's candidate actions (``agents.scoring``), packed rows in
        micro-batches of at most 16 (a packed row is a prompt plus all its candidates)."""
        out: list[list[float]] = []
        step = max(1, min(self.max_batch_size, 16))
        # With capture_block set, the states entering that block over each prompt's packed row (prompt, then every
        # candidate) are kept in ``scored_hidden``, one per prompt, for the update to replay.
        self.scored_hidden = [] if self.capture_block is not None else None
        for s in range(0, len(prompts), step):
            rows = action_log_probs(self.model, prompts[s : s + step], candidates[s : s + step], self.pad_id, norm,
                                    temperature, capture_block=self.capture_block, captured=self.scored_hidden)
            out.extend(r.float().tolist() for r in rows)
        return out

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample one response per prompt, in micro-batches of ``max_batch_size``, seeded by ``params.seed``."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        device = next(self.model.parameters()).device
        gen = torch.Generator(device="cpu").manual_seed(int(params.seed))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per micro-batch
        out: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            for i, g in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params, gen, device)):
                out[i] = g
        return out  # type: ignore[return-value]

    def _forward(self, ids, mask, pos, cache) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                          **{self._cache_kw: cache}).logits[:, -1, :]

    def _generate_batch(self, prompts, params: SamplingParams, gen: torch.Generator, device) -> list[Generation]:
        if self.capture_block is None:
            return self._sample_batch(prompts, params, gen, device, None)
        from onelayer.agents.models import find_decoder_blocks

        seen: list[torch.Tensor] = []

        def grab(module, args, kwargs):
            seen.append((args[0] if args else kwargs["hidden_states"]).detach())

        handle = find_decoder_blocks(self.model)[1][self.capture_block].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            return self._sample_batch(prompts, params, gen, device, seen)
        finally:
            handle.remove()

    def _sample_batch(self, prompts, params: SamplingParams, gen: torch.Generator, device,
                      seen: list[torch.Tensor] | None) -> list[Generation]:
        """One micro-batch; ``seen`` (when capturing) receives the captured block input of every forward."""
        from transformers import DynamicCache

        n = len(prompts)
        uniq, owner = group_prompts(prompts) if self.share_prefix else (prompts, list(range(n)))
        width = max(len(p) for p in uniq)
        ids = torch.full((len(uniq), width), self.pad_id, dtype=torch.long)
        # The whole mask is allocated once; each step uses its first width + t columns.
        full_mask = torch.ones((len(uniq), width + params.max_new_tokens), dtype=torch.long)
        for i, p in enumerate(uniq):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            full_mask[i, : width - len(p)] = 0
        ids, full_mask = ids.to(device), full_mask.to(device)
        positions = (full_mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        cache = roomy_cache(width + params.max_new_tokens) if self.roomy_cache else DynamicCache()
        logits = self._forward(ids, full_mask[:, :width], positions, cache)
        step_pos = positions[:, -1:] + 1
        # Captured states per original row: its prompt's prefill rows, then one row per token fed back.
        captured: list[list[torch.Tensor]] | None = None
        if seen is not None:
            pre = seen.pop()
            captured = [[pre[owner[i], width - len(prompts[i]):]] for i in range(n)]
        if len(uniq) < n:  # expand the shared prefills to one cache row per prompt
            idx = torch.tensor(owner, device=device)
            cache.batch_select_indices(idx)
            logits, full_mask, step_pos = logits[idx], full_mask[idx], step_pos[idx]
        eos = torch.tensor(self.eos_ids, device=device)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        rows = list(range(n))  # original prompt of each cache row
        live = [True] * n  # per cache row
        greedy = params.temperature <= 0
        for t in range(params.max_new_tokens):
            # One uniform per original row every step, so a row's draws do not depend on the cache layout.
            u = None if greedy else torch.rand(n, generator=gen, dtype=torch.float64)[rows]
            nxt, lp = sample_tokens(logits, params, u)
            done = torch.isin(nxt, eos)
            nxt_l, lp_l, done_l = nxt.tolist(), lp.tolist(), done.tolist()
            for r, row in enumerate(rows):
                if not live[r]:
                    continue
                tokens[row].append(nxt_l[r])
                logps[row].append(lp_l[r])
                if done_l[r]:
                    finish[row] = "stop"
                    live[r] = False
            n_live = sum(live)
            if n_live == 0 or t == params.max_new_tokens - 1:
                break
            if len(rows) - n_live >= max(1.0, self.compact_fraction * len(rows)):
                keep = [r for r in range(len(rows)) if live[r]]
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                full_mask, step_pos, nxt = full_mask[idx], step_pos[idx], nxt[idx]
                rows, live = [rows[r] for r in keep], [True] * len(keep)
            logits = self._forward(nxt[:, None], full_mask[:, : width + t + 1], step_pos, cache)
            step_pos = step_pos + 1
            if captured is not None:  # the token just fed is not a row's last one exactly when the row is live
                fed = seen.pop()
                for r, row in enumerate(rows):
                    if live[r]:
                        captured[row].append(fed[r])
        hidden = [torch.cat(c).cpu() for c in captured] if captured is not None else [None] * n
        return [Generation(t, lp, f, h) for t, lp, f, h in zip(tokens, logps, finish, hidden)]


# ---------------------------------------------------------------- registry
ENGINES: dict[str, str] = {
    "hf": "onelayer.agents.engine:HFEngine",
    "vllm": "onelayer.agents.vllm_engine:VLLMEngine",
    "llamacpp": "onelayer.agents.llamacpp_engine:LlamaCppEngine",
}


def register_engine(name: str, target: str) -> None:
    """Register an engine class by ``'module:Class'``; its ``__init__(model, tokenizer, **options)``."""
    ENGINES[name] = target


def make_engine(name: str, model, tokenizer, **options) -> RolloutEngine:
    """Build the rollout engine called ``name`` ("hf", or one registered) around ``model``.

    Unknown names raise a UserError listing the choices; an engine whose
    backend is missing raises a UserError naming what to install.
    """
    import importlib

    from onelayer.errors import UserError

    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}: choose one of {', '.join(sorted(ENGINES))}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, tokenizer, **options)

