"""One RL step (the GRPO family: GRPO, Dr.GRPO, DAPO, GSPO; and PPO), top to bottom, as Ray-free functions.

    rollouts (groups of one prompt's completions)
      1. drop_stale            samples more than k policy versions behind the learner are dropped
      2. shaped rewards        the environment's reward minus DAPO's overlong penalty and, with
                               algorithm.kl_in = "reward", the KL to the reference (overlong_penalties,
                               sequence_kl)
      3. build_train_samples   group-relative advantages; tied groups (no signal) are dropped. PPO instead:
                               the learners' value estimates, then GAE per token (with_value_targets)
      4. set_loss_weights      each sequence's per-token weight (token mean, sequence mean, Dr.GRPO's constant)
      5. shard_evenly          equal sample counts per learner rank (zero-weight padding)
      6. collate               right-padded tensors; loss positions = the model's completion tokens
      7. policy_loss           forward pass, log-probs under the sampling distribution, the algorithm's
                               loss (``rayrl.algorithms.losses``)

The driver runs 1-5, each learner rank 6-7 per micro-batch. Nothing here imports Ray: the step runs
in process with ``learner.workers = 0`` and every piece is tested on hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rayrl.algorithms.losses import (
    aggregation_weights, kl_estimate, policy_gradient_loss, token_entropy, value_loss_terms,
)
from rayrl.algorithms.sampling import sampling_logprobs, token_logprobs
from rayrl.config import AlgorithmConfig


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
    prompt_truncated: bool = False  # the prompt was cut from the left to fit seq_len (rollout.long_prompts)


@dataclass
class TrainSample:
    """One completion as the learner sees it."""

    token_ids: np.ndarray  # prompt + completion, int64 [T]
    completion_start: int  # index of the first completion token in token_ids
    old_logprobs: np.ndarray  # behaviour log-probs of the completion tokens, float32 [T - completion_start]
    advantage: float
    # per-token loss weight (set_loss_weights: how the batch's token losses add up); 0 for padding samples
    # that only keep the ranks in step
    weight: float = 1.0
    # 1 where the completion token is the model's (trained on), 0 where an environment wrote it
    # (multi-turn); None = every completion token is the model's.
    loss_mask: np.ndarray | None = None
    # PPO, per completion token (float32 [T - completion_start]): GAE advantages (replacing ``advantage``),
    # the value head's targets, and its estimates when the batch was drawn
    token_advantages: np.ndarray | None = None
    returns: np.ndarray | None = None
    old_values: np.ndarray | None = None
    truncated: bool = False  # the completion was cut at sampling.max_tokens

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


ADVANTAGE_LIMIT = 1e4  # a batch's advantages above this in magnitude are scaled down together (float32-safe)


def group_advantages(rewards: np.ndarray, std_normalize: bool = False, eps: float = 1e-6) -> np.ndarray:
    """Advantages of ``rewards`` [..., n] (the last axis is one group): reward minus the group's mean,
    divided by the group's std (+ ``eps``) with ``std_normalize``. Same shape out, float64, finite for any
    finite rewards: each group is divided by its largest magnitude first, so no sum overflows."""
    rewards = np.asarray(rewards, dtype=np.float64)
    scale = np.abs(rewards).max(axis=-1, keepdims=True)
    scale = np.where(scale > 1.0, scale, 1.0)
    unit = rewards / scale
    centred = unit - unit.mean(axis=-1, keepdims=True)
    if std_normalize:
        return centred / (unit.std(axis=-1, keepdims=True) + eps / scale)
    return centred * scale


def limit_advantages(advantages: np.ndarray, limit: float = ADVANTAGE_LIMIT) -> tuple[np.ndarray, float]:
    """``advantages`` (float64) as float32, scaled down together when the largest exceeds ``limit`` in
    magnitude (rewards of huge scale): the same direction of update (AdamW and clipping see only that), no
    overflow in float32 losses. Returns them and the factor applied (1.0 when none)."""
    advantages = np.asarray(advantages, dtype=np.float64)
    peak = float(np.abs(advantages).max()) if advantages.size else 0.0
    factor = limit / peak if peak > limit else 1.0
    return (advantages * factor).astype(np.float32), factor


def drop_nonfinite(
    groups: list[list[Rollout]], shaped: list[np.ndarray]
) -> tuple[list[list[Rollout]], list[np.ndarray], int]:
    """Leave out every group holding a NaN or infinite (shaped) reward: no advantage can be computed from it.
    Returns the other groups, their rewards and how many were left out."""
    keep = [i for i, rewards in enumerate(shaped) if np.isfinite(rewards).all()]
    return [groups[i] for i in keep], [shaped[i] for i in keep], len(groups) - len(keep)


def build_train_samples(
    groups: list[list[Rollout]], std_normalize: bool = False, shaped: list[np.ndarray] | None = None,
    group_relative: bool = True,
) -> tuple[list[TrainSample], dict[str, float]]:
    """Group-relative advantages over each group's samples; tied groups carry no signal and are dropped.

    ``shaped`` (one array per group) replaces the rewards the advantages and the tie test use (penalties
    added); the statistics report the environment's rewards. ``group_relative = False`` (PPO) keeps every
    sample, advantage 0, in the groups' order: its advantages come later (:func:`with_value_targets`).
    Returns the samples to train on and the batch's statistics (over every given rollout)."""
    flat = [r for g in groups for r in g]
    if not flat:  # every sample was too stale: nothing to learn from this step
        return [], {"reward_mean": math.nan, "tokens": 0.0, "seq_len_mean": 0.0, "train_samples": 0,
                    "train_tokens": 0}
    kept: list[Rollout] = []
    advantages: list[np.ndarray] = []
    tied = 0
    for g, group in enumerate(groups):
        rewards = np.array([r.reward for r in group], dtype=np.float64) if shaped is None else shaped[g]
        if not group_relative:
            kept.extend(group)
            advantages.append(np.zeros(len(group)))
            continue
        if rewards_tied(rewards):
            tied += 1
            continue
        kept.extend(group)
        advantages.append(group_advantages(rewards, std_normalize))
    limited, factor = limit_advantages(np.concatenate(advantages) if advantages else np.zeros(0))
    samples = [to_train_sample(rollout, float(a)) for rollout, a in zip(kept, limited)]
    rewards = np.array([r.reward for r in flat], dtype=np.float64)
    seq_lens = [len(r.prompt_ids) + len(r.completion_ids) for r in flat]
    return samples, {
        **({"numerics/advantage_scale": factor} if factor != 1.0 else {}),
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


def with_value_targets(
    samples: list[TrainSample], values: list[np.ndarray], rewards: np.ndarray, algorithm: AlgorithmConfig
) -> dict[str, float]:
    """PPO: give each sample its token advantages (GAE from the value head's estimates ``values`` and its
    shaped reward ``rewards[i]``, whitened over the batch's model tokens if asked), the returns the value
    head learns and the estimates the value clip is centred on. Returns the batch's value statistics."""
    from rayrl.algorithms.gae import masked_gae, whiten

    a = algorithm
    masks = [s.loss_mask for s in samples]
    pairs = [masked_gae(v, float(r), m, a.gamma, a.gae_lambda) for v, r, m in zip(values, rewards, masks)]
    advantages = [adv for adv, _ in pairs]
    raw = np.concatenate([adv if m is None else adv[np.asarray(m, bool)] for adv, m in zip(advantages, masks)])
    if a.whiten_advantages:
        advantages = whiten(advantages, masks)
    for sample, adv, (_, ret), v in zip(samples, advantages, pairs, values):
        sample.token_advantages = adv.astype(np.float32)
        sample.returns = ret.astype(np.float32)
        sample.old_values = np.asarray(v, dtype=np.float32)
    first_values = [float(v[0 if m is None else int(np.argmax(m))]) for v, m in zip(values, masks)]
    return {"value/estimate_mean": float(np.mean(first_values)), "value/advantage_mean": float(raw.mean()),
            "value/advantage_std": float(raw.std())}


def model_tokens(rollout: Rollout) -> int:
    """How many completion tokens the model wrote (environment tokens of multi-turn episodes excluded)."""
    mask = rollout.completion_mask
    return len(rollout.completion_ids) if mask is None else int(sum(mask))


def overlong_penalties(lengths: np.ndarray, max_tokens: np.ndarray, buffer: int, penalty: float) -> np.ndarray:
    """DAPO's soft overlong punishment of completions of ``lengths`` model tokens against ``max_tokens``
    (same shape): 0 up to ``max_tokens - buffer``, then linear down to ``-penalty`` at ``max_tokens`` and
    beyond. ``buffer`` 0 turns it off."""
    lengths, max_tokens = np.asarray(lengths, dtype=np.float64), np.asarray(max_tokens, dtype=np.float64)
    if buffer <= 0:
        return np.zeros_like(lengths)
    over = np.clip(lengths - (max_tokens - buffer), 0.0, float(buffer))
    return -penalty * over / buffer


def sequence_kl(sampler_logprobs: np.ndarray, ref_logprobs: np.ndarray, mask: np.ndarray | None,
                estimator: str) -> float:  # fmt: skip
    """KL of one sequence to the reference, summed over its model tokens, from the sampler's log-probs
    (``kl_estimate``); the penalty of ``algorithm.kl_in = "reward"``."""
    kl = kl_estimate(torch.from_numpy(np.asarray(sampler_logprobs, np.float64)),
                     torch.from_numpy(np.asarray(ref_logprobs, np.float64)), estimator).numpy()
    return float(np.sum(kl if mask is None else kl * np.asarray(mask)))


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
        truncated=rollout.finish_reason == "length",
    )


