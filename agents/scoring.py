"""Action scoring: a policy over an env's admissible actions, read from the model's likelihood of each action's text.

The ``score`` action format (GLAM-style, Carta et al. 2023) does not generate: the
prompt ends with the assistant's ``<action>`` prefix, every admissible action ``a_k``
is a candidate continuation ``a_k</action>``, and the policy is

    pi(a_k | s) = softmax_k( score_k / T ),   score_k = mean (or sum) over the tokens of a_k</action>
                                                         of log p_LM(token | prompt, earlier tokens of a_k)

Every action is valid from the first step and the policy reads what the actions
say, not a position in a list. PPO's log-prob of a step is ``log pi(a | s)``,
normalised over the admissible set, so the trainer scores every candidate again
(with gradients) instead of only the chosen one.

All candidates of one prompt go into one packed row: ``prompt + c_1 + c_2 + ...``
with a 4-D attention mask in which each candidate sees the prompt and its own
earlier tokens (not the other candidates), and position ids that restart at the
prompt's end for each candidate. One forward over ``P + sum_k |c_k|`` tokens scores
them all, as ``K`` separate ``prompt + c_k`` forwards (``K x P`` prompt tokens) would.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

SCORE_NORMS = ("mean", "sum")
ACTION_END = "</action>"


def decoder_body(model):
    """The model without its LM head (returns hidden states)."""
    if hasattr(model, "get_decoder"):
        body = model.get_decoder()
        if body is not None:
            return body
    return model.base_model


def pack_candidates(prompts: list[list[int]], candidates: list[list[list[int]]], pad_id: int):
    """Packed rows for scoring: token ids, 4-D boolean mask, position ids and where each candidate token sits.

    Returns ``(ids (B, T), mask (B, 1, T, T), positions (B, T), pred (N,), targets (N,), spans)``:
    ``pred`` indexes the flattened (B*T) hidden states that predict the N candidate tokens
    ``targets``, and ``spans[b][k]`` is the slice of those N tokens belonging to candidate k of row b.
    Padding positions attend only to themselves (a fully masked row would give NaN).
    """
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts for {len(candidates)} candidate lists")
    lengths = []
    for p, cands in zip(prompts, candidates):
        if not p:
            raise ValueError("empty prompt: every prompt needs at least one token")
        if not cands or any(not c for c in cands):
            raise ValueError("every prompt needs at least one candidate, and every candidate at least one token")
        lengths.append(len(p) + sum(len(c) for c in cands))
    B, T = len(prompts), max(lengths)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, 1, T, T), dtype=torch.bool)
    mask[:, 0] = torch.eye(T, dtype=torch.bool)
    pos = torch.zeros((B, T), dtype=torch.long)
    pred, targets, spans = [], [], []
    for b, (p, cands) in enumerate(zip(prompts, candidates)):
        P = len(p)
        ids[b, :P] = torch.tensor(p)
        mask[b, 0, :P, :P] = torch.tril(torch.ones((P, P), dtype=torch.bool))
        pos[b, :P] = torch.arange(P)
        start, row_spans = P, []
        for c in cands:
            n, end = len(c), P + len(c)
            s, e = start, start + n
            ids[b, s:e] = torch.tensor(c)
            mask[b, 0, s:e, :P] = True
            mask[b, 0, s:e, s:e] = torch.tril(torch.ones((n, n), dtype=torch.bool))
            pos[b, s:e] = torch.arange(P, end)
            # token j of the candidate is predicted by the prompt's last state (j = 0) or by its own token j - 1
            first = len(targets)
            pred.extend([b * T + P - 1] + [b * T + i for i in range(s, e - 1)])
            targets.extend(c)
            row_spans.append((first, len(targets)))
            start = e
        spans.append(row_spans)
    return ids, mask, pos, torch.tensor(pred, dtype=torch.long), torch.tensor(targets, dtype=torch.long), spans


def _token_logp(head, hs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(head(hs).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _log_softmax_at(logits: torch.Tensor, targets: torch.Tensor, temperature: float):
    """(log-softmax of ``logits / temperature`` in fp32 (N, V), its values at ``targets`` (N,))."""
    logits = logits.float()
    logp_all = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
    return logp_all, logp_all.gather(-1, targets[:, None]).squeeze(-1)


class _FrozenHeadLogp(torch.autograd.Function):
    """``log p(target | h)`` under a frozen linear head, its gradient in ``h`` made in the forward.

    ``d log p_y / d h = (W_y - sum_v p_v W_v) / T``: one more matmul (``p @ W``) in the forward, kept as an
    (N, H) tensor, replaces the checkpointed path's recomputed logits and their backward (three head matmuls
    become two, and the (N, V) softmax is never rebuilt). Exact in exact arithmetic; entropies come out
    detached.
    """

    @staticmethod
    def forward(ctx, hs, weight, bias, targets, temperature, want_entropy):
        logp_all, logp = _log_softmax_at(torch.nn.functional.linear(hs, weight, bias), targets, temperature)
        p = logp_all.exp()
        ent = -logp_all.mul_(p).sum(-1) if want_entropy else logp.new_zeros(logp.shape)  # in place: no (N, V) temp
        del logp_all
        p[torch.arange(p.shape[0], device=p.device), targets] -= 1.0  # p - onehot(y) = -d log p_y / d logits
        grad_h = (p.to(weight.dtype) @ weight).neg_()
        if temperature != 1.0:
            grad_h = grad_h / temperature
        ctx.save_for_backward(grad_h.to(hs.dtype))
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        (grad_h,) = ctx.saved_tensors
        return grad_logp[:, None].to(grad_h.dtype) * grad_h, None, None, None, None, None


def frozen_head(head) -> bool:
    """Whether ``head`` is a plain linear layer that nothing trains and no hook wraps (the fused path applies)."""
    return (type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())
            and not head._forward_hooks and not head._forward_pre_hooks
            and type(head.weight.data) is torch.Tensor)  # a sharded (DTensor) weight takes the module path


def head_chunk_logp(head, hs: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and detached entropies, when asked) of one chunk, with gradients into ``hs``: the fused
    frozen-head path where it applies, else the head's forward checkpointed (recomputed in the backward)."""
    if frozen_head(head):
        lp, ent = _FrozenHeadLogp.apply(hs, head.weight, head.bias, targets, temperature, entropy)
        return lp, (ent if entropy else None)
    if entropy:
        return checkpoint(logp_entropy, head, hs, targets, temperature, use_reentrant=False)
    return checkpoint(scaled_token_logp, head, hs, targets, temperature, use_reentrant=False), None


