"""Chunked response log-probs equal the plain full-logits computation, and gradients reach only trained layers."""

import pytest
import torch
from tiny_models import ARCHS, build_tiny

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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_frozen_head_fused_gradients_equal_plain_autograd(tokenizer, arch, temperature):
    """The fused frozen-head path (gradient in the states made in the forward) against plain autograd through
    full logits: same log-probs, entropies and trained-layer gradients; the scoring path's too."""
    from onelayer.agents.scoring import candidate_token_logprobs, frozen_head

    ids, attn, resp = _batch()
    grads, values = [], []
    for fused in (True, False):
        model = build_tiny(arch, tokenizer, seed=3)
        apply_selection(model, select_parameters(model, "1"))
        head = model.get_output_embeddings()
        assert frozen_head(head)
        handle = None if fused else head.register_forward_hook(lambda m, a, o: o)  # a hook: the module path
        assert frozen_head(head) == fused
        lp, ent = response_logprobs(model, ids, attn, resp, temperature=temperature, chunk_size=3)
        weights = torch.linspace(-1.0, 2.0, lp.numel()).reshape(lp.shape)
        (lp * resp * weights).sum().backward()
        cands = candidate_token_logprobs(model, [[5, 6, 7], [9, 10]], [[[11, 12], [13]], [[14, 15, 16]]], 2,
                                         chunk_size=2)
        torch.cat([c * (k + 1) for row in cands for k, c in enumerate(row)]).sum().backward()
        if handle is not None:
            handle.remove()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        values.append((lp.detach(), ent, torch.cat([c.detach() for row in cands for c in row])))
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        # relative to the tensor's largest entry: fp32 sums over a 49,152-token vocabulary in another order
        err = (grads[0][n] - grads[1][n]).abs().max() / grads[1][n].abs().max()
        assert err < 1e-4, f"{n}: {float(err):.2e}"
    for a, b in zip(values[0], values[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_head_fused_gradient_with_a_bias_in_bfloat16():
    """A biased bf16 head: the fused gradient in the states equals autograd's within bf16 rounding."""
    from onelayer.agents.scoring import head_chunk_logp, logp_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).to(torch.bfloat16).requires_grad_(False)
    hs = torch.randn(7, 16, dtype=torch.bfloat16)
    targets = torch.randint(0, 50, (7,))
    w = torch.randn(7)
    out = []
    for fused in (True, False):
        h = hs.clone().requires_grad_(True)
        lp, ent = (head_chunk_logp(head, h, targets, 0.9) if fused else logp_entropy(head, h, targets, 0.9))
        (lp * w).sum().backward()
        out.append((lp.detach(), ent.detach(), h.grad.float()))
    for a, b in zip(*out):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
