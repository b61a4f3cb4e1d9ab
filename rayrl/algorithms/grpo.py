"""One GRPO step, top to bottom, as Ray-free functions.

    rollouts (groups of one prompt's completions)
      1. drop_stale            samples more than k policy versions behind the learner are dropped
      2. build_train_samples   group-relative advantages; tied groups (no signal) are dropped
      3. loss_normalizer       the batch's trained tokens: every rank divides by the same number
      4. shard_evenly          equal sample counts per learner rank (zero-weight padding)
      5. collate               right-padded tensors; loss positions = the model's completion tokens
      6. policy_loss           forward pass, log-probs under the sampling distribution, clipped loss

The driver runs 1-4, each learner rank 5-6 per micro-batch. Nothing here imports Ray: the step runs
in process with ``learner.workers = 0`` and every piece is tested on hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rayrl.algorithms.sampling import token_logprobs


@dataclass
class Rollout:
    """One scored episode: a single completion, or a multi-turn interaction."""

    env_index: int
    example_id: str
    group: int  # index of its task in the request: episodes of one example share a group
    prompt_ids: list[int]
    completion_ids: list[int]  # every token after the prompt: the model's and, in multi-turn, the env's
    logprobs: list[float]  # behaviour log-probs of completion_ids (0.0 at environment tokens)
    reward: float
    version: int  # oldest policy version among the episode's model turns
    finish_reason: str
    completion: str = field(repr=False, default="")
    completion_mask: list[int] | None = field(repr=False, default=None)  # 1 = model token; None = all model
    metrics: dict[str, float] = field(default_factory=dict)  # the environment's named metrics
    turns: int = 1
    reward_error: str = ""  # why the reward function failed (reward 0), else ""


@dataclass
class TrainSample:
    """One completion as the learner sees it."""

    token_ids: np.ndarray  # prompt + completion, int64 [T]
    completion_start: int  # index of the first completion token in token_ids
    old_logprobs: np.ndarray  # behaviour log-probs of the completion tokens, float32 [T - completion_start]
    advantage: float
    weight: float = 1.0  # 0 for padding samples that only keep the ranks in step
    # 1 where the completion token is the model's (trained on), 0 where an environment wrote it
    # (multi-turn); None = every completion token is the model's.
    loss_mask: np.ndarray | None = None

    def loss_tokens(self) -> int:
        """How many tokens this sample trains on (environment tokens excluded)."""
        return len(self.old_logprobs) if self.loss_mask is None else int(np.sum(self.loss_mask))


# ---- 1. staleness --------------------------------------------------------------------------------
def drop_stale(
    groups: list[list[Rollout]], version: int, max_off_policy_steps: int
) -> tuple[list[list[Rollout]], dict[str, float]]:
    """Drop every sample generated more than ``max_off_policy_steps`` versions before ``version``.

    Staleness is decided per sample (a group can span replicas that held different versions); a group
    keeps its fresh samples, and the advantages are then computed over those. Returns the non-empty
    groups and staleness metrics: mean, max, dropped count, histogram ``staleness/hist_<versions behind>``.
    """
    staleness = [version - r.version for g in groups for r in g]
    kept = [[r for r in g if version - r.version <= max_off_policy_steps] for g in groups]
    kept = [g for g in kept if g]
    hist = np.bincount(staleness) if staleness else np.zeros(1, dtype=int)
    return kept, {
        "staleness/mean": float(np.mean(staleness)) if staleness else 0.0,
        "staleness/max": int(max(staleness, default=0)),
        "staleness/dropped_samples": len(staleness) - sum(len(g) for g in kept),
        **{f"staleness/hist_{k}": int(n) for k, n in enumerate(hist)},
    }


# ---- 2. advantages -------------------------------------------------------------------------------
TIE_RTOL = 1e-9


def rewards_tied(rewards: np.ndarray) -> bool:
    """Whether a group's rewards [n] are all equal, up to ``1e-9 * max(1, |mean|)``: such a group (or a
    group of one) has no signal. Exact ``advantages == 0`` is not the test: equal fractional rewards
    leave residues of 1e-16 that would dilute the batch's gradient through the normaliser."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size < 2:
        return True
    return float(rewards.max() - rewards.min()) <= TIE_RTOL * max(1.0, abs(float(rewards.mean())))


def group_advantages(rewards: np.ndarray, std_normalize: bool = False, eps: float = 1e-6) -> np.ndarray:
    """Advantages of ``rewards`` [..., n] (the last axis is one group): reward minus the group's mean,
    divided by the group's std (+ ``eps``) with ``std_normalize``. Same shape out, float32."""
    rewards = np.asarray(rewards, dtype=np.float64)
    centred = rewards - rewards.mean(axis=-1, keepdims=True)
    if std_normalize:
        centred = centred / (rewards.std(axis=-1, keepdims=True) + eps)
    return centred.astype(np.float32)


