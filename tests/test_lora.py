"""LoRA through peft: only the adapter trains, is checkpointed and is published; replicas merge it into their
base weights and then serve what the learner's adapted model computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rayrl.actors.learner import LearnerGroup
from rayrl.algorithms.grpo import TrainSample
from rayrl.driver import train
from rayrl.engines.transformers_engine import TransformersEngine
from rayrl.engines.weights import flatten_state_dict, merge_adapter
from rayrl.models.export import export_model
from rayrl.tracking import read_metrics

LORA = {"enabled": True, "rank": 4, "alpha": 8.0, "dropout": 0.0}


def samples(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [TrainSample(rng.integers(3, 20, 8).astype(np.int64), 4, np.full(4, -2.0, np.float32), float(rng.normal()))
            for _ in range(n)]


def test_merge_adapter_by_hand():
    w0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # [out 3, in 2]
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [0.0], [-1.0]])  # rank 1: B [3, 1] @ A [1, 2]
    bundle = flatten_state_dict({"m.lora_A": a, "m.lora_B": b}, version=1, adapter_scaling={"m": 0.5})
    merged = merge_adapter({"m.weight": w0}, bundle)
    assert merged["m.weight"].tolist() == [[1.5, 1.0], [0.0, 1.0], [1.5, 1.0]]


@pytest.mark.parametrize("workers", [0, 2])
def test_only_the_adapter_trains_and_travels_and_replicas_serve_the_adapted_model(
    ray_cluster, small_config, tiny_model_path, workers
):
    cfg = small_config(learner={"workers": workers, "micro_batch_size": 4}, lora=LORA, optim={"lr": 1e-2})
    group = LearnerGroup(cfg, tiny_model_path, namespace=f"test-lora-{workers}")
    try:
        base = {k: v.clone() for k, v in group.full_state_dict().items()}
        metrics = group.update(samples())
        after = group.full_state_dict()
        bundle = group.publish_weights(version=1)
        bundle = bundle if not hasattr(bundle, "hex") else ray_cluster.get(bundle)
        if group.local is not None:
            adapted = group.local.model.eval()
            ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
            with torch.no_grad():
                learner_logits = adapted(input_ids=ids).logits
    finally:
        group.shutdown()
    assert metrics["grad_norm"] > 0
    lora_keys = [k for k in after if "lora_" in k]
    base_keys = [k for k in after if "lora_" not in k]
    assert lora_keys and all(torch.equal(after[k], base[k]) for k in base_keys)  # the base never moves
    assert any(not torch.equal(after[k], base[k]) for k in lora_keys if "lora_B" in k)  # B starts at 0, then moves
    # publication moves the adapter's bytes only: 2 x rank x (in + out) per adapted module, not the model
    assert bundle.adapter_scaling and set(bundle.adapter_scaling.values()) == {2.0}
    factor_bytes = sum(after[k].numel() * 4 for k in lora_keys)
    assert bundle.nbytes < 1.1 * factor_bytes + 64 * len(lora_keys)
    assert bundle.nbytes < 0.2 * sum(v.numel() * 4 for k, v in after.items() if "lora_" not in k)
    engine = TransformersEngine.from_pretrained(tiny_model_path)
    engine.load_weights(bundle)
    engine.load_weights(bundle)  # merging twice starts from the base again, not from the merged weights
    if workers == 0:
        with torch.no_grad():
            served = engine.model(input_ids=ids).logits
        torch.testing.assert_close(served, learner_logits, rtol=1e-5, atol=1e-5)


def test_a_lora_run_checkpoints_the_adapter_resumes_bit_for_bit_and_exports_merged(
    ray_cluster, small_config, base_model_path, tmp_path
):
    """Three steps straight against two plus a resume; a KL to the reference (the base: the adapter switched
    off) starts at 0; the checkpoint holds the adapter, not the model; export merges it."""
    common = {"lora": LORA, "optim": {"lr": 3e-3}, "eval": {"interval": 0, "at_start": False},
              "algorithm": {"kl_coef": 0.05}}
    ckpt = {"interval": 0, "at_end": True, "keep": 0}
    straight = train(small_config(tmp_path / "straight", max_steps=3, ckpt=ckpt, **common))
    train(small_config(tmp_path / "stopped", max_steps=2, ckpt=ckpt, **common))
    resumed = train(small_config(tmp_path / "stopped", max_steps=3, ckpt={**ckpt, "resume_step": -1}, **common))
    a = read_metrics(straight.output_dir / "metrics.jsonl")
    b = read_metrics(resumed.output_dir / "metrics.jsonl")
    timing = ("step_time_s", "tokens_per_s", "time/")
    assert [{k: v for k, v in m.items() if not k.startswith(timing)} for m in a] == [
        {k: v for k, v in m.items() if not k.startswith(timing)} for m in b
    ]
    assert a[0]["kl_ref"] < 1e-6 and 0 < a[-1]["kl_ref"] < 10
    step3 = tmp_path / "straight" / "checkpoints" / "step_3"
    files = {p.name for p in step3.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files
    assert "model.safetensors" not in files
    assert json.loads((step3 / "adapter_config.json").read_text())["r"] == 4
    from safetensors.torch import load_file

    wa, wb = load_file(step3 / "adapter_model.safetensors"), load_file(
        tmp_path / "stopped" / "checkpoints" / "step_3" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # export merges the adapter into its base: the result computes what base + adapter computes
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export_model(str(tmp_path / "straight"), tmp_path / "hf")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_path), step3).eval()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())

    # a replica given the LoRA checkpoint (rayrl eval does this) serves the merged model
    from rayrl.actors.inference import InferenceActor
    from rayrl.engines.base import EngineSpec, SamplingParams

    actor = ray_cluster.remote(InferenceActor).options(num_cpus=0.5).remote(str(step3), EngineSpec("transformers", "", threads=1))
    try:
        served = ray_cluster.get(actor.generate.remote([[3, 4, 5, 6, 7]], SamplingParams(4, 0.0, 1.0, 0)))
    finally:
        ray_cluster.kill(actor)
    expected = merged.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))[0, 5:]
    assert served.completions[0].token_ids == expected.tolist()[: len(served.completions[0].token_ids)]

    # rayrl eval takes a LoRA run's checkpoints (adapter folders) as they are
    from rayrl.cli import main

    assert main(["eval", str(tmp_path / "straight"), "--steps", "latest", "--num-examples", "8"]) == 0
    assert (tmp_path / "straight" / "eval" / "step_3" / "summary.json").is_file()


def test_an_adapter_replicas_cannot_merge_is_refused_up_front(small_config, tiny_model_path):
    """An embedding adapter would never reach the replicas (they merge B @ A into linear layers): refused."""
    from rayrl.errors import ConfigError

    cfg = small_config(learner={"workers": 0}, lora={**LORA, "target_modules": ["q_proj", "embed_tokens"]})
    with pytest.raises(ConfigError, match=r"lora: adapter tensors of a kind replicas cannot merge .*lora_embedding_A.*"
                                          r"lora.target_modules"):
        LearnerGroup(cfg, tiny_model_path, namespace="test-lora-embedding")
