"""PPO with a value head and GAE: the maths against hand-computed values, its configuration, and runs through
the real driver and actors (2 FSDP ranks; the value head checkpointed and resumed bit for bit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from rayrl.algorithms.gae import gae, masked_gae, whiten
from rayrl.algorithms.grpo import Rollout, build_train_samples, collate, with_value_targets
from rayrl.algorithms.losses import policy_gradient_loss, token_entropy, value_loss_terms
from rayrl.config import AlgorithmConfig, Config
from rayrl.driver import train
from rayrl.models.value_head import ValueHead
from rayrl.tracking import read_metrics


# ---- GAE ------------------------------------------------------------------------------------------
def test_gae_by_hand():
    adv, ret = gae(np.array([0.5, 0.6]), 1.0, gamma=1.0, lam=1.0)  # lambda 1: the return minus the value
    assert adv == pytest.approx([0.5, 0.4]) and ret == pytest.approx([1.0, 1.0])
    # gamma 0.9, lambda 0.5: delta_1 = 1 - 0.6 = 0.4; delta_0 = 0.9 x 0.6 - 0.5 = 0.04; A_0 = 0.04 + 0.45 x 0.4
    adv, ret = gae(np.array([0.5, 0.6]), 1.0, gamma=0.9, lam=0.5)
    assert adv == pytest.approx([0.22, 0.4]) and ret == pytest.approx([0.72, 1.0])
    adv, _ = gae(np.array([0.5, 0.6]), 1.0, gamma=1.0, lam=0.0)  # one-step TD
    assert adv == pytest.approx([0.1, 0.4])


def test_gae_skips_environment_tokens():
    adv, ret = masked_gae(np.array([0.5, 9.0, 0.6]), 1.0, np.array([1, 0, 1]), gamma=0.9, lam=0.5)
    assert adv == pytest.approx([0.22, 0.0, 0.4]) and ret == pytest.approx([0.72, 0.0, 1.0])


def test_whitening_over_the_batch_ignores_masked_tokens():
    out = whiten([np.array([1.0, 2.0]), np.array([3.0, 50.0])], [None, np.array([1, 0])])
    s = math.sqrt(2 / 3)
    assert out[0] == pytest.approx([-1 / s, 0.0], abs=1e-6) and out[1] == pytest.approx([1 / s, 0.0], abs=1e-6)


# ---- value loss, entropy, token advantages ----------------------------------------------------------
def test_value_loss_clipped_and_not():
    v = torch.tensor([[0.5]], requires_grad=True)
    old, ret = torch.tensor([[0.2]]), torch.tensor([[1.0]])
    assert value_loss_terms(v, old, ret, clip=0.0).item() == pytest.approx(0.5 * 0.25)
    loss = value_loss_terms(v, old, ret, clip=0.2)  # clipped to 0.4: error 0.36 is the larger
    assert loss.item() == pytest.approx(0.5 * 0.36)
    loss.sum().backward()
    assert v.grad.item() == 0.0  # the clipped branch carries no gradient
    v2 = torch.tensor([[0.3]], requires_grad=True)  # inside the clip: the plain error, with gradient
    value_loss_terms(v2, old, ret, clip=0.2).sum().backward()
    assert v2.grad.item() == pytest.approx(0.3 - 1.0)


def test_entropy_of_full_and_truncated_distributions():
    assert token_entropy(torch.log(torch.full((4,), 0.25))).item() == pytest.approx(math.log(4))
    logp = torch.tensor([math.log(0.5), math.log(0.5), float("-inf")], requires_grad=True)
    h = token_entropy(logp)
    h.backward()
    assert h.item() == pytest.approx(math.log(2)) and torch.isfinite(logp.grad).all()


def test_token_level_advantages_in_the_clipped_loss():
    """One sequence, two tokens with ratios 1.5 and 1.0 and advantages +1 and -2: the first token's ratio is
    clipped to 1.2 (term -1.2), the second gives +2; token mean = 0.4."""
    logprobs = torch.log(torch.tensor([[1.5, 1.0]], dtype=torch.float64))
    loss, stats = policy_gradient_loss(
        logprobs, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[1.0, -2.0]], dtype=torch.float64),
        torch.ones(1, 2), torch.tensor([0.5], dtype=torch.float64), clip_low=0.2, clip_high=0.2,
    )
    assert loss.item() == pytest.approx((-1.2 + 2.0) / 2) and stats["clipped"].item() == 1


def rollout(group, reward, completion, mask=None):
    return Rollout(0, f"e{group}", group, [1, 2], completion, [-1.0] * len(completion), reward, 0, "stop",
                   completion_mask=mask)


def test_value_targets_of_a_batch():
    """Without whitening the advantages are GAE's; the returns and old values travel to the learner aligned
    with the completion tokens (collate), and every sample trains, ties included."""
    groups = [[rollout(0, 1.0, [5, 6]), rollout(0, 1.0, [5, 7])], [rollout(1, 0.0, [8, 9, 3], [1, 0, 1])]]
    samples, _ = build_train_samples(groups, group_relative=False)
    assert len(samples) == 3  # a tied group still trains: the value head is the baseline
    values = [np.array([0.5, 0.6]), np.array([0.2, 0.2]), np.array([0.1, 5.0, 0.3])]
    algo = AlgorithmConfig(name="ppo", whiten_advantages=False, gamma=1.0, gae_lambda=1.0)
    stats = with_value_targets(samples, values, np.array([1.0, 1.0, 0.0]), algo)
    assert samples[0].token_advantages == pytest.approx([0.5, 0.4])
    assert samples[2].token_advantages == pytest.approx([-0.1, 0.0, -0.3]) and samples[2].returns[1] == 0
    assert stats["value/estimate_mean"] == pytest.approx((0.5 + 0.2 + 0.1) / 3)
    batch = collate(samples, pad_id=0)
    assert batch["advantages"].shape == batch["returns"].shape == batch["old_values"].shape == (3, 4)
    assert batch["advantages"][0, 1:3].tolist() == pytest.approx([0.5, 0.4])
    assert batch["old_values"][2, 1:4].tolist() == pytest.approx([0.1, 5.0, 0.3])
    whitened = AlgorithmConfig(name="ppo")
    with_value_targets(samples, values, np.array([1.0, 1.0, 0.0]), whitened)
    model_tokens = np.concatenate([s.token_advantages[s.loss_mask.astype(bool)] if s.loss_mask is not None
                                   else s.token_advantages for s in samples])
    assert abs(model_tokens.mean()) < 1e-6 and model_tokens.std() == pytest.approx(1.0, abs=1e-5)


def test_value_head_starts_at_zero():
    assert torch.equal(ValueHead(8)(torch.randn(2, 3, 8)), torch.zeros(2, 3))


# ---- configuration ----------------------------------------------------------------------------------
def test_ppo_defaults_and_refusals():
    a = AlgorithmConfig(name="ppo")
    assert (a.gamma, a.gae_lambda, a.vf_coef, a.value_clip, a.whiten_advantages) == (1.0, 1.0, 0.1, 0.2, True)
    assert AlgorithmConfig().gamma is None  # other algorithms have no value head
    with pytest.raises(ValidationError, match="algorithm.gae_lambda belongs to ppo's value head"):
        AlgorithmConfig(name="grpo", gae_lambda=0.95)
    with pytest.raises(ValidationError, match="ppo's advantages come from its value head"):
        AlgorithmConfig(name="ppo", std_normalize=True)
    with pytest.raises(ValidationError, match="with epochs > 1 use the clipped ratio"):
        AlgorithmConfig(name="ppo", epochs=2, tis_cap=2.0)
    cfg = Config.model_validate({"algorithm": {"name": "ppo", "gae_lambda": 0.95}})
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg  # a checkpoint's config reloads


# ---- runs -------------------------------------------------------------------------------------------
PPO = {"algorithm": {"name": "ppo", "epochs": 2, "entropy_coef": 0.001}, "learner": {"workers": 2},
       "ckpt": {"interval": 0, "at_end": True, "keep": 0}, "eval": {"interval": 0, "at_start": False}}


@pytest.mark.slow
def test_ppo_trains_its_value_head_and_resumes_bit_for_bit(ray_cluster, small_config, base_model_path, tmp_path):
    """On 2 FSDP ranks with 2 epochs a batch: the value head learns (its estimates move off 0, its loss is
    reported), it is checkpointed beside the policy, and a run stopped at step 2 and resumed matches the
    straight run's metrics and both files bit for bit."""
    straight = train(small_config(tmp_path / "straight", max_steps=3, **PPO))
    train(small_config(tmp_path / "stopped", max_steps=2, **PPO))
    resumed = train(small_config(tmp_path / "stopped", max_steps=3, **{**PPO, "ckpt": {**PPO["ckpt"], "resume_step": -1}}))
    a = read_metrics(straight.output_dir / "metrics.jsonl")
    b = read_metrics(resumed.output_dir / "metrics.jsonl")
    assert a[0]["value/estimate_mean"] == 0.0 and a[-1]["value/estimate_mean"] != 0.0
    for m in a:
        assert math.isfinite(m["value/loss"]) and m["entropy"] > 0 and m["train_samples"] == 32
    assert max(m["clip_fraction"] for m in a) > 0  # the second epoch's ratios move off 1
    timing = ("step_time_s", "tokens_per_s", "time/")
    assert [{k: v for k, v in m.items() if not k.startswith(timing)} for m in a] == [
        {k: v for k, v in m.items() if not k.startswith(timing)} for m in b
    ]
    for name in ("model.safetensors", "value_head.safetensors"):
        wa = load_file(tmp_path / "straight" / "checkpoints" / "step_3" / name)
        wb = load_file(tmp_path / "stopped" / "checkpoints" / "step_3" / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert (tmp_path / "stopped" / "checkpoints" / "step_3" / "value_optimizer.pt").is_file()
