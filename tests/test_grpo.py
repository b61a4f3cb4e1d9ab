"""The GRPO step's maths (rayrl.algorithms.grpo), in process, against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from rayrl.algorithms.grpo import (
    Rollout, TrainSample, build_train_samples, collate, drop_stale, drop_truncated, group_advantages, rewards_tied,
    set_loss_weights, shard_evenly,
)
from rayrl.algorithms.losses import policy_gradient_loss
from rayrl.algorithms.sampling import token_logprobs


def clipped_policy_loss(new, old, adv, mask, clip_low, clip_high, normalizer):
    """The token-level clipped loss with every token weighted 1 / normalizer (the token mean)."""
    weights = torch.full((len(adv),), 1.0 / normalizer)
    return policy_gradient_loss(new, old, adv, mask, weights, clip_low=clip_low, clip_high=clip_high)


def loss_normalizer(samples):
    """The token mean's denominator, read back from the weights set_loss_weights gives (1 / trained tokens)."""
    weights = {s.weight for s in set_loss_weights(samples, "token_mean", max_tokens=8) if s.weight}
    assert len(weights) == 1
    return round(1.0 / weights.pop())


def rollout(reward: float, version: int = 0, completion=(5, 6), mask=None, group: int = 0) -> Rollout:
    return Rollout(0, f"ex{group}", group, [1, 2, 3], list(completion), [-0.5] * len(completion), reward, version,
                   "stop", completion_mask=mask)


# ---- advantages and ties ---------------------------------------------------------------------------
def test_masked_truncated_completions_count_in_their_group_but_carry_no_loss():
    """prime-rl's mask_truncated_completions: the cut completion's reward still shapes its group's
    advantages (the others' are as without masking), and it is left out of the update."""
    group = [rollout(1.0), rollout(0.0), rollout(0.0), rollout(1.0)]
    group[3] = Rollout(**{**group[3].__dict__, "finish_reason": "length"})
    samples, _ = build_train_samples([group])
    kept, masked = drop_truncated(samples)
    assert masked == 1 and len(kept) == 3 and not any(s.truncated for s in kept)
    assert [s.advantage for s in kept] == [s.advantage for s in samples[:3]] == [0.5, -0.5, -0.5]


def test_group_advantages_subtract_the_group_mean():
    adv = group_advantages(np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(adv, [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]])
    np.testing.assert_allclose(group_advantages(np.array([3.0, 1.0, 2.0])), [1.0, -1.0, 0.0])


def test_group_advantages_std_normalised():
    adv = group_advantages(np.array([[2.0, 0.0]]), std_normalize=True, eps=0.0)
    np.testing.assert_allclose(adv, [[1.0, -1.0]])


@pytest.mark.parametrize("rewards", [[0.7] * 6, [0.999] * 7, [0.1 + 0.2, 0.3] * 4, [1e6 + 1e-4, 1e6] * 2, [5.0]])
def test_equal_fractional_rewards_are_a_tie(rewards):
    """Equal rewards whose mean is inexact leave advantages of ~1e-16, not 0: still a tie."""
    assert rewards_tied(np.array(rewards))


@pytest.mark.parametrize("rewards", [[0.7] * 5 + [0.7 + 1e-6], [0.0, 1e-8], [1.0, 0.0]])
def test_rewards_that_differ_are_not_a_tie(rewards):
    assert not rewards_tied(np.array(rewards))


def test_tied_fractional_groups_add_nothing_to_the_batch_or_its_normaliser():
    real = [rollout(r, group=0) for r in (1.0, 0.0, 1.0, 0.0, 1.0, 0.0)]
    tied = [rollout(0.7, group=1) for _ in range(6)]  # six times 0.7: mean 0.7 - 1.1e-16
    samples, stats = build_train_samples([real, tied])
    assert len(samples) == 6 and stats["train_samples"] == 6
    assert loss_normalizer(samples) == 12  # the real group's 6 x 2 completion tokens only
    assert stats["zero_advantage_group_fraction"] == 0.5
    assert [s.advantage for s in samples] == pytest.approx([0.5, -0.5] * 3)


# ---- staleness -------------------------------------------------------------------------------------
def test_drop_stale_keeps_k_versions_and_counts_the_rest():
    groups = [[rollout(1.0, 5)] * 2, [rollout(1.0, 4)] * 2, [rollout(1.0, 3)] * 3]
    kept, stats = drop_stale(groups, version=5, max_off_policy_steps=1)
    assert [[r.version for r in g] for g in kept] == [[5, 5], [4, 4]]
    assert stats["staleness/dropped_samples"] == 3 and stats["staleness/max"] == 2
    assert (stats["staleness/hist_0"], stats["staleness/hist_1"], stats["staleness/hist_2"]) == (2, 2, 3)


