"""Checks of a real vLLM engine against the trainer's model, shared by the CPU tests (tests/real_vllm/, vLLM's CPU
build) and the GPU tests (tests/gpu/): only what is CUDA's own (sleep/wake, bf16 kernels) lives there.

No ``__init__.py`` in this folder on purpose: a package named ``vllm`` on pytest's path would shadow the
real vLLM. tests/gpu/conftest.py puts this folder on ``sys.path`` to import this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onelayer.agents.engine import SamplingParams
from onelayer.agents.weight_sync import (
    all_tensors,
    fuse_for_vllm,
    tensor_bytes,
    trained_tensors,
    vllm_target,
)
from onelayer.training.layers import select_parameters
from onelayer.training.logprob_check import LogprobMismatch, logprob_mismatch, place_response_values
from onelayer.training.logprobs import response_logprobs

PROMPTS = ["What is 17 + 25?", "Name a prime number larger than 50.", "Write one word that rhymes with cat.",
           "What is the capital of France?", "Count from 1 to 5.", "Is 91 a prime number?",
           "What is 6 times 7?", "Say hello in Spanish."]

# The selections every sync check runs for: the first, a middle and the last block, a sub-module, every block.
SELECTIONS = ("0", "middle", "-1", "15.mlp", "all")


def chat_prompts(tok, questions=PROMPTS) -> list[list[int]]:
    """Token ids of each question in the model's chat template, ready for generation."""
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in questions]
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def mismatch(model, prompts: list[list[int]], gens, pad_id: int, temperature: float = 1.0,
             tolerance: float = 0.05) -> LogprobMismatch:
    """The engine's sampling log-probs against the trainer's on the same tokens, exactly as the trainer compares them."""
    device = next(model.parameters()).device
    width = max(len(p) + len(g.token_ids) for p, g in zip(prompts, gens))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros((len(prompts), width))
    for i, (p, g) in enumerate(zip(prompts, gens)):
        seq = p + g.token_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        resp[i, len(p) : len(seq)] = 1
    with torch.no_grad():
        lp, _ = response_logprobs(model, ids.to(device), attn.to(device), resp.to(device), temperature=temperature)
    engine = place_response_values([len(p) for p in prompts], [g.logprobs for g in gens], width, device)
    return logprob_mismatch(lp, engine, resp.to(device), tolerance)


def _params_on_worker(worker, names):
    """Runs inside the vLLM worker: copies of the named vLLM parameters, on the CPU."""
    params = dict(worker.model_runner.model.named_parameters())
    return {n: params[n].detach().to("cpu", copy=True) for n in names}


def engine_params(engine, names=None) -> dict[str, torch.Tensor]:
    """Copies of vLLM's own parameters (its fused names), all of them or the named ones."""
    if names is None:
        names = engine.llm.collective_rpc(lambda w: [n for n, _ in w.model_runner.model.named_parameters()])[0]
    return engine.llm.collective_rpc(_params_on_worker, args=(list(names),))[0]


def expected_engine_params(model, names, dtype) -> dict[str, torch.Tensor]:
    """The trainer's tensors ``names`` as vLLM should hold them: fused q/k/v and gate/up, in vLLM's dtype."""
    return {n: t.to("cpu", dtype) for n, t in fuse_for_vllm(trained_tensors(model, names)).items()}


def optimizer_step(model, names, prompts: list[list[int]], gens, lr: float) -> None:
    """One AdamW step on exactly the parameters ``names``: raise the log-likelihood of the sampled responses.

    A real loss and a real optimizer, as in training; the rest of the model stays frozen and unchanged.
    """
    chosen = set(names)
    params = [p for n, p in model.named_parameters() if n in chosen]
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    seqs = [p + g.token_ids for p, g in zip(prompts, gens)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    attn, resp = torch.zeros_like(ids), torch.zeros((len(seqs), width))
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)], attn[i, : len(s)], resp[i, len(p) : len(s)] = torch.tensor(s), 1, 1
    lp, _ = response_logprobs(model, ids.to(device), attn.to(device), resp.to(device))
    loss = -(lp * resp.to(device)).sum() / resp.sum()
    loss.backward()
    opt.step()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None


