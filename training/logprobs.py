"""Per-token log-probs of response tokens, computed in chunks.

Only response positions go through the LM head, a chunk of tokens at a time:
full-vocabulary logits for the whole batch never sit in memory at once. With
gradients, a frozen head's chunk makes its gradient in the forward (two head
matmuls, no recomputation); any other head's chunk is checkpointed.
"""

from __future__ import annotations

import contextlib

import torch

from onelayer.agents.scoring import decoder_body, head_chunk_logp, logp_entropy


def response_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    temperature: float = 1.0, chunk_size: int = 1024, lower: LowerStack | None = None,
    lower_hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the tokens marked by ``response_mask``.

    Inputs are (batch, T) right-padded; outputs are (batch, T) with values at
    response positions (the log-prob of token t given tokens < t) and 0 elsewhere.
    Gradients flow only into parameters that require them. With ``lower`` and
    ``lower_hidden`` (from ``LowerStack.capture`` on the same batch) the frozen
    blocks below the trained ones are not run again.
    """
    body, head = decoder_body(model), model.get_output_embeddings()
    ctx = lower.replay(lower_hidden) if lower is not None and lower_hidden is not None else contextlib.nullcontext()
    with ctx:
        # No KV cache: nothing reuses it, and a checkpointed block's recomputation would append to it again.
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    mask = response_mask[:, 1:].bool()
    hs = hidden[:, :-1][mask]  # (N, H): states that predict response tokens
    targets = input_ids[:, 1:][mask]
    lp, ent = head_logprobs(head, hs, targets, temperature, chunk_size)
    out_lp = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device).masked_scatter(mask, lp)
    out_ent = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device).masked_scatter(mask, ent)
    pad = torch.zeros((mask.shape[0], 1), dtype=torch.float32, device=input_ids.device)
    return torch.cat([pad, out_lp], dim=1), torch.cat([pad, out_ent], dim=1)


def head_logprobs(head, hs: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (N,) of ``targets`` under the LM head on states ``hs`` (N, H) and the entropies (N,, detached),
    ``chunk_size`` states at a time. With gradients, a frozen plain-linear head takes the fused path (the
    gradient in ``hs`` made in the forward, agents/scoring.py); any other head's chunk is checkpointed."""
    need_grad = torch.is_grad_enabled() and (hs.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, ents = [], []
    for s in range(0, hs.shape[0], chunk_size):
        h, t = hs[s : s + chunk_size], targets[s : s + chunk_size]
        if need_grad:
            lp, ent = head_chunk_logp(head, h, t, temperature)
        else:
            lp, ent = logp_entropy(head, h, t, temperature)
        logps.append(lp)
        ents.append(ent.detach())
    if not logps:
        empty = hs.new_zeros((0,), dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


class _StopForward(Exception):
    pass


class _Passthrough(torch.nn.Module):
    """Stands in for a frozen block whose output is replayed from a cache."""

    def __init__(self, tuple_output: bool, block: torch.nn.Module | None = None):
        super().__init__()
        self.tuple_output = tuple_output
        # The model's loop may read per-block attributes (transformers 4.x Qwen3 picks each block's
        # mask by ``attention_type``): the stand-in carries the replaced block's plain attributes.
        for name, value in (vars(block).items() if block is not None else ()):
            if not name.startswith("_") and isinstance(value, (str, int, float, bool, type(None))):
                setattr(self, name, value)

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.tuple_output else hidden_states


class LowerStack:
    """Runs the frozen blocks below the lowest trained block once per batch and replays their output.

    When only blocks >= l train, the hidden states entering block l are the same
    for the old policy, the current policy (every PPO epoch) and the reference,
    so they are computed once without autograd and reused.
    """

    def __init__(self, model, blocks, first_trained: int):
        if first_trained <= 0:
            raise ValueError("nothing below block 0 to cache")
        self.model, self.blocks, self.first = model, blocks, first_trained
        self._tuple_output: bool | None = None

    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states entering block ``first`` (no grad); the forward stops there. ``attention_mask`` may be
        a packed row's 4-D mask (with its ``position_ids``)."""
        store = {}

        def grab(module, args, kwargs):
            store["h"] = (args[0] if args else kwargs["hidden_states"]).detach()
            raise _StopForward

        def out_type(module, args, output):
            self._tuple_output = isinstance(output, tuple)

        h1 = self.blocks[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        h2 = self.blocks[self.first - 1].register_forward_hook(out_type)
        try:
            with torch.no_grad():
                kw = {} if position_ids is None else {"position_ids": position_ids}
                decoder_body(self.model)(input_ids=input_ids, attention_mask=attention_mask, **kw)
        except _StopForward:
            pass
        finally:
            h1.remove()
            h2.remove()
        return store["h"]

    @contextlib.contextmanager
    def replay(self, hidden: torch.Tensor):
        """Inside this context a forward skips blocks < first and feeds ``hidden`` into block ``first``."""
        originals = [self.blocks[i] for i in range(self.first)]

        def feed(module, args, kwargs):
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = hidden
            return args, kwargs

        for i in range(self.first):
            self.blocks[i] = _Passthrough(bool(self._tuple_output), self.blocks[i])
        handle = self.blocks[self.first].register_forward_pre_hook(feed, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for i, m in enumerate(originals):
                self.blocks[i] = m
