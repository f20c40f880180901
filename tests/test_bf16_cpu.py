"""``--dtype bfloat16`` on a CPU (the fast path where the CPU has AVX-512 bf16 or AMX): how far the default model's
log-probs move from the exact fp32 path, which stays the default (``--dtype auto`` is fp32 on CPU).

The tolerances are what the trainer's numbers are allowed to move by; the measured values on the default model
are in docs/speed.md. In a bf16 run the old and new log-probs of PPO's ratio both come from the bf16 model, so
the ratio itself carries no bf16/fp32 mismatch; these bounds say how different a policy bf16 trains.
"""

import pytest
import torch

from onelayer.agents.engine import HFEngine, SamplingParams
from onelayer.agents.models import load_model

# Measured on an AVX-512 + AMX Xeon (2026-12-04): response tokens mean 0.035, max 0.63 nats (one improbable sampled
# token); log pi(a | s) mean 0.012, max 0.049.
TOKEN_MEAN_TOL = 0.06  # nats per response token, mean over the tokens
TOKEN_MAX_TOL = 1.0  # nats, any single token (a token far in the tail moves most)
POLICY_MEAN_TOL = 0.03  # score format: log pi(a | s) over the admissible actions, mean over actions
POLICY_MAX_TOL = 0.15


@pytest.fixture(scope="module")
def pair():
    m32, tok, _ = load_model("smollm2-135m", "cpu", "float32")
    m16, _, _ = load_model("smollm2-135m", "cpu", "bfloat16")
    return m32, m16, tok


def _chat(tok, text: str) -> list[int]:
    chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(chat, add_special_tokens=False)


def _response_logprobs(model, ids: torch.Tensor, start: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, start - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[start:, None]).squeeze(-1)


def test_response_token_logprobs_of_bf16_stay_near_fp32(pair):
    """Responses the fp32 model sampled (math and code prompts), scored by both models."""
    m32, m16, tok = pair
    assert next(m16.parameters()).dtype == torch.bfloat16
    engine = HFEngine(m32, tok, max_batch_size=8)
    prompts = [_chat(tok, t) for t in ("What is 17 + 25? Put the answer in \\boxed{}.",
                                        "Compute 6 * 7 - 5. Answer with a number.",
                                        "Write a Python function add(a, b) that returns the sum of a and b.",
                                        "Reverse the list [3, 1, 2] and give the result.")]
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=32, temperature=1.0, seed=0))
    diffs = []
    for p, g in zip(prompts, gens):
        ids = torch.tensor(p + list(g.token_ids))
        a, b = _response_logprobs(m32, ids, len(p)), _response_logprobs(m16, ids, len(p))
        diffs.append((a - b).abs())
    d = torch.cat(diffs)
    assert d.numel() >= 40
    print(f"bf16 vs fp32, {d.numel()} response tokens: mean {float(d.mean()):.4f}, max {float(d.max()):.4f} nats")
    assert d.mean() <= TOKEN_MEAN_TOL and d.max() <= TOKEN_MAX_TOL, (float(d.mean()), float(d.max()))
    assert d.mean() > 0  # bf16 is not the fp32 path: a zero here means the test compared a model with itself


def test_score_format_policy_of_bf16_stays_near_fp32(pair):
    """ALFWorld-style score-format steps: log pi(a | s) over each step's admissible actions under both models."""
    m32, m16, tok = pair
    obs = ("You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, "
           "a fridge 1, a microwave 1 and a sinkbasin 1. Your task is to: {task}.")
    steps = [("put a clean apple in fridge", ["go to countertop 1", "go to fridge 1", "open cabinet 1",
                                              "go to sinkbasin 1", "examine cabinet 1"]),
             ("heat some egg and put it in countertop", ["go to microwave 1", "go to countertop 1",
                                                         "go to fridge 1", "open cabinet 1"]),
             ("find two cups and put them in cabinet", ["go to cabinet 1", "go to countertop 1", "go to sinkbasin 1"])]
    prompts, cands = [], []
    for task, actions in steps:
        p = _chat(tok, obs.format(task=task) + " Choose your next action.")
        prompts.append(p + tok.encode("<action>", add_special_tokens=False))
        cands.append([tok.encode(a + "</action>", add_special_tokens=False) for a in actions])
    a = torch.tensor(sum(HFEngine(m32, tok).score_actions(prompts, cands), []))
    b = torch.tensor(sum(HFEngine(m16, tok).score_actions(prompts, cands), []))
    d = (a - b).abs()
    print(f"bf16 vs fp32, log pi(a | s) of {d.numel()} actions: mean {float(d.mean()):.4f}, max {float(d.max()):.4f}")
    assert d.mean() <= POLICY_MEAN_TOL and d.max() <= POLICY_MAX_TOL, (float(d.mean()), float(d.max()))
    assert d.mean() > 0
