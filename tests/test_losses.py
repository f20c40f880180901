"""Loss aggregation is exact under micro-batching, and PPO clipping behaves as in the paper."""

import pytest
import torch

from onelayer.training.losses import agg_norm, aggregate, kl_k3, ppo_clip_token_loss


def _batch():
    torch.manual_seed(0)
    values = torch.randn(6, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    return values, mask


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_the_full_batch_aggregate(mode):
    values, mask = _batch()
    norm = agg_norm(mask, mode, constant=5)
    whole = aggregate(values, mask, norm)
    parts = aggregate(values[:2], mask[:2], norm) + aggregate(values[2:5], mask[2:5], norm) + aggregate(values[5:], mask[5:], norm)
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


def test_aggregation_modes_match_their_definitions():
    values, mask = _batch()
    tm = aggregate(values, mask, agg_norm(mask, "token-mean", 5))
    assert tm.item() == pytest.approx(((values * mask).sum() / mask.sum()).item())
    sm = aggregate(values, mask, agg_norm(mask, "seq-mean-token-mean", 5))
    assert sm.item() == pytest.approx(((values * mask).sum(1) / mask.sum(1)).mean().item())
    dr = aggregate(values, mask, agg_norm(mask, "seq-mean-token-sum-norm", 7))
    assert dr.item() == pytest.approx(((values * mask).sum() / (6 * 7)).item())


def test_ppo_clip_caps_the_ratio_in_the_direction_of_the_advantage():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    loss, clipped = ppo_clip_token_loss(logp, old, torch.tensor([[1.0]]), 0.2)
    assert loss.tolist()[0] == pytest.approx([-1.2, -0.5, -1.1])
    assert clipped.tolist()[0] == [1.0, 0.0, 0.0]
    loss, clipped = ppo_clip_token_loss(logp, old, torch.tensor([[-1.0]]), 0.2)
    assert loss.tolist()[0] == pytest.approx([1.5, 0.8, 1.1])
    assert clipped.tolist()[0] == [0.0, 1.0, 0.0]


def test_k3_kl_is_zero_at_equal_policies_and_positive_otherwise():
    a = torch.tensor([-1.0, -2.0])
    assert torch.all(kl_k3(a, a) == 0)
    assert torch.all(kl_k3(a, a + 0.3) > 0)


def test_unknown_aggregation_is_rejected():
    with pytest.raises(ValueError, match="token-mean"):
        agg_norm(torch.ones(1, 1), "sum", 1)
