import math

import pytest
import torch

from seal_trl.variants import get_variant, grpo_advantages, rank_failures_last, rest_em_keep_mask, rest_em_loss


def test_grpo_advantages_are_group_normalised():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = grpo_advantages(rewards, 3)
    assert torch.allclose(adv[:3], torch.tensor([-1.0, 0.0, 1.0]) / (1.0 + 1e-4), atol=1e-6)
    assert torch.all(adv[3:] == 0)  # no spread: no signal
    unscaled = grpo_advantages(rewards, 3, scale=False)
    assert torch.allclose(unscaled[:3], torch.tensor([-1.0, 0.0, 1.0]))


def test_grpo_matches_trl_math_and_ignores_nan():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(12, generator=g)
    grouped = rewards.view(3, 4)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    assert torch.allclose(grpo_advantages(rewards, 4), expected.reshape(-1), atol=1e-5)
    with_nan = torch.tensor([1.0, float("nan"), 3.0])
    adv = grpo_advantages(with_nan, 3)
    assert adv[1] == 0 and adv[0] < 0 < adv[2] and not torch.isnan(adv).any()


def test_rest_em_keeps_best_positive_per_context():
    rewards = torch.tensor([0.1, 0.5, 0.3, -0.2, -0.1, -0.3, 0.0, 0.0, 0.2])
    keep = rest_em_keep_mask(rewards, 3, top_k=1, margin=0.0)
    assert keep.tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 1]


def test_rest_em_margin_only_and_top_k_only():
    rewards = torch.tensor([0.1, 0.5, 0.3, 0.05])
    assert rest_em_keep_mask(rewards, 4, top_k=None, margin=0.2).tolist() == [0, 1, 1, 0]
    assert rest_em_keep_mask(rewards, 4, top_k=2, margin=None).tolist() == [0, 1, 1, 0]
    assert rest_em_keep_mask(torch.tensor([0.3, 0.3, 0.1]), 3, top_k=1, margin=None).tolist() == [1, 0, 0]


def test_rest_em_margin_is_strict():
    """The paper keeps self-edits whose gain is positive: a reward exactly at the margin is not kept."""
    assert rest_em_keep_mask(torch.tensor([0.0, -0.1]), 2, top_k=1, margin=0.0).tolist() == [0, 0]
    assert rest_em_keep_mask(torch.tensor([0.25, 0.5, 0.75]), 3, top_k=None, margin=0.5).tolist() == [0, 0, 1]


def test_rest_em_never_keeps_nan_and_validates():
    assert rest_em_keep_mask(torch.tensor([float("nan"), 0.2]), 2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="top_k and/or margin"):
        rest_em_keep_mask(torch.tensor([1.0]), 1, top_k=None, margin=None)
    with pytest.raises(ValueError, match="groups of 4"):
        rest_em_keep_mask(torch.ones(6), 4)


def test_rest_em_loss_is_nll_per_kept_token_of_the_whole_batch():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.1, 0.1]])).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss = rest_em_loss(logps, mask, 5.0)
    assert loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.25) + 3 * math.log(0.1)) / 5)
    loss.backward()
    assert logps.grad[0, 2] == 0 and torch.all(logps.grad[mask.bool()] == -1 / 5)
    # Split into two micro-batches, each over the same whole-batch count: the parts add up to the whole, so a
    # token's weight does not depend on which micro-batch it is in.
    parts = rest_em_loss(logps[:1], mask[:1], 5.0) + rest_em_loss(logps[1:], mask[1:], 5.0)
    assert parts.item() == pytest.approx(loss.item())


def test_registry():
    assert get_variant("grpo").uses_grpo_loss and not get_variant("rest_em").uses_grpo_loss
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        get_variant("ppo")


def test_failed_self_edits_rank_below_every_scored_one():
    rewards = torch.tensor([-0.5, 0.0, 0.2, 0.0, 0.0, 0.0])
    failed = torch.tensor([False, True, False, True, True, False])
    ranked = rank_failures_last(rewards, failed, 3)
    group0, group1 = ranked[:3], ranked[3:]
    assert group0[1] < group0[0] < group0[2]  # below the harmful (-0.5) self-edit, which a 0 would have beaten
    assert group0[0] == -0.5 and group0[2] == 0.2  # scored self-edits keep their reward
    assert group1[0] == group1[1] < group1[2] == 0.0  # a flat group: one failure step of 1e-3 below
    assert group1[0].item() == pytest.approx(-1e-3)
    advantages = grpo_advantages(ranked, 3)
    assert advantages[1] < advantages[0] < advantages[2]
    all_failed = rank_failures_last(torch.zeros(2), torch.tensor([True, True]), 2)
    assert torch.equal(all_failed, torch.full((2,), -1e-3))