def drop_truncated(samples: list[TrainSample]) -> tuple[list[TrainSample], int]:
    """prime-rl's ``mask_truncated_completions``: the samples whose completion ended at the token limit
    carry no loss (their groups' advantages were computed with them) and are left out of the update.
    Returns the samples kept and how many were left out."""
    kept = [s for s in samples if not s.truncated]
    return kept, len(samples) - len(kept)


# ---- 4. loss weights, 5. shards ------------------------------------------------------------------
def set_loss_weights(samples: list[TrainSample], aggregation: str, max_tokens: int) -> list[TrainSample]:
    """Give each sample its per-token loss weight (``losses.aggregation_weights``) over the whole batch,
    before sharding: each rank's loss is then its weighted token sum, and the ranks' sum is the batch's loss."""
    for sample, weight in zip(samples, aggregation_weights([s.loss_tokens() for s in samples], aggregation, max_tokens)):
        sample.weight = weight
    return samples


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


# ---- 6. collate ----------------------------------------------------------------------------------
def collate(samples: list[TrainSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad samples into tensors [B, W]; ``loss_mask`` (1 at the model's tokens of samples with a
    weight), ``old_logprobs`` are [B, W - 1], aligned with the targets ``input_ids[:, 1:]`` (position t
    predicts token t + 1); ``advantages``, ``weights`` [B]. PPO samples (token advantages) make
    ``advantages`` [B, W - 1] and add ``returns`` and ``old_values`` [B, W - 1]."""
    width = max(len(s.token_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width - 1))
    old = torch.zeros((len(samples), width - 1))
    for row, s in enumerate(samples):
        n = len(s.token_ids)
        ids[row, :n] = torch.tensor(s.token_ids)  # copy: object-store arrays are read-only
        if s.weight:
            mask[row, s.completion_start - 1 : n - 1] = (
                1.0 if s.loss_mask is None else torch.from_numpy(np.asarray(s.loss_mask, np.float32))
            )
        old[row, s.completion_start - 1 : n - 1] = torch.tensor(s.old_logprobs)
    weights = torch.tensor([s.weight for s in samples], dtype=torch.float64)
    batch = {"input_ids": ids, "loss_mask": mask, "old_logprobs": old, "weights": weights}
    if any(s.token_advantages is not None for s in samples):
        for key, attr in (("advantages", "token_advantages"), ("returns", "returns"), ("old_values", "old_values")):
            batch[key] = torch.zeros((len(samples), width - 1))
            for row, s in enumerate(samples):
                if getattr(s, attr) is not None:  # padding samples have none
                    batch[key][row, s.completion_start - 1 : len(s.token_ids) - 1] = torch.from_numpy(
                        np.asarray(getattr(s, attr), np.float32))
    else:
        batch["advantages"] = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return batch


# ---- 7. loss -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSettings:
    """What the learner's loss needs of ``[algorithm]`` and ``[sampling]``."""

    clip_low: float
    clip_high: float
    temperature: float = 1.0
    top_p: float = 1.0
    sequence_ratio: bool = False  # GSPO
    tis_cap: float | None = None
    kl_coef: float = 0.0  # in the loss; 0 when the KL goes into the reward
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    vf_coef: float = 0.0  # PPO's value head
    value_clip: float = 0.0

    @classmethod
    def from_config(cls, algorithm: AlgorithmConfig, temperature: float, top_p: float) -> LossSettings:
        return cls(
            clip_low=algorithm.clip_low, clip_high=algorithm.clip_high, temperature=temperature, top_p=top_p,
            sequence_ratio=algorithm.name == "gspo", tis_cap=algorithm.tis_cap,
            kl_coef=algorithm.kl_coef if algorithm.kl_in == "loss" else 0.0, kl_estimator=algorithm.kl_estimator,
            entropy_coef=algorithm.entropy_coef, vf_coef=algorithm.vf_coef or 0.0,
            value_clip=algorithm.value_clip or 0.0,
        )


def sequence_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T - 1, V] predicting ``ids[:, 1:]`` for right-padded ``ids`` [B, T]."""
    return sequence_outputs(model, ids)[0]


def sequence_outputs(
    model: torch.nn.Module, ids: torch.Tensor, value_head: torch.nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [B, T - 1, V] predicting ``ids[:, 1:]`` for right-padded ``ids`` [B, T] and, with a
    ``value_head``, its value estimate [B, T - 1] of the state before each of those tokens (from the last
    hidden state at the same position)."""
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    # Right padding and causal attention: real tokens never see the padding, so no mask is needed.
    out = model(input_ids=ids, position_ids=positions, output_hidden_states=value_head is not None)
    values = None if value_head is None else value_head(out.hidden_states[-1][:, :-1])
    return out.logits[:, :-1], values


def policy_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    settings: LossSettings,
    reference: torch.nn.Module | None = None,
    value_head: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward ``batch`` (from :func:`collate`) through the causal LM ``model`` and return the algorithm's
    loss. The completion tokens are scored under the sampling distribution the engine drew them from (same
    temperature and nucleus), so on-policy ratios start at 1. With a ``reference`` model the KL to it is
    computed at the sampling temperature over the whole vocabulary, reported, and added with ``kl_coef``.
    The policy's entropy is reported and, with ``entropy_coef``, rewarded. With a ``value_head`` (PPO) its
    loss against ``batch["returns"]`` is added with ``vf_coef`` (same token weights as the policy's)."""
    ids = batch["input_ids"]
    targets = ids[:, 1:]
    logits, values = sequence_outputs(model, ids, value_head)
    # every target is kept inside the nucleus, so no position's log-prob is -inf
    logp = sampling_logprobs(logits, settings.temperature, settings.top_p, keep=targets if settings.top_p < 1.0 else None)
    logprobs = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    kl_logprobs = ref_logprobs = None
    if reference is not None:
        with torch.no_grad():
            ref_logprobs = token_logprobs(sequence_logits(reference, ids), targets, settings.temperature)
        kl_logprobs = logprobs if settings.top_p >= 1.0 else token_logprobs(logits, targets, settings.temperature)
    loss, stats = policy_gradient_loss(
        logprobs, batch["old_logprobs"], batch["advantages"], batch["loss_mask"], batch["weights"],
        clip_low=settings.clip_low, clip_high=settings.clip_high, sequence_ratio=settings.sequence_ratio,
        tis_cap=settings.tis_cap, kl_coef=settings.kl_coef, kl_logprobs=kl_logprobs, ref_logprobs=ref_logprobs,
        kl_estimator=settings.kl_estimator,
    )
    mask = batch["loss_mask"].to(logprobs.dtype)
    token_weights = mask * batch["weights"].to(logprobs.dtype).unsqueeze(-1)
    with torch.set_grad_enabled(settings.entropy_coef > 0 and torch.is_grad_enabled()):
        entropy = token_entropy(logp)
    if settings.entropy_coef:
        loss = loss - settings.entropy_coef * (entropy * token_weights).sum()
    stats["entropy"] = (entropy.detach() * mask).sum()
    if values is not None:
        values = values.float()
        terms = value_loss_terms(values, batch["old_values"], batch["returns"], settings.value_clip)
        loss = loss + settings.vf_coef * (terms * token_weights).sum()
        with torch.no_grad():
            error = (batch["returns"] - values) * mask
            stats.update({
                "value_loss": (terms.detach() * mask).sum(), "value_error": error.sum(),
                "value_error_sq": (error**2).sum(), "return_sum": (batch["returns"] * mask).sum(),
                "return_sq": (batch["returns"] ** 2 * mask).sum(),
            })
    return loss, stats


def sum_stats(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Key-wise sum of per-micro-batch or per-rank statistics."""
    out: dict[str, float] = {}
    for s in stats:
        for k, v in s.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out
