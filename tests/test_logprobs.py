"""Chunked response log-probs equal the plain full-logits computation, and gradients reach only trained layers."""

import torch

from conftest import build_tiny
from onelayer.training.layers import apply_selection, select_parameters
from onelayer.training.logprobs import response_logprobs


def _batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 2, 2], [11, 12, 13, 14, 15, 16, 17]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
    resp = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    return ids, attn, resp


def test_chunked_logprobs_match_full_logits(tokenizer):
    model = build_tiny("qwen3", tokenizer, seed=1)
    ids, attn, resp = _batch()
    with torch.no_grad():
        lp, ent = response_logprobs(model, ids, attn, resp, temperature=0.8, chunk_size=2)
        logits = model(input_ids=ids, attention_mask=attn).logits.float() / 0.8
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    expected = torch.cat([torch.zeros(2, 1), full], 1) * resp
    assert torch.allclose(lp, expected, atol=1e-5)
    assert torch.all(ent[resp.bool()] > 0) and torch.all(ent[~resp.bool()] == 0)


def test_gradients_reach_only_the_selected_layer(tokenizer):
    model = build_tiny("llama", tokenizer, seed=2)
    apply_selection(model, select_parameters(model, "2"))
    ids, attn, resp = _batch()
    lp, _ = response_logprobs(model, ids, attn, resp, chunk_size=3)
    (lp * resp).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if n.startswith("model.layers.2.")}
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in with_grad)
