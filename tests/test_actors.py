"""Real actors on a real local Ray cluster: weight publication and the FSDP2 learner group."""

from __future__ import annotations

import numpy as np
import torch

from rayrl.actors.learner import LearnerGroup
from rayrl.algorithms.grpo import TrainSample
from rayrl.algorithms.sampling import token_logprobs
from rayrl.engines.base import EngineSpec, SamplingParams


def random_samples(n: int, seed: int = 0) -> list[TrainSample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt, completion = int(rng.integers(3, 6)), int(rng.integers(1, 4))
        ids = rng.integers(4, 90, prompt + completion).astype(np.int64)
        old = np.log(rng.uniform(0.05, 0.9, completion)).astype(np.float32)
        out.append(TrainSample(ids, prompt, old, float(rng.normal())))
    return out


def make_replicas(ray, path: str, count: int):
    from rayrl.actors.inference import InferenceActor

    cls = ray.remote(InferenceActor)
    return [cls.options(num_cpus=0.5).remote(path, EngineSpec("transformers", "", threads=1, max_batch_size=64)) for _ in range(count)]


def test_published_weights_equal_the_learners_bit_for_bit(ray_cluster, small_config, base_model_path):
    ray = ray_cluster
    cfg = small_config(learner={"workers": 2})
    group = LearnerGroup(cfg, base_model_path, namespace="test-publish")
    replicas = make_replicas(ray, base_model_path, 2)
    try:
        base = ray.get(replicas[0].state_dict.remote())
        group.update(random_samples(12))
        ref = group.publish_weights(version=1)
        assert ray.get([r.load_weights.remote(ref) for r in replicas]) == [1, 1]
        learner_sd = group.full_state_dict()
        # the update really moved the weights: the replicas serve new values, not the base model's
        moved = [name for name, tensor in learner_sd.items() if not torch.equal(tensor, base[name])]
        assert len(moved) >= len(learner_sd) // 2 and "model.embed_tokens.weight" in moved, moved
        for replica_sd in ray.get([r.state_dict.remote() for r in replicas]):
            for name, tensor in learner_sd.items():
                assert torch.equal(replica_sd[name], tensor), name
            # tied output layer follows the embedding
            assert torch.equal(replica_sd["lm_head.weight"], learner_sd["model.embed_tokens.weight"])
    finally:
        group.shutdown()
        for r in replicas:
            ray.kill(r)


def test_replica_logprobs_match_the_learners_forward(ray_cluster, base_model_path):
    """Sampling log-probs equal a teacher-forced forward pass: on-policy ratios start at 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ray = ray_cluster
    [replica] = make_replicas(ray, base_model_path, 1)
    tok = AutoTokenizer.from_pretrained(base_model_path)
    prompts = [tok("3+4=").input_ids, tok("12+5=").input_ids]
    result = ray.get(replica.generate.remote(prompts, SamplingParams(max_tokens=3, temperature=0.7, seed=5)))
    again = ray.get(replica.generate.remote(prompts, SamplingParams(max_tokens=3, temperature=0.7, seed=5)))
    assert [c.token_ids for c in result.completions] == [c.token_ids for c in again.completions]
    model = AutoModelForCausalLM.from_pretrained(base_model_path)
    for prompt, completion in zip(prompts, result.completions):
        ids = torch.tensor([prompt + completion.token_ids])
        logits = model(input_ids=ids).logits[:, :-1]
        lp = token_logprobs(logits, ids[:, 1:], temperature=0.7)[0, len(prompt) - 1 :]
        torch.testing.assert_close(lp, torch.tensor(completion.logprobs), rtol=1e-4, atol=1e-5)
    ray.kill(replica)
