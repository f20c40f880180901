"""Engine vs trainer log-probs: the statistics, and the trainer logging and using them."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from onelayer.agents.engine import HFEngine
from onelayer.training.config import TrainConfig
from onelayer.training.logprob_check import logprob_mismatch, place_response_values
from onelayer.training.trainer import Trainer


def test_mismatch_statistics_on_hand_values():
    trainer = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, 0.0, -0.5, -3.0]])
    engine = torch.tensor([[9.0, -1.1, -1.5, 9.0], [9.0, 9.0, -0.5, -3.3]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    m = logprob_mismatch(trainer, engine, mask, tolerance=0.2)
    assert m.tokens == 4  # masked-out positions (the 9s) are ignored
    assert m.mean == pytest.approx((0.1 + 0.5 + 0.0 + 0.3) / 4)
    assert m.max == pytest.approx(0.5)
    assert m.frac_over == pytest.approx(2 / 4)  # 0.5 and 0.3 exceed 0.2
    assert not m.within_tolerance
    assert set(m.to_metrics()) == {"logprob_mismatch_mean", "logprob_mismatch_max", "logprob_mismatch_frac",
                                   "logprob_mismatch_tokens"}


def test_no_tokens_and_bad_shapes():
    z = torch.zeros(2, 3)
    m = logprob_mismatch(z, z, z, 0.1)
    assert (m.tokens, m.mean, m.max) == (0, 0.0, 0.0) and m.within_tolerance
    with pytest.raises(ValueError, match="shapes differ"):
        logprob_mismatch(z, torch.zeros(2, 4), z, 0.1)


def test_response_values_land_at_their_token_positions():
    out = place_response_values([2, 1], [[-1.0, -2.0], [-3.0, -4.0, -5.0]], width=4)
    assert out.tolist() == [[0.0, 0.0, -1.0, -2.0], [0.0, -3.0, -4.0, -5.0]]


def _run(model_dir, out, **kw):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = TrainConfig(model=str(model_dir), out=str(out), steps=1, num_tasks=2, num_generations=4, max_new_tokens=6,
                      eval_size=4, eval_every=0, reward_funcs=["support_rewards:length_reward"], lr=1e-3,
                      micro_batch_size=3, seed=0, layers="2", **kw)
    trainer = Trainer(cfg, model=model, tokenizer=tok)
    return trainer, trainer.train(progress=False).metrics[0]


def test_trainer_logs_near_zero_mismatch_for_the_fp32_hf_engine(tiny_model_dirs, tmp_path):
    _, m = _run(tiny_model_dirs["qwen3"], tmp_path / "run")
    assert m["logprob_mismatch_tokens"] > 0
    assert m["logprob_mismatch_mean"] < 1e-4 and m["logprob_mismatch_max"] < 1e-3
    assert m["sync/bytes"] == 0  # the HF engine samples from the trained model itself: nothing to send
    assert "time/sync_s" in m


class _OffByOne(HFEngine):
    """An engine whose reported log-probs are 1 nat off (as a mismatched engine would be)."""

    def generate(self, prompts, params):
        gens = super().generate(prompts, params)
        for g in gens:
            g.logprobs = [x - 1.0 for x in g.logprobs]
        return gens


def test_engine_logprobs_are_used_only_within_tolerance(tiny_model_dirs, tmp_path, monkeypatch):
    _, m = _run(tiny_model_dirs["llama"], tmp_path / "ok", use_engine_logprobs=True)
    assert m["engine_logprobs_used"] == 1.0 and m["update_norm"] > 0

    monkeypatch.setitem(__import__("onelayer.agents.engine", fromlist=["ENGINES"]).ENGINES, "offbyone",
                        f"{__name__}:_OffByOne")
    _, m = _run(tiny_model_dirs["llama"], tmp_path / "off", use_engine_logprobs=True, engine="offbyone")
    assert m["engine_logprobs_used"] == 0.0, "a 1-nat mismatch must fall back to the trainer's log-probs"
    assert m["logprob_mismatch_mean"] == pytest.approx(1.0, abs=1e-3)
    assert m["logprob_mismatch_frac"] == 1.0 and m["update_norm"] > 0
