"""The learner's side of the step on the real tiny model: the sampling distribution the learner scores
with, hand-computed losses through the LearnerGroup (in process with ``learner.workers = 0``, and over
two FSDP2 ranks with micro-batches), and a whole GRPO step in process, without Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayrl.actors.learner import LearnerGroup
from rayrl.algorithms.grpo import Rollout, TrainSample, build_train_samples
from rayrl.algorithms.sampling import sampling_logprobs, token_logprobs
from rayrl.engines.base import SamplingParams
from rayrl.engines.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_path).eval(), AutoTokenizer.from_pretrained(tiny_model_path)


def teacher_forced(model, prompt: list[int], completion: list[int], temperature: float, top_p: float) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return token_logprobs(logits, ids[:, 1:], temperature, top_p)[0, len(prompt) - 1 :]


def test_the_nucleus_renormalises_and_always_keeps_the_sampled_token():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    logp = sampling_logprobs(logits, temperature=1.0, top_p=0.7)  # 0.5 + 0.3 reach 0.7: {0, 1}
    torch.testing.assert_close(logp.exp(), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    kept = sampling_logprobs(logits, temperature=1.0, top_p=0.7, keep=torch.tensor([3]))
    torch.testing.assert_close(kept.exp(), torch.tensor([[0.5, 0.3, 0.0, 0.05]]) / 0.85)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 0.9), (0.7, 0.8), (1.0, 1.0)])
def test_learner_logprobs_equal_the_samplers_with_top_p(model_and_tokenizer, temperature, top_p):
    """The learner scores tokens under the distribution the engine sampled them from (temperature and
    nucleus): on-policy importance ratios start at 1. With the learner ignoring top_p, a random tiny
    model's ratios start near 0.9 and the clipped loss drops gradient."""
    model, tok = model_and_tokenizer
    engine = TransformersEngine(model, tok.eos_token_id, tok.pad_token_id)
    prompts = [tok(f"{a}+{a}=").input_ids for a in range(16)]
    completions = engine.generate(prompts, SamplingParams(max_tokens=6, temperature=temperature, top_p=top_p, seed=1))
    for prompt, c in zip(prompts, completions):
        learner = teacher_forced(model, prompt, c.token_ids, temperature, top_p)
        torch.testing.assert_close(learner, torch.tensor(c.logprobs), rtol=1e-4, atol=1e-4)


def samples_with_known_ratios(model, tok) -> tuple[list[TrainSample], float, int]:
    """Samples whose behaviour log-probs are the model's minus log r, for hand-picked ratios r: the loss
    the learner must report is then known by hand, whatever the model's own log-probs are."""
    ratios = [[1.5, 0.5], [1.1, 2.0, 0.7], [0.9], [1.3, 1.0, 0.6], [0.85, 1.25], [1.05]]
    advantages = [1.0, -2.0, 0.5, -1.0, 2.0, -0.5]
    masks = [None, None, None, [1, 0, 1], None, None]  # the third token of sample 3 is the environment's
    samples, total, tokens = [], 0.0, 0
    for i, (rs, adv, mask) in enumerate(zip(ratios, advantages, masks)):
        prompt = tok(f"{i}+{i}=").input_ids
        completion = [tok.convert_tokens_to_ids(str((i + j) % 10)) for j in range(len(rs))]
        current = teacher_forced(model, prompt, completion, 1.0, 1.0).numpy()
        old = (current - np.log(rs)).astype(np.float32)
        samples.append(TrainSample(np.array(prompt + completion), len(prompt), old, adv,
                                   loss_mask=None if mask is None else np.array(mask, np.int8)))
        for j, r in enumerate(rs):
            if mask is None or mask[j]:
                total += -min(r * adv, min(max(r, 0.8), 1.2) * adv)
                tokens += 1
    return samples, total / tokens, tokens


@pytest.mark.parametrize("workers, micro_batch_size", [(0, 64), (0, 2)])
def test_local_learner_loss_equals_the_hand_computed_token_mean(small_config, tiny_model_path, model_and_tokenizer,
                                                                workers, micro_batch_size):
    model, tok = model_and_tokenizer
    samples, expected, _ = samples_with_known_ratios(model, tok)
    cfg = small_config(learner={"workers": workers, "micro_batch_size": micro_batch_size})
    group = LearnerGroup(cfg, tiny_model_path, namespace="test-local")
    try:
        assert group.local is not None and group.world_size == 1
        metrics = group.update(samples)
    finally:
        group.shutdown()
    assert metrics["loss"] == pytest.approx(expected, rel=1e-4)
    # clipped where the clipped term is the smaller: r = 1.5 (A > 0), 0.7 and 0.6 (A < 0), 1.25 (A > 0); of 11
    assert metrics["clip_fraction"] == pytest.approx(4 / 11)