def build_train_samples(
    groups: list[list[Rollout]], std_normalize: bool = False
) -> tuple[list[TrainSample], dict[str, float]]:
    """Group-relative advantages over each group's samples; tied groups carry no signal and are dropped.

    Returns the samples to train on and the batch's statistics (over every given rollout)."""
    flat = [r for g in groups for r in g]
    if not flat:  # every sample was too stale: nothing to learn from this step
        return [], {"reward_mean": math.nan, "tokens": 0.0, "seq_len_mean": 0.0, "train_samples": 0,
                    "train_tokens": 0}
    samples: list[TrainSample] = []
    tied = 0
    for group in groups:
        rewards = np.array([r.reward for r in group], dtype=np.float64)
        if rewards_tied(rewards):
            tied += 1
            continue
        for rollout, advantage in zip(group, group_advantages(rewards, std_normalize)):
            samples.append(to_train_sample(rollout, float(advantage)))
    rewards = np.array([r.reward for r in flat])
    seq_lens = [len(r.prompt_ids) + len(r.completion_ids) for r in flat]
    return samples, {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "tokens": float(sum(seq_lens)),
        "seq_len_mean": float(np.mean(seq_lens)),
        "completion_len_mean": float(np.mean([len(r.completion_ids) for r in flat])),
        "truncated_fraction": float(np.mean([r.finish_reason == "length" for r in flat])),
        "zero_advantage_group_fraction": tied / len(groups),
        "train_samples": len(samples),
        "train_tokens": int(sum(len(s.token_ids) for s in samples)),
        "turns_mean": float(np.mean([r.turns for r in flat])),
    }


def to_train_sample(rollout: Rollout, advantage: float) -> TrainSample:
    """The learner's view of a rollout. Single-turn rollouts carry no loss mask (all tokens are the
    model's, the common case costs nothing); multi-turn ones mask the environment's tokens out."""
    mask = rollout.completion_mask
    return TrainSample(
        token_ids=np.array(rollout.prompt_ids + rollout.completion_ids, dtype=np.int64),
        completion_start=len(rollout.prompt_ids),
        old_logprobs=np.array(rollout.logprobs, dtype=np.float32),
        advantage=advantage,
        loss_mask=None if mask is None or all(mask) else np.array(mask, dtype=np.int8),
    )


# ---- 3. normaliser, 4. shards --------------------------------------------------------------------
def loss_normalizer(samples: list[TrainSample]) -> float:
    """The batch's trained tokens (at least 1): each rank's loss is its token sum divided by this, so
    the ranks' gradients add up to the token mean over the whole batch."""
    return max(1.0, float(sum(s.weight * s.loss_tokens() for s in samples)))


def padding_sample() -> TrainSample:
    """A zero-weight sample: trains on nothing, keeps a rank's micro-batch count equal to the others'."""
    return TrainSample(np.array([0, 0], dtype=np.int64), 1, np.zeros(1, np.float32), 0.0, weight=0.0)


def shard_evenly(samples: list[TrainSample], world_size: int) -> list[list[TrainSample]]:
    """Round-robin ``samples`` over ranks, padded with zero-weight samples to equal counts.

    Equal counts give every rank the same number of micro-batches, so FSDP's collectives line up.
    """
    per_rank = max(1, math.ceil(len(samples) / world_size))
    shards = [samples[r::world_size] for r in range(world_size)]
    return [s + [padding_sample() for _ in range(per_rank - len(s))] for s in shards]


# ---- 5. collate ----------------------------------------------------------------------------------
def collate(samples: list[TrainSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad samples into tensors [B, W]; ``loss_mask``, ``old_logprobs`` are [B, W - 1], aligned
    with the targets ``input_ids[:, 1:]`` (position t predicts token t + 1); ``advantages`` [B]."""
    width = max(len(s.token_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width - 1))
    old = torch.zeros((len(samples), width - 1))
    for row, s in enumerate(samples):
        n = len(s.token_ids)
        ids[row, :n] = torch.tensor(s.token_ids)  # copy: object-store arrays are read-only
        mask[row, s.completion_start - 1 : n - 1] = (
            s.weight if s.loss_mask is None else s.weight * torch.from_numpy(np.asarray(s.loss_mask, np.float32))
        )
        old[row, s.completion_start - 1 : n - 1] = torch.tensor(s.old_logprobs)
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return {"input_ids": ids, "loss_mask": mask, "old_logprobs": old, "advantages": adv}


# ---- 6. loss -------------------------------------------------------------------------------------
def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-style clipped surrogate summed over masked tokens and divided by ``normalizer``.

    Shapes: ``logprobs``, ``old_logprobs`` (behaviour policy), ``mask`` [B, T]; ``advantages`` [B]
    (one per sequence, broadcast over its tokens). Returns the loss and token-summed statistics
    (``clipped``, ``mismatch_kl``, ``tokens``) for logging.
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    loss = (per_token * mask).sum() / normalizer
    with torch.no_grad():
        stats = {
            "clipped": ((clipped < unclipped).to(mask.dtype) * mask).sum(),
            # k3 estimator of KL(behaviour || current) from behaviour samples: r - 1 - log r >= 0.
            "mismatch_kl": ((ratio - 1 - log_ratio) * mask).sum(),
            "tokens": mask.sum(),
        }
    return loss, stats


def policy_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    temperature: float,
    top_p: float,
    clip_low: float,
    clip_high: float,
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward ``batch`` (from :func:`collate`) through the causal LM ``model`` and return the clipped
    policy loss, the completion tokens scored under the sampling distribution the engine drew them
    from (same temperature and nucleus), so on-policy ratios start at 1."""
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    # Right padding and causal attention: real tokens never see the padding, so no mask is needed.
    logits = model(input_ids=ids, position_ids=positions).logits[:, :-1]
    # every target is kept inside the nucleus (token_logprobs), so no position's log-prob is -inf
    logprobs = token_logprobs(logits, ids[:, 1:], temperature, top_p)
    return clipped_policy_loss(
        logprobs, batch["old_logprobs"], batch["advantages"], batch["loss_mask"], clip_low, clip_high, normalizer
    )


def sum_stats(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Key-wise sum of per-micro-batch or per-rank statistics."""
    out: dict[str, float] = {}
    for s in stats:
        for k, v in s.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out
