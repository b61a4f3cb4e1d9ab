"""PPO's advantages: generalised advantage estimation over a completion's tokens (pure numpy).

A completion is an episode whose actions are the model's tokens: the reward arrives after the last one
(every earlier token's reward is 0), the value head estimates ``V(s_t)`` before each token, and the value
after the last token is 0 (the episode ends, also when it was cut at ``max_tokens``). Then

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t),   A_t = delta_t + gamma lambda A_{t+1},   R_t = A_t + V(s_t)

with ``R_t`` the value head's target. Environment tokens of multi-turn episodes are not actions: the
trajectory runs over the model's tokens only (the mask), and the others get advantage and return 0.
"""

from __future__ import annotations

import numpy as np


def gae(values: np.ndarray, reward: float, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns [n] of one trajectory of ``n`` actions with values ``values`` [n] and a
    single ``reward`` after its last action. float64."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    advantages = np.zeros(n)
    next_value, running = 0.0, 0.0
    for t in range(n - 1, -1, -1):
        r = reward if t == n - 1 else 0.0
        delta = r + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages, advantages + values


def masked_gae(values: np.ndarray, reward: float, mask: np.ndarray | None, gamma: float, lam: float
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`gae` over the positions where ``mask`` is 1 (all when None); 0 elsewhere. Shapes [T]."""
    values = np.asarray(values, dtype=np.float64)
    if mask is None:
        return gae(values, reward, gamma, lam)
    where = np.flatnonzero(np.asarray(mask))
    advantages, returns = np.zeros(len(values)), np.zeros(len(values))
    if len(where):
        advantages[where], returns[where] = gae(values[where], reward, gamma, lam)
    return advantages, returns


def whiten(arrays: list[np.ndarray], masks: list[np.ndarray | None], eps: float = 1e-8) -> list[np.ndarray]:
    """``arrays`` shifted and scaled together so their masked entries have mean 0 and std 1 (others 0)."""
    picked = [a if m is None else a[np.asarray(m, bool)] for a, m in zip(arrays, masks)]
    flat = np.concatenate(picked) if picked else np.zeros(0)
    if flat.size == 0:
        return arrays
    mean, std = flat.mean(), flat.std()
    out = []
    for a, m in zip(arrays, masks):
        w = (a - mean) / (std + eps)
        out.append(w if m is None else np.where(np.asarray(m, bool), w, 0.0))
    return out