def test_two_fsdp2_ranks_with_micro_batches_make_the_in_process_update(ray_cluster, small_config, tiny_model_path,
                                                                        model_and_tokenizer):
    """Each rank divides its token sum by the whole batch's token count, and FSDP's gradient average is
    undone: over 2 ranks x 2 micro-batches the loss is the batch's token mean, as by hand, and the updated
    weights equal those of one in-process learner taking the whole batch at once."""
    model, tok = model_and_tokenizer
    samples, expected, _ = samples_with_known_ratios(model, tok)
    results = {}
    for workers, micro in ((0, 64), (2, 2)):
        group = LearnerGroup(small_config(learner={"workers": workers, "micro_batch_size": micro}), tiny_model_path,
                             f"test-ranks-{workers}")
        try:
            results[workers] = group.update(samples), group.full_state_dict()
        finally:
            group.shutdown()
    (local, local_sd), (ranks, ranks_sd) = results[0], results[2]
    assert ranks["loss"] == pytest.approx(expected, rel=1e-4) and local["loss"] == pytest.approx(expected, rel=1e-4)
    assert ranks["grad_norm"] == pytest.approx(local["grad_norm"], rel=1e-4)
    assert local_sd.keys() == ranks_sd.keys()
    for name in local_sd:
        torch.testing.assert_close(ranks_sd[name], local_sd[name], rtol=1e-4, atol=1e-6)


def test_a_whole_grpo_step_in_process_is_on_policy_with_top_p(small_config, tiny_model_path, model_and_tokenizer):
    """Generate with top_p = 0.9, build the batch, update a local learner: the first update sees ratios of
    exactly 1 (mismatch 0, nothing clipped), and the weights move towards the rewarded completions."""
    model, tok = model_and_tokenizer
    engine = TransformersEngine(model, tok.eos_token_id, tok.pad_token_id)
    prompt = tok("3+4=").input_ids
    completions = engine.generate([prompt] * 8, SamplingParams(max_tokens=4, temperature=1.0, top_p=0.9, seed=3))
    groups = [[Rollout(0, "3+4", 0, prompt, c.token_ids, c.logprobs, float(c.token_ids[0] % 2), 0, c.finish_reason)
               for c in completions]]
    samples, stats = build_train_samples(groups)
    assert 0 < len(samples) == 8, "the rewards happened to tie: pick another seed"
    cfg = small_config(learner={"workers": 0}, sampling={"max_tokens": 4, "temperature": 1.0, "top_p": 0.9})
    group = LearnerGroup(cfg, tiny_model_path, namespace="test-step")
    try:
        before = {k: v.clone() for k, v in group.full_state_dict().items()}
        metrics = group.update(samples)
        after = group.full_state_dict()
    finally:
        group.shutdown()
    assert metrics["mismatch_kl"] < 1e-8 and metrics["clip_fraction"] == 0.0
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert "model.embed_tokens.weight" in moved and len(moved) >= len(before) // 2


def test_each_batch_samples_from_its_own_seed(model_and_tokenizer):
    """Common random numbers for the promotion gate: how long one batch ran never shifts the next batch's noise,
    so the second batch samples exactly what it samples alone with its own seed."""
    model, tok = model_and_tokenizer
    engine = TransformersEngine(model, tok.eos_token_id, tok.pad_token_id, max_batch_size=4)
    prompts = [tok.encode(f"{a}+{b}=") for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1), (2, 3), (4, 5)]]
    params = SamplingParams(5, 1.0, 1.0, 123)
    together = engine.generate(prompts, params)
    alone = engine.generate(prompts[4:], SamplingParams(5, 1.0, 1.0, 123 + 4))
    assert [c.token_ids for c in together[4:]] == [c.token_ids for c in alone]
    first = engine.generate(prompts[:4], params)
    assert [c.token_ids for c in together[:4]] == [c.token_ids for c in first]
