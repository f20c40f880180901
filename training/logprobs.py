"""Per-token log-probs of response tokens, computed in chunks.

Only response positions go through the LM head, a chunk of tokens at a time,
and with gradients each chunk is checkpointed: full-vocabulary logits for the
whole batch never sit in memory at once.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def decoder_body(model):
    """The model without its LM head (returns hidden states)."""
    if hasattr(model, "get_decoder"):
        body = model.get_decoder()
        if body is not None:
            return body
    return model.base_model


def _chunk_logp(head, hs: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = head(hs).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def response_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
    temperature: float = 1.0, chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the tokens marked by ``response_mask``.

    Inputs are (batch, T) right-padded; outputs are (batch, T) with values at
    response positions (the log-prob of token t given tokens < t) and 0 elsewhere.
    Gradients flow only into parameters that require them.
    """
    body, head = decoder_body(model), model.get_output_embeddings()
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = response_mask[:, 1:].bool()
    hs = hidden[:, :-1][mask]  # (N, H): states that predict response tokens
    targets = input_ids[:, 1:][mask]
    need_grad = torch.is_grad_enabled() and (hs.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, ents = [], []
    for s in range(0, hs.shape[0], chunk_size):
        h, t = hs[s : s + chunk_size], targets[s : s + chunk_size]
        if need_grad:
            lp, ent = checkpoint(_chunk_logp, head, h, t, temperature, use_reentrant=False)
        else:
            lp, ent = _chunk_logp(head, h, t, temperature)
        logps.append(lp)
        ents.append(ent.detach())
    out_lp = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
    out_ent = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
    if logps:
        out_lp = out_lp.masked_scatter(mask, torch.cat(logps))
        out_ent = out_ent.masked_scatter(mask, torch.cat(ents))
    pad = torch.zeros((mask.shape[0], 1), dtype=torch.float32, device=input_ids.device)
    return torch.cat([pad, out_lp], dim=1), torch.cat([pad, out_ent], dim=1)