@dataclass
class StepSync:
    """What one optimizer step and its sync did, for a selection."""

    selection: str
    tensors: int  # HF tensors sent
    bytes: int  # what sync_weights reported
    full_bytes: int  # what a sync of every tensor would send
    seconds: float
    mismatch_after: LogprobMismatch  # the engine's next samples against the updated trainer
    mismatch_stale: LogprobMismatch  # the same samples against the trainer before the step
    changed: int  # vLLM parameters that changed
    unchanged: int  # vLLM parameters checked bit-identical


def step_and_sync(model, engine, selection: str, prompts: list[list[int]], lr: float = 1e-2,
                  max_new_tokens: int = 24) -> StepSync:
    """An optimizer step on ``selection``, the trainer's sync, and every check of what reached vLLM.

    Asserts: only the selection's tensors were sent (count and bytes); every vLLM parameter the
    selection maps to now holds the trainer's new values (bit for bit in vLLM's dtype); every other
    vLLM parameter is bit-identical to before; the engine's next sampling log-probs match the updated
    trainer and not the old one. The model and the engine are put back afterwards.
    """
    names = select_parameters(model, selection).param_names
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names}
    touched = {vllm_target(n).name for n in names}
    before = engine_params(engine)
    assert touched <= set(before), sorted(touched - set(before))[:3]
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=11)
    try:
        gens = engine.generate(prompts, sampling)
        optimizer_step(model, names, prompts, gens, lr)
        sent = trained_tensors(model, names)
        stats = engine.sync_weights(sent)
        assert stats.tensors == len(names)
        assert stats.bytes == tensor_bytes(sent, engine.dtype)
        full = tensor_bytes(all_tensors(model), engine.dtype)

        after = engine_params(engine)
        expected = expected_engine_params(model, names, engine.dtype)
        for n, t in expected.items():
            assert torch.equal(after[n], t), f"{n}: vLLM does not hold the trainer's new values"
        changed = [n for n in touched if not torch.equal(after[n], before[n])]
        assert changed, "the step changed no tensor vLLM holds"
        others = [n for n in before if n not in touched]
        for n in others:
            assert torch.equal(after[n], before[n]), f"{n} was not trained but changed in vLLM"

        next_gens = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=12))
        now = mismatch(model, prompts, next_gens, engine.pad_id)
        with torch.no_grad():  # the same samples scored by the trainer as it was before the step
            for n in names:
                params[n].copy_(saved[n])
        stale = mismatch(model, prompts, next_gens, engine.pad_id)
        return StepSync(selection, stats.tensors, stats.bytes, full, stats.seconds, now, stale, len(changed),
                        len(others))
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])
        engine.sync_weights(trained_tensors(model, names))
        for p in model.parameters():
            p.requires_grad_(False)


def sampled(engine, prompts, seed: int, max_new_tokens: int = 24, temperature: float = 1.0):
    """Token ids and log-probs of one seeded sampling call."""
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))
    return [g.token_ids for g in gens], [g.logprobs for g in gens]


def first_token_frequencies(model, engine, prompt: list[int], samples: int = 1024, top: int = 5, seed: int = 21):
    """``(token, trainer probability, engine frequency)`` for the trainer's ``top`` most likely first tokens.

    One-token samples of one prompt, each request with its own seed (as a GRPO group's copies are): the
    engine must sample from the trainer's distribution, not only report its log-probs.
    """
    gens = engine.generate([prompt] * samples, SamplingParams(max_new_tokens=1, temperature=1.0, seed=seed))
    counts = torch.bincount(torch.tensor([g.token_ids[0] for g in gens]), minlength=len(engine.tokenizer))
    device = next(model.parameters()).device
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt], device=device)).logits[0, -1].float(), -1).cpu()
    best = torch.topk(probs, top).indices.tolist()
    return [(t, float(probs[t]), float(counts[t]) / samples) for t in best]
