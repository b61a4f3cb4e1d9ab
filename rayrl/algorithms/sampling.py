"""The sampling distribution, computed one way for the sampler and the learner (pure functions).

The engine draws each token from ``softmax(logits / temperature)`` restricted to the nucleus (the
smallest set of most likely tokens whose mass reaches ``top_p``) and renormalised over it; it
reports the sampled token's log-probability under that distribution. The learner must score the
same tokens under the same distribution, or the importance ratio starts away from 1 and the clipped
loss silently drops gradient: both call :func:`sampling_logprobs`.
"""

from __future__ import annotations

import torch


def nucleus_outside(logp: torch.Tensor, top_p: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask [..., V], True for tokens outside the ``top_p`` nucleus of log-probs ``logp`` [..., V].

    A token is inside when the mass of the strictly more likely tokens is below ``top_p`` (so the most
    likely token always is). ``keep`` [...] (token ids) are kept inside whatever their mass: the learner
    passes the sampled tokens, which were inside the sampler's nucleus by construction, so a token at
    the boundary never gets log-prob -inf from a last-bit difference in the logits.
    """
    with torch.no_grad():
        sorted_logp, order = logp.sort(-1, descending=True)
        probs = sorted_logp.exp()
        outside_sorted = probs.cumsum(-1) - probs >= top_p
        outside = torch.zeros_like(outside_sorted).scatter(-1, order, outside_sorted)
        if keep is not None:
            outside.scatter_(-1, keep.unsqueeze(-1), False)
    return outside


def sampling_logprobs(
    logits: torch.Tensor, temperature: float, top_p: float = 1.0, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probs [..., V] of the distribution tokens are sampled from, given ``logits`` [..., V].

    ``temperature`` 0 means greedy: the unscaled distribution (the argmax is what is taken). With
    ``top_p < 1`` the temperature-scaled distribution is cut to its nucleus and renormalised; tokens
    outside get -inf. ``keep``: see :func:`nucleus_outside`.
    """
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    if temperature > 0 and top_p < 1.0:
        logp = torch.log_softmax(logp.masked_fill(nucleus_outside(logp, top_p, keep), float("-inf")), dim=-1)
    return logp


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0
) -> torch.Tensor:
    """Log-prob of each target token under the sampling distribution: ``logits`` [B, T, V] predict
    ``targets`` [B, T] -> [B, T]. The targets are kept inside the nucleus (see :func:`nucleus_outside`)."""
    logp = sampling_logprobs(logits, temperature, top_p, keep=targets if top_p < 1.0 else None)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` [B, V]; return (tokens [B], their log-probs [B]) under the
    distribution sampled from. Greedy (temperature 0) takes the argmax and reports its unscaled log-prob."""
    logp = sampling_logprobs(logits, temperature, top_p)
    if temperature == 0:
        tokens = logp.argmax(-1)
    else:
        tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
