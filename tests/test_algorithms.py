"""The GRPO family's maths (rayrl.algorithms.losses, the reward shaping in rayrl.algorithms.grpo) and its
configuration, against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rayrl.algorithms.grpo import Rollout, TrainSample, build_train_samples, overlong_penalties, sequence_kl
from rayrl.algorithms.losses import (
    aggregation_weights, gspo_clip_terms, kl_estimate, policy_gradient_loss, ppo_clip_terms, tis_terms,
)
from rayrl.config import Config


def logs(*values):
    return torch.log(torch.tensor([values], dtype=torch.float64))


# ---- aggregation --------------------------------------------------------------------------------------
def test_aggregation_weights_by_hand():
    assert aggregation_weights([2, 4], "token_mean", 8) == pytest.approx([1 / 6, 1 / 6])
    assert aggregation_weights([2, 4], "seq_mean_token_mean", 8) == pytest.approx([1 / 4, 1 / 8])
    assert aggregation_weights([2, 4], "seq_mean_token_sum_norm", 8) == pytest.approx([1 / 16, 1 / 16])
    assert aggregation_weights([], "token_mean", 8) == []
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregation_weights([1], "mean", 8)


@pytest.mark.parametrize("aggregation, expected", [
    # sequence A: 2 tokens, ratios 1.0, 1.1, A = +1 -> terms -1.0, -1.1
    # sequence B: 4 tokens, ratios 1, 1, 1, 0.9, A = -1 -> terms 1, 1, 1, 0.9
    ("token_mean", (-2.1 + 3.9) / 6),
    ("seq_mean_token_mean", (-2.1 / 2 + 3.9 / 4) / 2),
    ("seq_mean_token_sum_norm", (-2.1 + 3.9) / (2 * 8)),
])
def test_the_three_aggregations_of_one_batch(aggregation, expected):
    old = torch.zeros(2, 4, dtype=torch.float64)
    new = torch.log(torch.tensor([[1.0, 1.1, 1.0, 1.0], [1.0, 1.0, 1.0, 0.9]], dtype=torch.float64))
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    weights = torch.tensor(aggregation_weights([2, 4], aggregation, max_tokens=8), dtype=torch.float64)
    loss, stats = policy_gradient_loss(new, old, torch.tensor([1.0, -1.0]), mask, weights, clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert stats["tokens"].item() == 6 and stats["clipped"].item() == 0


# ---- the terms ----------------------------------------------------------------------------------------
def test_ppo_terms_clip_each_token():
    terms, clipped = ppo_clip_terms(logs(1.5, 0.5, 1.0), logs(1, 1, 1), torch.tensor([1.0]), 0.2, 0.28)
    assert terms[0].tolist() == pytest.approx([-1.28, -0.5, -1.0])  # clip-higher: 1 + 0.28
    assert clipped.tolist() == [[True, False, False]]


def test_gspo_clips_the_sequence_ratio_and_spreads_its_gradient_over_the_tokens():
    # token ratios 1.0 and 1.21: the sequence ratio is their geometric mean, 1.1
    new = logs(1.0, 1.21).requires_grad_(True)
    old = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    terms, clipped = gspo_clip_terms(new, old, torch.tensor([1.0]), mask, 0.2, 0.2)
    assert terms[0].tolist() == pytest.approx([-1.1, -1.1]) and not clipped.any()
    terms.mean().backward()  # the sequence mean: GSPO's loss of this sequence is -s A = -1.1
    # d(-s A)/d logp_t = -A s / |y| = -0.55 for every token (token-level PPO would give -0.5 and -0.605)
    assert new.grad[0].tolist() == pytest.approx([-0.55, -0.55])
    new.grad = None
    terms, clipped = gspo_clip_terms(new, old, torch.tensor([1.0]), mask, 3e-4, 4e-4)
    assert terms[0].tolist() == pytest.approx([-1.0004, -1.0004]) and clipped.all()
    terms.mean().backward()
    assert new.grad.abs().max().item() == 0.0  # A > 0 above 1 + clip_high: no gradient


def test_gspo_sequence_ratio_ignores_masked_tokens():
    new, old = logs(1.21, 1.0, 7.0), torch.zeros(1, 3, dtype=torch.float64)
    terms, _ = gspo_clip_terms(new, old, torch.tensor([1.0]), torch.tensor([[1.0, 1.0, 0.0]]), 0.2, 0.2)
    assert terms[0, :2].tolist() == pytest.approx([-1.1, -1.1])


def test_tis_weights_by_the_truncated_ratio_to_the_sampler():
    new = logs(0.5, 0.2).requires_grad_(True)
    sampler = logs(0.25, 0.4)  # ratios 2 (capped at 1.5) and 0.5
    terms, truncated = tis_terms(new, sampler, torch.tensor([1.0]), cap=1.5)
    assert terms[0].tolist() == pytest.approx([-1.5, -0.5]) and truncated.tolist() == [[True, False]]
    terms.sum().backward()
    assert new.grad[0].tolist() == pytest.approx([-1.5, -0.5])  # weight x A x grad log pi


def test_kl_estimators_by_hand():
    logp, ref = logs(0.5, 0.25), logs(0.25, 0.25)
    assert kl_estimate(logp, ref, "k1")[0].tolist() == pytest.approx([math.log(2), 0.0])
    # k3 = r - 1 - log r, r = pi_ref / pi = 0.5: 0.5 - 1 + log 2
    assert kl_estimate(logp, ref, "k3")[0].tolist() == pytest.approx([0.5 - 1 + math.log(2), 0.0])
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logp, ref, "k2")


def test_kl_term_is_added_per_token_and_reported():
    new, old, ref = logs(0.5, 0.5), logs(0.5, 0.5), logs(0.25, 0.5)
    mask, weights = torch.ones(1, 2, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    loss, stats = policy_gradient_loss(new, old, torch.tensor([1.0]), mask, weights, clip_low=0.2, clip_high=0.2,
                                       kl_coef=0.1, ref_logprobs=ref, kl_estimator="k1")
    # terms -1, -1; KL k1 = log 2, 0 -> mean(-1 + 0.1 log 2, -1)
    assert loss.item() == pytest.approx((-2 + 0.1 * math.log(2)) / 2)
    assert stats["kl_ref"].item() == pytest.approx(math.log(2))
    _, stats = policy_gradient_loss(new, old, torch.tensor([1.0]), mask, weights, clip_low=0.2, clip_high=0.2)
    assert "kl_ref" not in stats


# ---- reward shaping -----------------------------------------------------------------------------------
def test_overlong_penalty_by_hand():
    lengths, limits = np.array([3, 4, 6, 7, 8, 9]), np.full(6, 8)
    assert overlong_penalties(lengths, limits, buffer=4, penalty=1.0).tolist() == [0, 0, -0.5, -0.75, -1, -1]
    assert overlong_penalties(lengths, limits, buffer=4, penalty=0.5).tolist() == [0, 0, -0.25, -0.375, -0.5, -0.5]
    assert overlong_penalties(lengths, limits, buffer=0, penalty=1.0).tolist() == [0] * 6


def test_sequence_kl_sums_the_models_tokens_only():
    sampler, ref = np.log([0.5, 0.5, 0.5]), np.log([0.25, 0.5, 0.125])
    assert sequence_kl(sampler, ref, None, "k1") == pytest.approx(math.log(2) + math.log(4))
    assert sequence_kl(sampler, ref, np.array([1, 1, 0]), "k1") == pytest.approx(math.log(2))


def test_shaped_rewards_drive_advantages_and_ties_the_statistics_stay_the_environments():
    group = [Rollout(0, "e", 0, [1], [2, 3], [-0.1, -0.1], 1.0, 0, "stop") for _ in range(2)]
    samples, stats = build_train_samples([group], shaped=[np.array([1.0, 0.5])])
    assert [s.advantage for s in samples] == pytest.approx([0.25, -0.25]) and stats["reward_mean"] == 1.0
    samples, stats = build_train_samples([group])  # unshaped: equal rewards tie
    assert samples == [] and stats["zero_advantage_group_fraction"] == 1.0


def test_padding_keeps_zero_weight_through_collate():
    from rayrl.algorithms.grpo import collate, padding_sample

    batch = collate([TrainSample(np.array([1, 2, 3]), 1, np.zeros(2, np.float32), 1.0, weight=0.25), padding_sample()], 0)
    assert batch["weights"].tolist() == [0.25, 0.0] and batch["loss_mask"].tolist() == [[1, 1], [0, 0]]


# ---- configuration ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, clip_high, std, aggregation, dynamic", [
    ("grpo", 0.2, False, "token_mean", False),
    ("dr_grpo", 0.2, False, "seq_mean_token_sum_norm", False),
    ("dapo", 0.28, True, "token_mean", True),
    ("gspo", 4e-4, True, "seq_mean_token_mean", False),
])
def test_each_algorithm_fills_its_published_defaults(name, clip_high, std, aggregation, dynamic):
    a = Config.model_validate({"algorithm": {"name": name}}).algorithm
    assert (a.clip_high, a.std_normalize, a.loss_aggregation, a.dynamic_sampling) == (clip_high, std, aggregation, dynamic)
    assert Config.model_validate({"algorithm": {"name": name, "clip_high": 0.5}}).algorithm.clip_high == 0.5


def test_a_setting_that_contradicts_the_algorithm_is_refused(tmp_path):
    from rayrl.config.loading import load_config
    from rayrl.errors import ConfigError

    path = tmp_path / "exp.toml"
    path.write_text('[algorithm]\nname = "dr_grpo"\nstd_normalize = true\n')
    with pytest.raises((ConfigError, ValidationError)) as err:
        load_config(path)
    assert "exp.toml" in str(err.value) and "contradicts dr_grpo" in str(err.value)