def test_staleness_is_decided_per_sample_when_a_group_spans_versions():
    """A group split over two replicas can hold two versions: its stale samples go, its fresh ones stay,
    and the advantages are taken over the samples that stay."""
    group = [rollout(1.0, 5), rollout(0.0, 5), rollout(1.0, 3), rollout(1.0, 3)]
    kept, stats = drop_stale([group], version=5, max_off_policy_steps=1)
    assert [r.version for r in kept[0]] == [5, 5] and stats["staleness/dropped_samples"] == 2
    samples, _ = build_train_samples(kept)
    assert [s.advantage for s in samples] == [0.5, -0.5]
    kept, _ = drop_stale([group[2:]], version=5, max_off_policy_steps=1)
    assert kept == []  # a group with nothing fresh is gone, not kept empty


# ---- the loss --------------------------------------------------------------------------------------
def test_clipped_loss_against_hand_computed_values():
    ratios = torch.tensor([[1.5, 0.5, 1.0], [1.1, 2.0, 0.7]])
    old = torch.log(torch.full((2, 3), 0.25))
    new = old + torch.log(ratios)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    loss, stats = clipped_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.2, normalizer=10.0)
    # A = +1: min(1.5, 1.2) = 1.2, min(0.5, 0.8) = 0.5, min(1, 1) = 1 -> -(1.2 + 0.5 + 1)
    # A = -2: min(-2.2, -2.2) = -2.2, min(-4, -2.4) = -4, masked     -> +(2.2 + 4)
    assert loss.item() == pytest.approx((-2.7 + 6.2) / 10.0, rel=1e-6)
    assert stats["tokens"].item() == 5 and stats["clipped"].item() == 1
    kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.0, 1.1, 2.0))
    assert stats["mismatch_kl"].item() == pytest.approx(kl, rel=1e-5)


def test_ratio_is_clipped_for_positive_advantage():
    old = torch.log(torch.tensor([[0.25]]))
    new = torch.log(torch.tensor([[0.5]]))  # ratio 2
    loss, stats = clipped_policy_loss(new, old, torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.3, 1.0)
    assert loss.item() == pytest.approx(-1.3)
    assert stats["clipped"].item() == 1


def test_negative_advantage_keeps_the_pessimistic_unclipped_term():
    old = torch.log(torch.tensor([[0.25]]))
    new = torch.log(torch.tensor([[0.5]]))  # ratio 2, advantage -1: min(-2, -1.2) = -2
    loss, _ = clipped_policy_loss(new, old, torch.tensor([-1.0]), torch.ones(1, 1), 0.2, 0.2, 1.0)
    assert loss.item() == pytest.approx(2.0)


def test_gradient_points_towards_positive_advantage():
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    target = torch.tensor([[1]])
    logp = token_logprobs(logits, target)
    loss, _ = clipped_policy_loss(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 1), 0.2, 0.2, 1.0)
    loss.backward()
    assert logits.grad[0, 0, 1] < 0 < logits.grad[0, 0, 0]


# ---- batch building, shards, collate ---------------------------------------------------------------
def test_collate_aligns_loss_positions_with_the_completion_tokens():
    a = TrainSample(np.array([1, 2, 3, 4, 5]), 3, np.array([-0.1, -0.2], np.float32), 1.0)
    b = TrainSample(np.array([1, 2, 7, 8, 9, 6]), 2, np.array([-1, -2, -3, -4], np.float32), -1.0,
                    loss_mask=np.array([1, 0, 0, 1], np.int8))
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0], [1, 2, 7, 8, 9, 6]]
    # position t predicts token t + 1: a's completion (4, 5) is predicted at positions 2 and 3
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 1, 0, 0, 1]]
    assert batch["weights"].tolist() == [1.0, 1.0]
    assert batch["old_logprobs"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2, 0])
    assert loss_normalizer([a, b]) == 4


def test_shards_have_equal_counts_padded_with_zero_weight_samples():
    samples = [TrainSample(np.array([1, 2]), 1, np.zeros(1, np.float32), float(i)) for i in range(5)]
    shards = shard_evenly(samples, 2)
    assert [len(s) for s in shards] == [3, 3]
    assert [s.advantage for s in shards[0]] == [0, 2, 4] and shards[1][-1].weight == 0.0
    assert collate(shards[1], pad_id=0)["loss_mask"][-1].sum() == 0  # padding trains on nothing
    assert loss_normalizer(samples) == 5


def test_multi_turn_rollouts_mask_environment_tokens_single_turn_ones_carry_no_mask():
    samples, _ = build_train_samples([[rollout(1.0, completion=(5, 6, 7, 8), mask=[1, 0, 0, 1]),
                                       rollout(0.0, completion=(5, 6, 7, 8), mask=[1, 1, 1, 1])]])
    assert samples[0].loss_mask.tolist() == [1, 0, 0, 1] and samples[1].loss_mask is None
    assert samples[0].loss_tokens() == 2 and samples[1].loss_tokens() == 4
