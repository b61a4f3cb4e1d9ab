"""The policy-gradient family's losses, as pure tensor functions (no model, no Ray).

Every loss here is a sum over tokens of ``weight x term``: ``mask`` [B, T] marks the model's completion
tokens and ``weights`` [B] is each sequence's per-token weight, chosen on the driver by
:func:`aggregation_weights` so that a sum over the learner ranks' shards is the whole batch's loss
(token mean, sequence mean, or Dr.GRPO's constant normaliser). The terms:

- :func:`ppo_clip_terms`    token-level importance ratio pi / pi_old, clipped (GRPO, Dr.GRPO, DAPO)
- :func:`gspo_clip_terms`   sequence-level ratio (the geometric mean of the token ratios), clipped (GSPO)
- :func:`tis_terms`         truncated importance sampling against the sampler instead of clipping
- :func:`kl_estimate`       per-token KL to a reference, k1 or k3
- :func:`value_loss_terms`  PPO's value head: squared error to the returns, optionally clipped
- :func:`token_entropy`     the policy's entropy per token, for the entropy bonus

Advantages are one per sequence [B] (the GRPO family) or one per token [B, T] (PPO's GAE).
:func:`policy_gradient_loss` combines the policy terms.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Advantages [B] (one per sequence) or [B, T] (one per token) as a tensor that broadcasts to ``like``."""
    return advantages if advantages.dim() == like.dim() else advantages.unsqueeze(-1)


def aggregation_weights(loss_tokens: list[int], aggregation: str, max_tokens: int) -> list[float]:
    """Per-token loss weight of each sequence, given each sequence's trained token count.

    - ``token_mean``: 1 / (all trained tokens): every token counts the same (DAPO's token-level loss).
    - ``seq_mean_token_mean``: 1 / (n sequences x its own tokens): each sequence counts the same.
    - ``seq_mean_token_sum_norm``: 1 / (n sequences x ``max_tokens``): a constant, so neither length nor
      batch composition rescales a token's gradient (Dr.GRPO).
    """
    n = len(loss_tokens)
    if n == 0:
        return []
    if aggregation == "token_mean":
        total = max(1, sum(loss_tokens))
        return [1.0 / total] * n
    if aggregation == "seq_mean_token_mean":
        return [1.0 / (n * max(1, t)) for t in loss_tokens]
    if aggregation == "seq_mean_token_sum_norm":
        return [1.0 / (n * max_tokens)] * n
    raise ValueError(f"unknown loss aggregation '{aggregation}' (known: {', '.join(AGGREGATIONS)})")


def ppo_clip_terms(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, negated: ``-min(r A, clip(r, 1 - low, 1 + high) A)`` with
    ``r = exp(logprobs - old_logprobs)`` [B, T] and one advantage per sequence [B]. Returns the terms and
    where the clipped branch was taken (no gradient there)."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = per_token(advantages, logprobs)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def gspo_clip_terms(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    clip_low: float, clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """GSPO's clipped surrogate, written per token (GSPO-token with one advantage per sequence).

    The sequence ratio is ``s = exp(mean over the sequence's masked tokens of (logprobs - old))``; each
    token carries ``sg(s) x exp(logp - sg(logp))``, whose value is ``s`` and whose gradient is
    ``s x grad logp``: averaged over the sequence's tokens it is GSPO's gradient. Clipping acts on ``s``.
    """
    mask = mask.to(logprobs.dtype)
    mean_log_ratio = ((logprobs - old_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    seq_ratio = torch.exp(mean_log_ratio).detach().unsqueeze(-1)
    token_ratio = seq_ratio * torch.exp(logprobs - logprobs.detach())
    adv = per_token(advantages, logprobs)
    unclipped = token_ratio * adv
    clipped = torch.clamp(token_ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def tis_terms(
    logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, advantages: torch.Tensor, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling per token: ``-sg(min(pi / pi_sampler, cap)) x A x exp(logp - sg(logp))``.

    rayrl takes one optimizer step per batch, so the learner's policy before the update is ``sg(pi)``: the
    PPO ratio against it is 1 (no clipping can act) and the sampler mismatch (vLLM's log-prob drift,
    stale samples) is corrected by the truncated weight. Returns the terms and where the cap bit."""
    weight = torch.exp(logprobs.detach() - sampler_logprobs)
    truncated = weight > cap
    adv = per_token(advantages, logprobs)
    return -weight.clamp(max=cap) * adv * torch.exp(logprobs - logprobs.detach()), truncated


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi: ``k1 = log pi - log pi_ref``
    (unbiased, can be negative), ``k3 = r - 1 - log r`` with ``r = pi_ref / pi`` (unbiased, >= 0)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator '{estimator}' (known: k1, k3)")


def value_loss_terms(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's value loss per token: ``0.5 (V - R)^2``, or with ``clip > 0`` the larger of that and
    ``0.5 (V_clipped - R)^2`` where ``V_clipped = V_old + clamp(V - V_old, -clip, clip)`` (no move of more
    than ``clip`` from the batch's estimate pays off). Shapes [B, T]."""
    error = (values - returns) ** 2
    if clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        error = torch.maximum(error, (clipped - returns) ** 2)
    return 0.5 * error


def token_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy [...] of each distribution given as log-probs ``logp`` [..., V]; tokens outside a nucleus
    (log-prob -inf) contribute 0, and no gradient flows through them."""
    finite = torch.isfinite(logp)
    return -(logp.exp() * torch.where(finite, logp, torch.zeros_like(logp))).sum(-1)


def policy_gradient_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
    sequence_ratio: bool = False,
    tis_cap: float | None = None,
    kl_coef: float = 0.0,
    kl_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss ``sum_{b,t} mask x weights[b] x (term + kl_coef x kl)`` and token-summed statistics.

    Shapes: ``logprobs`` (current policy, with gradient), ``old_logprobs`` (the sampler's), ``mask`` [B, T];
    ``advantages`` [B] or [B, T], ``weights`` [B]. The term is GSPO's with ``sequence_ratio``, truncated IS with
    ``tis_cap``, else PPO's clip. The KL term compares ``kl_logprobs`` (the policy's, default ``logprobs``)
    with ``ref_logprobs``. Statistics: ``clipped`` (clipped or truncated tokens), ``mismatch_kl`` (k3 of the
    sampler against the current policy), ``tokens``, and ``kl_ref`` with a reference.
    """
    mask = mask.to(logprobs.dtype)
    if tis_cap is not None:
        terms, clipped = tis_terms(logprobs, old_logprobs, advantages, tis_cap)
    elif sequence_ratio:
        terms, clipped = gspo_clip_terms(logprobs, old_logprobs, advantages, mask, clip_low, clip_high)
    else:
        terms, clipped = ppo_clip_terms(logprobs, old_logprobs, advantages, clip_low, clip_high)
    token_weights = mask * weights.to(logprobs.dtype).unsqueeze(-1)
    kl = None
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs if kl_logprobs is None else kl_logprobs, ref_logprobs, kl_estimator)
        if kl_coef:
            terms = terms + kl_coef * kl
    loss = (terms * token_weights).sum()
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        stats = {
            "clipped": (clipped.to(mask.dtype) * mask).sum(),
            # k3 estimator of KL(sampler || current) from the sampler's tokens: r - 1 - log r >= 0.
            "mismatch_kl": ((torch.exp(log_ratio) - 1 - log_ratio) * mask).sum(),
            "tokens": mask.sum(),
        }
        if kl is not None:
            stats["kl_ref"] = (kl * mask).sum()
    return loss, stats
