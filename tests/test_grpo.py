import numpy as np
import pytest
import torch

from rayrl.algorithms.grpo import clipped_policy_loss, group_advantages, token_logprobs


def test_group_advantages_subtract_the_group_mean():
    adv = group_advantages(np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(adv, [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]])


def test_group_advantages_std_normalised():
    adv = group_advantages(np.array([[2.0, 0.0]]), std_normalize=True, eps=0.0)
    np.testing.assert_allclose(adv, [[1.0, -1.0]])


def test_token_logprobs_match_log_softmax_with_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
    targets = torch.tensor([[0, 1]])
    got = token_logprobs(logits, targets, temperature=2.0)
    want = torch.log_softmax(logits / 2.0, -1)[0, [0, 1], [0, 1]]
    torch.testing.assert_close(got[0], want)


def test_on_policy_loss_is_minus_mean_advantage_per_token():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -2.0])
    loss, stats = clipped_policy_loss(logp, logp.clone(), adv, mask, 0.2, 0.2, normalizer=3.0)
    # ratio = 1 everywhere: loss = -(1 + 1 - 2) / 3
    assert loss.item() == pytest.approx(0.0)
    assert stats["tokens"].item() == 3
    assert stats["mismatch_kl"].item() == pytest.approx(0.0)


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
