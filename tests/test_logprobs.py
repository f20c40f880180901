"""Chunked response log-probs equal the plain full-logits computation, and gradients reach only trained layers."""

import torch
from tiny_models import build_tiny

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


def test_replaying_the_lower_blocks_gives_the_same_logprobs_and_gradients(tokenizer):
    from onelayer.training.layers import find_decoder_blocks
    from onelayer.training.logprobs import LowerStack

    for arch in ("qwen3", "qwen2", "llama"):
        model = build_tiny(arch, tokenizer, seed=4)
        apply_selection(model, select_parameters(model, "2-3"))
        ids, attn, resp = _batch()
        lp_full, _ = response_logprobs(model, ids, attn, resp)
        (lp_full * resp).sum().backward()
        grads_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        lower = LowerStack(model, find_decoder_blocks(model)[1], 2)
        hidden = lower.capture(ids, attn)
        lp_re, _ = response_logprobs(model, ids, attn, resp, lower=lower, lower_hidden=hidden)
        (lp_re * resp).sum().backward()
        assert torch.allclose(lp_full, lp_re, atol=1e-6), arch
        for n, g in grads_full.items():
            assert torch.allclose(g, dict(model.named_parameters())[n].grad, atol=1e-6), (arch, n)
        assert all(type(b).__name__ != "_Passthrough" for b in find_decoder_blocks(model)[1])  # restored
