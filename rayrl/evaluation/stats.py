"""Evaluation statistics: pure functions of per-sample scores (numpy and the standard library only).

Per environment (:func:`summarize`): mean, std, median, success rate (share of non-zero scores),
accuracy (binary tasks only) and a Jeffreys interval for the success rate. Across environments
(:func:`aggregate`): the same statistics over every sample pooled, i.e. weighted by sample count.
Across checkpoints (:func:`dominates`, :func:`pareto_front`): Pareto dominance on per-environment scores.

The Beta quantile behind the Jeffreys interval is computed here (regularized incomplete beta by a
continued fraction, inverted by bisection) so that scipy stays an optional dependency.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

JEFFREYS_LEVEL = 0.8  # central mass of the reported interval: 10th and 90th percentiles


@dataclass(frozen=True)
class ScoreStats:
    """Statistics of ``n`` per-sample scores of one environment (or of several, pooled)."""

    n: int
    mean: float
    std: float  # population std (ddof=0)
    median: float
    success_rate: float  # share of scores != 0
    accuracy: float | None  # = mean when every score is 0 or 1, else None (not a binary task)
    success_ci_low: float  # Jeffreys interval of the success rate (JEFFREYS_LEVEL central mass)
    success_ci_high: float

    @property
    def binary(self) -> bool:
        return self.accuracy is not None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def is_binary(scores: np.ndarray) -> bool:
    """True when every score is exactly 0 or 1 (an accuracy-style task)."""
    scores = np.asarray(scores, dtype=np.float64)
    return bool(np.all((scores == 0.0) | (scores == 1.0)))


def summarize(scores: Sequence[float] | np.ndarray, level: float = JEFFREYS_LEVEL) -> ScoreStats:
    """Statistics of per-sample scores (any shape, flattened; NaN is not allowed).

    With several samples per example the samples are counted as independent trials, so the
    interval is narrower than one over examples would be.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("summarize: no scores")
    if np.isnan(x).any():
        raise ValueError("summarize: scores contain NaN")
    successes = int(np.count_nonzero(x))
    low, high = jeffreys_interval(successes, x.size, level)
    mean = float(x.mean())
    return ScoreStats(
        n=int(x.size), mean=mean, std=float(x.std()), median=float(np.median(x)),
        success_rate=successes / x.size, accuracy=mean if is_binary(x) else None,
        success_ci_low=low, success_ci_high=high,
    )


def aggregate(scores_by_env: Mapping[str, np.ndarray], level: float = JEFFREYS_LEVEL) -> ScoreStats:
    """Statistics over every environment's samples pooled: each environment weighs by its sample count."""
    if not scores_by_env:
        raise ValueError("aggregate: no environments")
    return summarize(np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores_by_env.values()]), level)


# ---- Jeffreys interval ------------------------------------------------------------------------


def jeffreys_interval(successes: int, n: int, level: float = JEFFREYS_LEVEL) -> tuple[float, float]:
    """Central ``level`` interval of Beta(0.5 + successes, 0.5 + failures): the Jeffreys interval.

    Plain quantiles (no boundary adjustment at 0 or n successes): with level 0.8, the 10th and 90th
    percentiles of the posterior of the success probability under the Jeffreys prior.
    """
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"jeffreys_interval: need 0 <= successes <= n and n >= 1, got {successes}, {n}")
    if not 0 < level < 1:
        raise ValueError(f"jeffreys_interval: level must be in (0, 1), got {level}")
    a, b = successes + 0.5, n - successes + 0.5
    tail = (1 - level) / 2
    return beta_ppf(tail, a, b), beta_ppf(1 - tail, a, b)


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b), the CDF of Beta(a, b) at ``x``.

    Continued fraction (modified Lentz) on whichever side of the mean converges fast, using
    I_x(a, b) = 1 - I_{1-x}(b, a).
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc: a and b must be positive, got {a}, {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, max_iter: int = 10_000, eps: float = 1e-15) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        for coef in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coef / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"betainc: continued fraction did not converge for a={a}, b={b}, x={x}")


def beta_ppf(q: float, a: float, b: float, tol: float = 1e-13) -> float:
    """Quantile of Beta(a, b): the x with I_x(a, b) = q, by bisection (the CDF is monotone, so it
    cannot fail to converge; about 45 halvings reach ``tol``)."""
    if not 0 <= q <= 1:
        raise ValueError(f"beta_ppf: q must be in [0, 1], got {q}")
    if q == 0:
        return 0.0
    if q == 1:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---- Pareto dominance across checkpoints ------------------------------------------------------


def dominates(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """True when ``a`` scores >= ``b`` on every environment and > on at least one (higher is better).

    Both must score the same environments; NaN never dominates nor is dominated.
    """
    if set(a) != set(b):
        raise ValueError(f"dominates: different environments {sorted(a)} and {sorted(b)}")
    if any(math.isnan(a[k]) or math.isnan(b[k]) for k in a):
        return False
    return all(a[k] >= b[k] for k in a) and any(a[k] > b[k] for k in a)


def pareto_front(points: Mapping[Hashable, Mapping[str, float]]) -> list[Hashable]:
    """Keys of the points no other point dominates, in the mapping's order (ties all stay)."""
    return [k for k, p in points.items() if not any(dominates(q, p) for j, q in points.items() if j != k)]


def dominated_by(points: Mapping[Hashable, Mapping[str, float]]) -> dict[Hashable, list[Hashable]]:
    """For every key, the keys of the points that dominate it (empty for the Pareto front)."""
    return {k: [j for j, q in points.items() if j != k and dominates(q, p)] for k, p in points.items()}
