"""The update's rows (one LLM call each) and the policy's log-probs over them.

This is the seam between the PPO update (training/ppo.py) and the forward pass
(training/logprobs.py, agents/scoring.py): the update asks for a micro-batch of
rows by index and for its log-probs; how they are computed (the chunked LM head,
the frozen lower blocks replayed from a cache, packed candidate actions) stays here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from onelayer.agents.scoring import action_log_probs, decoder_body, pack_candidates
from onelayer.agents.trajectory import Trajectory
from onelayer.training.logprobs import LowerStack, head_logprobs, response_logprobs


@dataclass
class Row:
    """One LLM call of a rollout, ready for the loss."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    engine_logprobs: list[float] | None = None  # the engine's sampling log-probs of response_ids
    padding: bool = False  # FSDP: a stand-in row (no tokens count) so every rank runs as many passes
    candidates: list[list[int]] | None = None  # score action format: every admissible action's tokens
    choice: int | None = None  # score action format: the chosen candidate
    lower_hidden: torch.Tensor | None = None  # the sampler's states entering the lowest trained block (Step.lower_hidden)


def rows_from(trajs: list[Trajectory], adv: list[np.ndarray]) -> list[Row]:
    """One row per step that produced tokens; its tokens get that step's advantage (``adv``: one array per trajectory)."""
    return [Row(s.prompt_ids, s.response_ids, float(a), s.logprobs, candidates=s.candidates, choice=s.choice,
                lower_hidden=s.lower_hidden)
            for t, a_t in zip(trajs, adv) for s, a in zip(t.steps, a_t) if s.response_ids]