def scaled_token_logp(head, hs, targets, temperature):
    """Log-probs of ``targets`` under ``head(hs) / temperature`` (the module path, no entropies)."""
    return _log_softmax_at(head(hs), targets, temperature)[1]


def logp_entropy(head, hs, targets, temperature):
    """Log-probs of ``targets`` and the entropies under ``head(hs) / temperature`` (the module path)."""
    logp_all, logp = _log_softmax_at(head(hs), targets, temperature)
    p = logp_all.exp()
    # without autograd in place (one (N, V) temp, not two); with it (a checkpoint's recompute) a new tensor
    return logp, -(logp_all * p if torch.is_grad_enabled() else logp_all.mul_(p)).sum(-1)


def candidate_token_logprobs(model, prompts: list[list[int]], candidates: list[list[list[int]]], pad_id: int,
                             chunk_size: int = 1024, capture_block: int | None = None, captured: list | None = None,
                             lower=None, lower_hidden: list[torch.Tensor] | None = None) -> list[list[torch.Tensor]]:
    """``out[b][k]``: the log-probs of candidate k's tokens after prompt b (one packed forward for the batch).

    Gradients flow into parameters that require them when grad is enabled; the LM head
    runs on candidate positions only, ``chunk_size`` tokens at a time (with grad: :func:`head_chunk_logp`).

    ``capture_block = l`` appends to ``captured``, per prompt, the states entering block ``l`` over its packed
    row (prompt, then every candidate). ``lower`` (a ``LowerStack``) with ``lower_hidden`` (those states, one
    tensor per prompt) replays them: the blocks below ``lower.first`` do not run.
    """
    ids, mask, pos, pred, targets, spans = pack_candidates(prompts, candidates, pad_id)
    device = next(model.parameters()).device
    body, head = decoder_body(model), model.get_output_embeddings()
    lengths = [len(p) + sum(len(c) for c in cands) for p, cands in zip(prompts, candidates)]
    ctx, handle = contextlib.nullcontext(), None
    if lower is not None and lower_hidden is not None:
        h0 = torch.zeros((*ids.shape, lower_hidden[0].shape[-1]), dtype=lower_hidden[0].dtype, device=device)
        for b, h in enumerate(lower_hidden):
            h0[b, : h.shape[0]] = h.to(device)
        ctx = lower.replay(h0)
    elif capture_block is not None:
        from onelayer.agents.models import find_decoder_blocks

        def grab(module, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"]).detach()
            captured.extend(h[b, :n].cpu() for b, n in enumerate(lengths))

        handle = find_decoder_blocks(model)[1][capture_block].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with ctx:
            hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                          use_cache=False).last_hidden_state
    finally:
        if handle is not None:
            handle.remove()
    hs = hidden.reshape(-1, hidden.shape[-1])[pred.to(device)]
    targets = targets.to(device)
    need_grad = torch.is_grad_enabled() and (hs.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for s in range(0, hs.shape[0], chunk_size):
        h, t = hs[s : s + chunk_size], targets[s : s + chunk_size]
        parts.append(head_chunk_logp(head, h, t, entropy=False)[0] if need_grad else _token_logp(head, h, t))
    flat = torch.cat(parts)
    return [[flat[a:b] for a, b in row] for row in spans]


def action_scores(token_logprobs: list[torch.Tensor], norm: str = "mean") -> torch.Tensor:
    """One score per candidate: the mean (default) or sum of its token log-probs.

    ``sum`` is the candidate text's log-likelihood: every extra token lowers it, so
    long actions ("put mug 1 in/on desk 1") lose to short ones ("look") whatever
    they say; ``mean`` compares actions of different lengths on equal terms.
    """
    if norm not in SCORE_NORMS:
        raise ValueError(f"unknown score norm {norm!r}: use one of {', '.join(SCORE_NORMS)}")
    return torch.stack([t.mean() if norm == "mean" else t.sum() for t in token_logprobs])


def action_log_probs(model, prompts: list[list[int]], candidates: list[list[list[int]]], pad_id: int,
                     norm: str = "mean", temperature: float = 1.0, chunk_size: int = 1024,
                     **capture) -> list[torch.Tensor]:
    """``log pi(. | prompt b)`` over prompt b's candidates: ``log_softmax(score / T)`` (T <= 0 counts as 1).
    ``capture``: :func:`candidate_token_logprobs`'s capture and replay options."""
    t = temperature if temperature > 0 else 1.0
    token_lps = candidate_token_logprobs(model, prompts, candidates, pad_id, chunk_size, **capture)
    return [torch.log_softmax(action_scores(row, norm) / t, dim=-1) for row in token_lps]


def choose_actions(log_probs: list[list[float]], temperature: float, seed: int) -> list[int]:
    """One candidate index per row: the argmax when ``temperature`` <= 0, else a draw from ``exp(log_probs)``,
    reproducible from ``seed`` (row b's draw uses the b-th uniform of the seed's stream)."""
    if temperature <= 0:
        return [max(range(len(lp)), key=lp.__getitem__) for lp in log_probs]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    uniforms = torch.rand(len(log_probs), generator=gen, dtype=torch.float64).tolist()
    out = []
    for lp, u in zip(log_probs, uniforms):
        cdf = torch.cumsum(torch.tensor(lp, dtype=torch.float64).exp(), 0)
        cdf = cdf / cdf[-1]
        out.append(min(int(torch.searchsorted(cdf, torch.tensor([u], dtype=torch.float64)).item()), len(lp) - 1))
    return out
