"""The GRPO family through the real driver, actors and learner group: each algorithm's features run, report
their metrics, and (DAPO's dynamic sampling, which draws extra examples) resume bit for bit."""

from __future__ import annotations

import math

from safetensors.torch import load_file

from rayrl.driver import train
from rayrl.tracking import read_metrics

NO_EVAL = {"eval": {"interval": 0, "at_start": False}, "ckpt": {"interval": 0, "at_end": False}}



def run(small_config, out, **extra):
    result = train(small_config(out, **{**NO_EVAL, **extra}))
    return read_metrics(result.output_dir / "metrics.jsonl")


def test_dapo_resamples_tied_groups_and_penalises_overlong_completions(ray_cluster, small_config, base_model_path,
                                                                       tmp_path):
    """From the warm-started small model most groups of 4 are all wrong (tied): DAPO rolls out new examples
    until a step's 8 prompts carry signal, or 3 rounds pass; at most 8 informative groups train."""
    metrics = run(small_config, tmp_path, max_steps=3, algorithm={"name": "dapo", "overlong_buffer": 2})
    prompts, group = 8, 4
    for m in metrics:
        assert 0 < m["dynamic_sampling/informative_groups"] <= prompts
        assert m["train_samples"] == m["dynamic_sampling/informative_groups"] * group
        assert m["dynamic_sampling/extra_groups"] == 0 or m["dynamic_sampling/rounds"] >= 1
        assert m["overlong_penalty_mean"] >= 0 and math.isfinite(m["loss"])
    assert sum(m["dynamic_sampling/extra_groups"] for m in metrics) > 0


def test_dapo_with_dynamic_sampling_resumes_bit_for_bit(ray_cluster, small_config, base_model_path, tmp_path):
    """The extra examples come from a stream of their own whose position is checkpointed."""
    dapo = {"algorithm": {"name": "dapo"}, "ckpt": {"interval": 0, "at_end": True, "keep": 0},
            "eval": {"interval": 0, "at_start": False}}
    straight = train(small_config(tmp_path / "straight", max_steps=3, **dapo))
    train(small_config(tmp_path / "stopped", max_steps=2, **dapo))
    resumed = train(small_config(tmp_path / "stopped", max_steps=3, **{**dapo, "ckpt": {**dapo["ckpt"], "resume_step": -1}}))
    a = read_metrics(straight.output_dir / "metrics.jsonl")
    b = read_metrics(resumed.output_dir / "metrics.jsonl")
    timing = ("step_time_s", "tokens_per_s", "time/")
    assert [{k: v for k, v in m.items() if not k.startswith(timing)} for m in a] == [
        {k: v for k, v in m.items() if not k.startswith(timing)} for m in b
    ]
    wa = load_file(tmp_path / "straight" / "checkpoints" / "step_3" / "model.safetensors")
    wb = load_file(tmp_path / "stopped" / "checkpoints" / "step_3" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_kl_in_the_loss_starts_at_zero_and_is_reported(ray_cluster, small_config, base_model_path, tmp_path):
    """The reference is the run's base model (sharded over 2 FSDP ranks like the policy): the first update
    sees the policy equal to it, so KL 0; after updates KL is positive, finite, and reported every step."""
    metrics = run(small_config, tmp_path, max_steps=4, learner={"workers": 2},
                  algorithm={"name": "gspo", "kl_coef": 0.1, "kl_estimator": "k3"})
    kls = [m["kl_ref"] for m in metrics if "kl_ref" in m]
    assert len(kls) == sum("loss" in m for m in metrics) >= 3
    assert kls[0] < 1e-6 and 0 < kls[-1] < 10, kls


def test_kl_in_the_reward_shapes_advantages_from_the_samplers_log_probs(ray_cluster, small_config, base_model_path,
                                                                        tmp_path):
    metrics = run(small_config, tmp_path, max_steps=3,
                  algorithm={"name": "dr_grpo", "kl_coef": 0.05, "kl_in": "reward", "kl_estimator": "k1", "tis_cap": 2.0})
    kls = [m["kl_ref"] for m in metrics]
    assert len(kls) == 3 and abs(kls[0]) < 1e-4 and kls[-1] != kls[0], kls  # the replica serves the base at step 1
    # with a KL in the reward, equal task rewards no longer tie exactly: more groups train than tie
    assert all(math.isfinite(m["loss"]) for m in metrics if "loss" in m)