@dataclass
class Packed:
    """A micro-batch's rows with each distinct prompt once: prompt, then every response that follows it.

    ``ids``/``mask``/``pos`` are :func:`~onelayer.agents.scoring.pack_candidates`'s packed rows (a response
    attends to its prompt and its own earlier tokens); ``pred`` indexes the flattened (G*T) states that predict
    each counted response token, in the order of the unpacked layout (rows in ``idx`` order, tokens in order);
    ``slots[j] = (g, start)``: row j's response sits at ``[g, start : start + len(response)]``.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor
    pred: torch.Tensor
    slots: list[tuple[int, int]]
    prompt_len: list[int]  # per packed row


def pack_rows(rows: list[Row], pad_id: int) -> Packed:
    """Pack ``rows`` by prompt: rows with the same prompt tokens (a group's samples) share one prompt copy."""
    first: dict[tuple[int, ...], int] = {}
    prompts: list[list[int]] = []
    responses: list[list[list[int]]] = []
    member: list[tuple[int, int]] = []  # row j -> (packed row, response index)
    for r in rows:
        g = first.setdefault(tuple(r.prompt_ids), len(first))
        if g == len(prompts):
            prompts.append(r.prompt_ids)
            responses.append([])
        member.append((g, len(responses[g])))
        responses[g].append(r.response_ids)
    ids, mask, pos, pred, _, spans = pack_candidates(prompts, responses, pad_id)
    starts = []
    for g, resps in enumerate(responses):
        at, s = len(prompts[g]), []
        for resp in resps:
            s.append(at)
            at += len(resp)
        starts.append(s)
    order = [torch.arange(*spans[g][k]) for (g, k), r in zip(member, rows) if not r.padding]
    pred = pred[torch.cat(order)] if order else pred[:0]
    return Packed(ids, mask, pos, pred, [(g, starts[g][k]) for g, k in member], [len(p) for p in prompts])


@dataclass
class MicroBatch:
    """Rows ``idx`` of the update as right-padded tensors (score format: no token tensors, one column per row)."""

    idx: list[int]
    ids: torch.Tensor | None  # (rows, T) prompt + response tokens
    attn: torch.Tensor | None  # (rows, T) 1 on real tokens
    resp: torch.Tensor  # (rows, T) 1 on the response tokens that count in the loss (0 on padding rows)
    adv: torch.Tensor  # (rows, 1) each row's advantage


class RowLogprobs:
    """The policy's log-probs over the rows of one update: ``logprobs(batch) -> (logp, entropy)``, both (rows, T).

    Generated text: the log-prob of each response token (training/logprobs.py). Score format:
    one value per row, log pi(chosen action | s) over the admissible actions, and the entropy
    of pi(. | s). With a ``lower`` stack, ``capture`` runs the frozen blocks below the lowest
    trained one once per row and every later pass on that row (old policy, reference, each
    PPO epoch) replays their output instead of running them again.
    """

    def __init__(self, model, pad_id: int, *, scoring: bool, temperature: float, chunk_size: int,
                 lower: LowerStack | None = None, share_prompts: bool = False):
        self.model, self.pad_id, self.scoring = model, pad_id, scoring
        self.temperature, self.chunk_size, self.lower = temperature, chunk_size, lower
        # Packing needs a 4-D boolean mask, which SDPA attention takes (eager and flash attention do not).
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        self.share_prompts = share_prompts and not scoring and impl == "sdpa"
        self.rows: list[Row] = []
        self._row_hidden: dict[int, torch.Tensor] = {}  # row -> hidden states entering the lowest trained block
        self._packs: dict[tuple[int, ...], Packed] = {}

    def start(self, rows: list[Row]) -> None:
        """Work on a new batch of rows (forgets the previous batch's cached hidden states).

        Rows that carry the sampler's lower-block states (``Row.lower_hidden``, captured by an engine with
        ``capture_block`` at the lowest trained block) replay them: the frozen blocks never run in the update.
        """
        self.rows, self._row_hidden, self._packs = rows, {}, {}
        if self.lower is None:
            return
        device = next(self.model.parameters()).device
        for i, r in enumerate(rows):
            h = r.lower_hidden
            # generated text: prompt and response but its last token; score format: prompt and every candidate
            n = (len(r.prompt_ids) + sum(len(c) for c in r.candidates) if self.scoring and r.candidates
                 else len(r.prompt_ids) + len(r.response_ids) - 1)
            if h is not None and h.shape[0] == n:
                self._row_hidden[i] = h.to(device)

    def needs_capture(self, idx: list[int]) -> bool:
        """Whether any of rows ``idx`` has no lower-block states yet (``capture`` would run the frozen blocks)."""
        return self.lower is not None and not self.scoring and any(i not in self._row_hidden for i in idx)

    def batch(self, idx: list[int]) -> MicroBatch:
        """Rows ``idx`` as tensors on the model's device."""
        rows = [self.rows[i] for i in idx]
        device = next(self.model.parameters()).device
        adv = torch.tensor([r.advantage for r in rows], dtype=torch.float32)[:, None].to(device)
        if self.scoring:  # one "token" per step: the action; __call__ packs the candidates itself
            resp = torch.tensor([[0.0 if r.padding else 1.0] for r in rows], dtype=torch.float32)
            return MicroBatch(idx, None, None, resp.to(device), adv)
        width = max(len(r.prompt_ids) + len(r.response_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        resp = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, r in enumerate(rows):
            seq = r.prompt_ids + r.response_ids
            ids[i, : len(seq)] = torch.tensor(seq)
            attn[i, : len(seq)] = 1
            resp[i, len(r.prompt_ids) : len(seq)] = 0.0 if r.padding else 1.0
        return MicroBatch(idx, ids.to(device), attn.to(device), resp.to(device), adv)

    def capture(self, b: MicroBatch) -> None:
        """Run the frozen lower blocks on ``b`` once and keep their output per row (no-op without a lower stack)."""
        if not self.needs_capture(b.idx):
            return
        if self.share_prompts:
            pk = self._pack(b.idx)
            device = b.ids.device
            h = self.lower.capture(pk.ids.to(device), pk.mask.to(device), pk.pos.to(device))
            for j, i in enumerate(b.idx):  # the layout the sampler captures: prompt, then the response but its last
                g, start = pk.slots[j]
                r = self.rows[i]
                self._row_hidden[i] = torch.cat([h[g, : pk.prompt_len[g]], h[g, start : start + len(r.response_ids) - 1]])
            return
        h = self.lower.capture(b.ids, b.attn)
        for j, i in enumerate(b.idx):
            self._row_hidden[i] = h[j, : int(b.attn[j].sum())]

    def __call__(self, b: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and entropies of ``b``'s response tokens (gradients flow into the trained parameters)."""
        if self.scoring:
            rows = [self.rows[i] for i in b.idx]
            replay = {}
            if self.lower is not None and b.idx and all(i in self._row_hidden for i in b.idx):
                replay = {"lower": self.lower, "lower_hidden": [self._row_hidden[i] for i in b.idx]}
            lps = action_log_probs(self.model, [r.prompt_ids for r in rows], [r.candidates for r in rows],
                                   self.pad_id, temperature=self.temperature, chunk_size=self.chunk_size, **replay)
            lp = torch.stack([row[r.choice] for row, r in zip(lps, rows)])[:, None]
            ent = torch.stack([-(row.exp() * row).sum() for row in lps]).detach()[:, None]
            return lp, ent
        if self.share_prompts:
            return self._packed_logprobs(b)
        hidden = self._cached_hidden(b)
        return response_logprobs(self.model, b.ids, b.attn, b.resp, self.temperature, self.chunk_size,
                                 lower=self.lower if hidden is not None else None, lower_hidden=hidden)

    def _pack(self, idx: list[int]) -> Packed:
        key = tuple(idx)
        if key not in self._packs:
            self._packs[key] = pack_rows([self.rows[i] for i in idx], self.pad_id)
        return self._packs[key]

    def _packed_logprobs(self, b: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``__call__`` with each distinct prompt forwarded once (``share_prompts``): the same values as the
        unpacked path up to float rounding (a response attends to exactly the tokens it would unpacked)."""
        import contextlib

        pk = self._pack(b.idx)
        device = b.ids.device
        ids, mask, pos = pk.ids.to(device), pk.mask.to(device), pk.pos.to(device)
        ctx = contextlib.nullcontext()
        if self.lower is not None and all(i in self._row_hidden for i in b.idx):
            first = self._row_hidden[b.idx[0]]
            hidden = torch.zeros((*ids.shape, first.shape[-1]), dtype=first.dtype, device=device)
            for j, i in enumerate(b.idx):
                g, start = pk.slots[j]
                h, p = self._row_hidden[i], pk.prompt_len[g]
                hidden[g, :p] = h[:p]  # the group's rows carry the same prompt states (one prefill in the sampler)
                hidden[g, start : start + h.shape[0] - p] = h[p:]  # a response's last token feeds nothing: left 0
            ctx = self.lower.replay(hidden)
        with ctx:
            out = decoder_body(self.model)(input_ids=ids, attention_mask=mask, position_ids=pos,
                                           use_cache=False).last_hidden_state
        hs = out.reshape(-1, out.shape[-1])[pk.pred.to(device)]
        mask_t = b.resp[:, 1:].bool()
        targets = b.ids[:, 1:][mask_t]
        lp, ent = head_logprobs(self.model.get_output_embeddings(), hs, targets, self.temperature, self.chunk_size)
        zeros = torch.zeros(mask_t.shape, dtype=torch.float32, device=device)
        pad = torch.zeros((mask_t.shape[0], 1), dtype=torch.float32, device=device)
        return (torch.cat([pad, zeros.masked_scatter(mask_t, lp)], dim=1),
                torch.cat([pad, zeros.masked_scatter(mask_t, ent)], dim=1))

    def _cached_hidden(self, b: MicroBatch) -> torch.Tensor | None:
        """The captured lower-block output of ``b``'s rows, padded to its width; None unless every row has one."""
        if self.lower is None or not b.idx or not all(i in self._row_hidden for i in b.idx):
            return None
        first = self._row_hidden[b.idx[0]]
        hidden = torch.zeros((len(b.idx), b.ids.shape[1], first.shape[-1]), dtype=first.dtype, device=b.ids.device)
        for j, i in enumerate(b.idx):
            h = self._row_hidden[i]
            hidden[j, : h.shape[0]] = h
        return hidden
