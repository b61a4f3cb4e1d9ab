"""Bounded staleness: k = 1 overlaps generation with training, never exceeds k, still learns."""

from __future__ import annotations

import pytest
import torch

from rayrl.algorithms.sampling import token_logprobs
from rayrl.driver import train
from rayrl.engines.base import EngineSpec, SamplingParams
from rayrl.engines.weights import flatten_state_dict
from rayrl.tracking import read_metrics


@pytest.mark.slow
def test_k1_overlaps_stays_within_staleness_and_learns(ray_cluster, small_config, base_model_path, tmp_path):
    """k = 1 on the learning test's run (tests/test_train.py, same margin): generation runs one version
    behind, never more, nothing is dropped, and held-out reward still rises."""
    cfg = small_config(
        tmp_path, max_steps=100, batch_size=256, rollouts_per_example=8, algorithm={"max_off_policy_steps": 1},
        eval={"interval": 25, "num_examples": 1000}, ckpt={"interval": 0},
    )
    metrics = read_metrics(train(cfg).output_dir / "metrics.jsonl")
    steps = metrics[1:]
    assert max(m["staleness/max"] for m in steps) <= 1
    assert sum(m.get("staleness/hist_1", 0) for m in steps) > 0  # generation really ran one version behind
    assert all(m["staleness/dropped_samples"] == 0 for m in steps)
    evals = [m["eval_reward_mean"] for m in metrics if "eval_reward_mean" in m]
    assert (evals[-1] + evals[-2]) / 2 >= evals[0] + 0.04, evals


def test_a_replica_never_mixes_versions_within_a_sequence(ray_cluster, base_model_path):
    """Weights published while a long generate call runs take effect only after it: every completion's
    log-probs match one version's model exactly, the version the call reports."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrl.actors.inference import InferenceActor

    ray = ray_cluster
    replica = ray.remote(InferenceActor).options(num_cpus=0.5).remote(base_model_path, EngineSpec("transformers", "", threads=1))
    model = AutoModelForCausalLM.from_pretrained(base_model_path)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    perturbed = {k: v + 0.05 * torch.randn_like(v) for k, v in original.items() if k != "lm_head.weight"}
    tok = AutoTokenizer.from_pretrained(base_model_path)
    prompts = [tok(f"{i}+{i}=").input_ids for i in range(64)] * 4
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=3)
    gen = replica.generate.remote(prompts, params)
    load = replica.load_weights.remote(ray.put(flatten_state_dict(perturbed, version=1)))
    after = replica.generate.remote(prompts[:8], params)
    results = ray.get([gen, after])
    assert ray.get(load) == 1
    assert [r.version for r in results] == [0, 1]
    weights = {0: original, 1: {**perturbed, "lm_head.weight": perturbed["model.embed_tokens.weight"]}}
    for result, batch in zip(results, (prompts, prompts[:8])):
        model.load_state_dict(weights[result.version])
        for prompt, completion in list(zip(batch, result.completions))[:16]:
            ids = torch.tensor([prompt + completion.token_ids])
            with torch.no_grad():
                lp = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0, len(prompt) - 1 :]
            torch.testing.assert_close(lp, torch.tensor(completion.logprobs), rtol=1e-4, atol=1e-4)
    ray.kill(replica)
