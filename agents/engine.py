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


class HFEngine:
    """Batched sampling with a KV cache on a transformers causal LM.

    Prompts are left-padded; finished sequences leave the batch (their cache
    rows are dropped) so long tails do not cost the whole batch.
    """

    def __init__(self, model, tokenizer, max_batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        eos = set()
        for src in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(src)
            elif isinstance(src, (list, tuple)):
                eos.update(int(x) for x in src)
        if not eos:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token")
        self.eos_ids = sorted(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # transformers 5 renamed `past_key_values` to `cache`; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def sync_weights(self, named_tensors) -> None:
        """The HF engine samples from the trained model itself: nothing to copy."""

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

    def _generate_batch(self, prompts, params: SamplingParams, gen: torch.Generator, device) -> list[Generation]:
        from transformers import DynamicCache

        n = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        eos = torch.tensor(self.eos_ids, device=device)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        alive = list(range(n))  # original row of each live cache row
        step_ids, step_pos = ids, positions
        greedy = params.temperature <= 0
        for _ in range(params.max_new_tokens):
            logits = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                                use_cache=True, logits_to_keep=1, **{self._cache_kw: cache}).logits[:, -1, :].float()
            scaled = logits if greedy else logits / params.temperature
            logprobs = torch.log_softmax(scaled, dim=-1)
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = _top_p_filter(logprobs.exp(), params.top_p)
                nxt = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(device)
            lp = logprobs.gather(-1, nxt[:, None]).squeeze(-1)
            done = torch.isin(nxt, eos)
            nxt_l, lp_l, done_l = nxt.tolist(), lp.tolist(), done.tolist()
            for r, row in enumerate(alive):
                tokens[row].append(nxt_l[r])
                logps[row].append(lp_l[r])
                if done_l[r]:
                    finish[row] = "stop"
            keep = [r for r in range(len(alive)) if not done_l[r]]
            if not keep:
                break
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=-1)
            step_pos = step_pos[:, -1:] + 1
            step_ids = nxt[:, None]
            if len(keep) < len(alive):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                mask, step_pos, step_ids = mask[idx], step_pos[idx], step_ids[idx]
                alive = [alive[r] for r in keep]
        return [Generation(t, lp, f) for t, lp, f in zip(tokens, logps, finish)]


# ---------------------------------------------------------------- registry
ENGINES: dict[str, str] = {
    "hf": "onelayer.agents.engine:HFEngine",
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

