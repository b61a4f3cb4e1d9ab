"""Every shipped experiment trains end to end: two RL steps through real actors, per-environment metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayrl.config.loading import load_config
from rayrl.driver import train
from rayrl.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
# The default experiment has its own end-to-end checks (and a warm start that takes minutes); the seeds'
# recipes (an SFT stage, then RL) theirs in tests/test_recipes.py.
RECIPES = ("affine_ppo.toml", "openspiel_grpo_lora.toml")
# GPU runs of a hub model (vLLM on 8 GPUs): loaded and planned in tests/test_plan.py, never trained here.
GPU_EXPERIMENTS = ("qwen3_0.6b.toml",)
FAMILY_EXPERIMENTS = sorted(
    p.name for p in (ROOT / "experiments").glob("*.toml")
    if p.name != "default.toml" and p.name not in RECIPES + GPU_EXPERIMENTS
)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_EXPERIMENTS)
def test_experiment_trains_two_steps(name, ray_cluster, model_cache, tmp_path):
    cfg = load_config(
        ROOT / "experiments" / name,
        {
            "max_steps": "2", "output_dir": str(tmp_path / "run"), "model.cache_dir": str(model_cache),
            "eval.interval": "2", "eval.num_examples": "8", "ckpt.interval": "0", "log.progress": "false",
            "inference.cpus_per_replica": "0.5", "learner.cpus_per_worker": "0.5", "rollout.cpus_per_worker": "0.5",
        },
    )
    metrics = read_metrics(train(cfg).output_dir / "metrics.jsonl")
    steps = [m for m in metrics if m["step"] > 0]
    assert [m["step"] for m in steps] == [1, 2]
    for env in cfg.env_names():
        assert all(f"reward/{env}/reward_mean" in m for m in steps), (env, steps[-1].keys())
        assert f"eval/{env}/reward_mean" in steps[-1]
    assert steps[-1]["policy_version"] >= 0 and steps[-1]["tokens"] > 0


VF_ENVS = ROOT / "experiments" / "vf_envs"


@pytest.mark.slow
def test_mixed_batch_of_three_environment_kinds(ray_cluster, small_config, base_model_path, tmp_path):
    """One batch mixes a single-turn built-in task, a multi-turn gymnasium game and a verifiers environment
    (which plays its own rollouts) in the ratio of their weights; every metric is reported per environment."""
    cfg = small_config(
        tmp_path, max_steps=2, batch_size=32, rollouts_per_example=4, seq_len=96,
        env=[
            {"id": "arithmetic", "args": {"digits": 2, "eval_size": 200}, "weight": 2},
            {"id": "gymnasium:FrozenLake-v1", "weight": 1, "args": {
                "make_args": {"is_slippery": False}, "num_train": 20, "num_eval": 4, "max_turns": 3,
                "action_names": ["l", "d", "r", "u"]}},
            {"id": "vf-addition", "path": str(VF_ENVS), "weight": 1, "args": {"max_operand": 9, "eval_examples": 8}},
        ],
        eval={"interval": 2, "num_examples": 4}, ckpt={"interval": 0},
    )
    steps = [m for m in read_metrics(train(cfg).output_dir / "metrics.jsonl") if m["step"] > 0]
    for m in steps:
        # 8 prompts a step split 2:1:1, 4 samples each
        assert (m["reward/arithmetic/samples"], m["reward/gymnasium:FrozenLake-v1/samples"],
                m["reward/vf-addition/samples"]) == (16, 8, 8)
        assert "reward/gymnasium:FrozenLake-v1/invalid_actions" in m  # the environment's named metrics
        assert "reward/vf-addition/exact_answer" in m
    assert {"eval/arithmetic/reward_mean", "eval/vf-addition/reward_mean"} <= steps[-1].keys()
