"""GRPO: group-relative advantages and the clipped importance-ratio policy loss (pure functions)."""

from __future__ import annotations

import numpy as np
import torch


def group_advantages(rewards: np.ndarray, std_normalize: bool = False, eps: float = 1e-6) -> np.ndarray:
    """Advantages of ``rewards`` shaped [groups, samples_per_group]: reward minus its group's mean.

    With ``std_normalize`` the difference is divided by the group's std (+ eps). Same shape out.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if std_normalize:
        centred = centred / (rewards.std(axis=1, keepdims=True) + eps)
    return centred.astype(np.float32)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each target token: ``logits`` [B, T, V] predict ``targets`` [B, T] -> [B, T].

    ``temperature`` scales the logits the way the sampler did (0 means greedy: no scaling).
    """
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


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
