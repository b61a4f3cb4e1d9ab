"""The seeds' two recipes run from their TOML files (shortened): an SFT stage, then RL with LoRA (PPO with a
value head on SAT + ABD + DED; GRPO with a custom reward on OpenSpiel), evaluation per task, the export."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from rayrl.config.loading import load_config
from rayrl.driver import train
from rayrl.tracking import read_metrics
from test_experiments import ROOT

SHORT = {
    "max_steps": "2", "sft.max_steps": "4", "sft.eval_interval": "0", "eval.interval": "2", "eval.num_examples": "8",
    "ckpt.interval": "0", "log.progress": "false", "inference.cpus_per_replica": "0.5",
    "learner.cpus_per_worker": "0.5", "rollout.cpus_per_worker": "0.5",
}


def short_run(name: str, out: Path, model_cache, **extra):
    cfg = load_config(ROOT / "experiments" / name, {**SHORT, "output_dir": str(out), "model.cache_dir": str(model_cache),
                                                    **extra})
    result = train(cfg)
    return cfg, [m for m in read_metrics(result.output_dir / "metrics.jsonl") if m["step"] > 0]


@pytest.mark.slow
def test_affine_ppo_recipe(ray_cluster, model_cache, tmp_path):
    """SFT stage -> PPO with GAE and LoRA on SAT + ABD + DED: per-task rewards and sandbox counts, the value
    head and the adapter in the checkpoint; a resumed run reuses the finished SFT stage."""
    cfg, steps = short_run("affine_ppo.toml", tmp_path / "run", model_cache,
                           **{f"env.{i}.args.num_train": "300" for i in range(3)},
                           **{f"env.{i}.args.num_eval": "8" for i in range(3)})
    assert (tmp_path / "run" / "sft" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "sft" / "metrics.png").is_file()
    assert [m["step"] for m in steps] == [1, 2]
    for env in ("affine:sat", "affine:abd", "affine:ded"):
        assert f"eval/{env}/reward_mean" in steps[-1] and f"reward/{env}/reward_mean" in steps[-1]
    for env in ("affine:abd", "affine:ded"):
        assert f"reward/{env}/sandbox_timeout" in steps[-1] and f"reward/{env}/parsed" in steps[-1]
    assert "value/loss" in steps[-1]
    files = {p.name for p in (tmp_path / "run" / "checkpoints" / "step_2").iterdir()}
    assert {"adapter_model.safetensors", "value_head.safetensors"} <= files and "model.safetensors" not in files
    sft_mtime = (tmp_path / "run" / "sft" / "model" / "model.safetensors").stat().st_mtime
    _, more = short_run("affine_ppo.toml", tmp_path / "run", model_cache, max_steps="3", **{"ckpt.resume_step": "-1"},
                        **{f"env.{i}.args.num_train": "300" for i in range(3)},
                        **{f"env.{i}.args.num_eval": "8" for i in range(3)})
    assert [m["step"] for m in more][-1] == 3
    assert (tmp_path / "run" / "sft" / "model" / "model.safetensors").stat().st_mtime == sft_mtime  # reused


@pytest.mark.slow
def test_openspiel_grpo_lora_recipe(ray_cluster, model_cache, tmp_path):
    """SFT stage -> GRPO with LoRA and the custom tactics reward -> the merged export loads."""
    _, steps = short_run("openspiel_grpo_lora.toml", tmp_path / "run", model_cache,
                         **{"env.0.args.num_tasks_per_case": "200", "env.0.args.eval_tasks_per_case": "20"})
    assert [m["step"] for m in steps] == [1, 2]
    assert "reward/openspiel/tactic" in steps[-1] and "eval/openspiel/legal" in steps[-1]
    export = tmp_path / "run" / "export"
    assert (export / "model.safetensors").is_file() and not (export / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(export)
