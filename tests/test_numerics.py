"""Numbers that are not finite never reach the weights: advantages of huge but finite rewards stay finite,
groups with NaN rewards are left out, an update with a NaN loss or gradient is skipped (weights, optimizer
and scheduler untouched), too many in a row stop the run, and a checkpoint is never written from NaN weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rayrl.actors.learner import LearnerGroup
from rayrl.algorithms.grpo import (
    ADVANTAGE_LIMIT, Rollout, TrainSample, build_train_samples, drop_nonfinite, group_advantages,
)
from rayrl.driver import SkippedUpdates
from rayrl.errors import CheckpointError, NumericsError

REWARDS = Path(__file__).parent / "rewards"


def rollout(group: int, reward: float) -> Rollout:
    return Rollout(env_index=0, example_id=str(group), group=group, prompt_ids=[1, 2], completion_ids=[3, 4],
                   logprobs=[-1.0, -1.0], reward=reward, version=0, finish_reason="stop")


def test_advantages_of_huge_finite_rewards_are_finite_and_keep_their_direction():
    for rewards in ([0.0, 1e39, 0.0, 1e39], [1e308, -1e308, 1e308, 0.0], [3e38, 3e38, -3e38, 1.0]):
        adv = group_advantages(np.array(rewards))
        assert np.isfinite(adv).all()
        centred = np.array(rewards) / 1e300 - np.mean(np.array(rewards) / 1e300)
        assert (np.sign(adv) == np.sign(centred)).all()
        assert np.isfinite(group_advantages(np.array(rewards), std_normalize=True)).all()
    np.testing.assert_allclose(group_advantages(np.array([0.0, 1e39])), [-5e38, 5e38])
    np.testing.assert_allclose(group_advantages(np.array([0.0, 1e39]), std_normalize=True, eps=0.0), [-1.0, 1.0])

    groups = [[rollout(0, 0.0), rollout(0, 1e39)], [rollout(1, 1.0), rollout(1, 0.0)]]
    samples, stats = build_train_samples(groups)
    adv = np.array([s.advantage for s in samples], dtype=np.float32)
    assert np.isfinite(adv).all() and np.abs(adv).max() == pytest.approx(ADVANTAGE_LIMIT)
    assert stats["numerics/advantage_scale"] == pytest.approx(ADVANTAGE_LIMIT / 5e38)
    np.testing.assert_allclose(adv[2:] / adv[1], [1e-39, -1e-39], rtol=1e-5)  # one factor for the batch
    assert "numerics/advantage_scale" not in build_train_samples(groups[1:])[1]  # ordinary rewards: untouched


def test_groups_with_a_nan_or_infinite_reward_are_left_out():
    groups = [[rollout(0, 1.0), rollout(0, math.nan)], [rollout(1, 1.0), rollout(1, 0.0)],
              [rollout(2, math.inf), rollout(2, 0.0)]]
    shaped = [np.array([r.reward for r in g]) for g in groups]
    kept, kept_shaped, dropped = drop_nonfinite(groups, shaped)
    assert dropped == 2 and kept == [groups[1]] and np.array_equal(kept_shaped[0], [1.0, 0.0])


def test_skipped_updates_in_a_row_stop_the_run_and_a_good_one_resets_the_count():
    skips = SkippedUpdates(limit=3)
    for step, skipped in [(1, True), (2, True), (3, False), (4, True), (5, True)]:
        skips.record(step, skipped)
    assert skips.total == 4 and skips.in_a_row == 2
    with pytest.raises(NumericsError, match=r"steps 4-6: 3 updates in a row .*\(learner.max_skipped_updates = 3\)"):
        skips.record(6, True)


def samples(advantage: float) -> list[TrainSample]:
    ids = np.array([5, 6, 7, 8, 9, 10])
    return [TrainSample(ids, 3, np.full(3, -2.0, np.float32), advantage), TrainSample(ids[::-1].copy(), 3,
            np.full(3, -2.0, np.float32), -advantage)]


def test_a_nan_update_is_skipped_with_weights_optimizer_and_scheduler_untouched(small_config, tiny_model_path):
    group = LearnerGroup(small_config(learner={"workers": 0}, optim={"lr": 1e-2}), tiny_model_path, "test-nan")
    learner = group.local
    try:
        before = {k: v.clone() for k, v in learner.full_state_dict().items()}
        lr_before = learner.scheduler.get_last_lr()[0]
        skipped = group.update(samples(math.nan))
        assert skipped["skipped_update"] == 1.0 and math.isnan(skipped["grad_norm"])
        after = learner.full_state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert not learner.optimizer.state  # AdamW never stepped: no moments were created
        assert learner.scheduler.get_last_lr()[0] == lr_before and learner.scheduler.last_epoch == 0
        assert all(p.grad is None for p in learner.model.parameters())  # nothing left to leak into the next step

        good = group.update(samples(1.0))
        assert good["skipped_update"] == 0.0 and math.isfinite(good["grad_norm"])
        assert any(not torch.equal(before[k], v) for k, v in learner.full_state_dict().items())
    finally:
        group.shutdown()


def test_a_checkpoint_is_never_written_from_nan_weights(small_config, tiny_model_path, tmp_path):
    group = LearnerGroup(small_config(learner={"workers": 0}), tiny_model_path, "test-nan-save")
    try:
        with torch.no_grad():
            next(group.local.model.parameters()).fill_(math.nan)
        with pytest.raises(CheckpointError, match="hold NaN or inf"):
            group.save(str(tmp_path / "step_1"))
        assert not (tmp_path / "step_1" / "model.safetensors").exists()
    finally:
        group.shutdown()


@pytest.mark.slow
def test_a_run_with_astronomical_rewards_trains_on_finite_numbers(ray_cluster, small_config, base_model_path, tmp_path):
    from safetensors.torch import load_file

    from rayrl.driver import train

    env = {"id": "arithmetic", "args": {"digits": 2, "eval_size": 1000},
           "reward": f"{REWARDS / 'reward_fixtures.py'}:astronomical"}
    result = train(small_config(tmp_path / "run", max_steps=3, env=[env], eval={"interval": 0},
                                ckpt={"interval": 3, "keep": 0}))
    steps = result.metrics
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in steps)
    assert all(m["numerics/skipped_updates"] == 0 for m in steps) and steps[-1]["policy_version"] == 3
    assert any(m.get("numerics/advantage_scale", 1.0) < 1e-30 for m in steps)
    weights = load_file(tmp_path / "run" / "checkpoints" / "step_3" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
