"""Group-sequential testing for the promotion gate: pure maths (numpy and the standard library only).

The gate scores champion and candidates in **stages** (looks) with fresh samples each, and after each look
combines the stage-wise evidence into one statistic that is compared with a boundary:

- **Stage statistic**: each look's paired test gives a one-sided p-value p_j (the sign-flip test is exact
  under A/A whatever the per-example sample counts), turned into ``z_j = Phi^-1(1 - p_j)``.
- **Inverse-normal combination** (Lehmacher and Wassmer 1999): ``Z_k = sum_{j<=k} w_j z_j / sqrt(sum w_j^2)``
  with weights ``w_j = sqrt(planned share of look j)`` fixed before any data. Because each look's samples
  are fresh and the weights fixed, ``Z_1 .. Z_K`` under H0 are (at most) standard normal with the
  correlations of a Brownian motion read at the planned information fractions ``t_k`` — whatever the gate
  did with earlier looks (how it allocated samples, which candidates it dropped). This is what licenses
  adaptive allocation.
- **Alpha spending** (Lan and DeMets 1983): the one-sided alpha' of a candidate is spent over the looks by
  ``alpha(t)``; O'Brien-Fleming-type ``2 - 2 Phi(z_{1-alpha'/2} / sqrt(t))`` spends almost nothing early
  (a candidate must be overwhelming to stop at the first look), Pocock-type ``alpha' ln(1 + (e - 1) t)``
  spends evenly. The efficacy boundary ``c_k`` at look k is the one whose crossing probability under H0,
  having not crossed before, is ``alpha(t_k) - alpha(t_{k-1})`` (computed by numerical integration of
  the Brownian motion's density, Armitage, McPherson and Rowe 1969; no Monte Carlo).
- **Futility** is non-binding: boundaries are computed as if a candidate always continued, so dropping a
  weak candidate early can only lower the chance of a false adoption.

Everything here is deterministic. :func:`crossing_probabilities` gives the power, the stopping-look
distribution and the expected information of a design at a given drift (used by the power planner and
the calibration bench); :func:`stagewise_p_value` gives the p-value of the stage-wise ordering (below
alpha' exactly when the boundary was crossed); :func:`repeated_ci` the effect's repeated confidence
interval (Jennison and Turnbull 1989), valid whenever the gate stops; :func:`allocate` the per-example
sample counts of the next look (Neyman allocation).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()
_GRID = 1201  # points of the density grid per look
_SPAN = 9.0  # the grid reaches this many standard deviations below the drift


def phi(x: np.ndarray | float) -> np.ndarray:
    """Standard normal cdf, elementwise."""
    return 0.5 * _erfc(-np.asarray(x, np.float64) / math.sqrt(2.0))


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def z_of_p(p: float) -> float:
    """``Phi^-1(1 - p)``: the one-sided z of a p-value (p clipped to [1e-300, 1 - 1e-16])."""
    return -_NORMAL.inv_cdf(min(max(p, 1e-300), 1 - 1e-16))


def spending(t: float, alpha: float, kind: str = "obf") -> float:
    """Alpha spent by information fraction ``t`` in [0, 1]: ``obf`` (O'Brien-Fleming type) or ``pocock``."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if kind == "obf":
        return float(2.0 - 2.0 * _NORMAL.cdf(_NORMAL.inv_cdf(1 - alpha / 2) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"spending must be 'obf' or 'pocock', got {kind!r}")


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The looks' information fractions: increasing, in (0, 1], the last one 1."""
    t = [float(x) for x in fractions]
    if not t or any(b <= a for a, b in itertools.pairwise(t)) or t[0] <= 0 or abs(t[-1] - 1.0) > 1e-9:
        raise ValueError(f"looks must be increasing fractions in (0, 1] ending at 1, got {list(fractions)}")
    return t


def weights(fractions: Sequence[float]) -> np.ndarray:
    """Inverse-normal weights ``sqrt(t_k - t_{k-1})`` of the looks."""
    t = np.array(check_fractions(fractions))
    return np.sqrt(np.diff(np.concatenate([[0.0], t])))


def combine(z_stages: Sequence[float], fractions: Sequence[float]) -> float:
    """``Z_k`` of the inverse-normal combination after ``len(z_stages)`` looks."""
    w = weights(fractions)[: len(z_stages)]
    return float(np.dot(w, np.asarray(z_stages, np.float64)) / math.sqrt(float(np.sum(w * w))))


# ---- the Brownian motion's density between looks -----------------------------------------------


class _Walk:
    """The sub-density of ``S_k = sqrt(t_k) Z_k`` on a grid, restricted to "not stopped yet"."""

    def __init__(self, drift: float):
        self.drift = drift
        self.grid: np.ndarray | None = None
        self.density: np.ndarray | None = None
        self.t = 0.0

    def exceed(self, t: float, level: float) -> float:
        """P(not stopped before, S(t) >= level) for the next look at fraction ``t``."""
        dt = t - self.t
        mean = self.drift * dt
        if self.grid is None:
            return float(1.0 - phi((level - self.drift * t) / math.sqrt(t)))
        tail = 1.0 - phi((level - self.grid - mean) / math.sqrt(dt))
        return float(np.trapezoid(self.density * tail, self.grid))

    def advance(self, t: float, low: float, high: float) -> float:
        """Move to look ``t`` keeping only ``low < S(t) < high``; returns P(not stopped before, S(t) <= low)."""
        dt = t - self.t
        sd = math.sqrt(dt) if self.grid is not None else math.sqrt(t)
        centre = self.drift * t
        bottom = max(low, centre - _SPAN * math.sqrt(t))
        top = min(high, centre + _SPAN * math.sqrt(t))
        below = 0.0
        if top <= bottom:
            new_grid = np.array([bottom, bottom])
            new_density = np.zeros(2)
        else:
            new_grid = np.linspace(bottom, top, _GRID)
            if self.grid is None:
                new_density = np.exp(-0.5 * ((new_grid - centre) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            else:
                kernel = np.exp(-0.5 * ((new_grid[:, None] - self.grid[None, :] - self.drift * dt) / sd) ** 2)
                new_density = np.trapezoid(kernel * self.density[None, :], self.grid, axis=1) / (
                    sd * math.sqrt(2 * math.pi))
        if low > -math.inf:
            if self.grid is None:
                below = float(phi((low - centre) / sd))
            else:
                below = float(np.trapezoid(self.density * phi((low - self.grid - self.drift * dt) / sd), self.grid))
        self.grid, self.density, self.t = new_grid, new_density, t
        return below


def efficacy_bounds(fractions: Sequence[float], alpha: float, kind: str = "obf", first: int = 1) -> np.ndarray:
    """Efficacy boundaries ``c_k`` on the Z scale, one per look (``inf`` before look ``first``, 1-based).

    Non-binding: computed as if no candidate ever stopped for futility. Under H0 the probability of
    crossing at look k, not having crossed before, is the alpha spent between ``t_{k-1}`` and ``t_k``
    (looks before ``first`` spend nothing; their share is spent at look ``first``).
    """
    return np.array(_efficacy_bounds(tuple(float(x) for x in fractions), float(alpha), kind, int(first)))


@functools.lru_cache(maxsize=256)
def _efficacy_bounds(fractions: tuple[float, ...], alpha: float, kind: str, first: int) -> tuple[float, ...]:
    t = check_fractions(fractions)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    walk, spent, bounds = _Walk(0.0), 0.0, []
    for k, tk in enumerate(t, start=1):
        if k < first:
            bounds.append(math.inf)
            walk.advance(tk, -math.inf, math.inf)
            continue
        target = spending(tk, alpha, kind) - spent
        lo, hi = -2.0, 12.0  # on the Z scale
        for _ in range(80):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if walk.exceed(tk, mid * math.sqrt(tk)) > target else (lo, mid)
        c = (lo + hi) / 2
        bounds.append(c)
        spent += walk.exceed(tk, c * math.sqrt(tk))
        walk.advance(tk, -math.inf, c * math.sqrt(tk))
    return tuple(bounds)


@dataclass
class Crossing:
    """A design's operating characteristics at one drift (the expected Z at the last look)."""

    power: float  # P(crossing some efficacy boundary)
    efficacy: list[float]  # P(crossing at look k)
    futility: list[float]  # P(stopping for futility at look k)
    expected_fraction: float  # E[information fraction at stopping]


def crossing_probabilities(
    drift: float, fractions: Sequence[float], bounds: Sequence[float], futility: Sequence[float] | None = None
) -> Crossing:
    """Power, stopping probabilities per look and expected information when ``E[Z_K] = drift``.

    ``futility``: per-look lower bounds on the Z scale (``-inf`` = none; the last look has none: the
    candidate is rejected there if it has not crossed). Futility is applied as the gate applies it.
    """
    t = check_fractions(fractions)
    lows = list(futility or []) + [-math.inf] * (len(t) - len(futility or []))
    walk, eff, fut = _Walk(drift), [], []
    for k, tk in enumerate(t):
        high = bounds[k] * math.sqrt(tk)
        low = lows[k] * math.sqrt(tk) if k < len(t) - 1 else -math.inf
        eff.append(walk.exceed(tk, high) if math.isfinite(high) else 0.0)
        fut.append(walk.advance(tk, low, high))
    stopped_early = [e + f for e, f in zip(eff[:-1], fut[:-1])]
    expected = sum(s * tk for s, tk in zip(stopped_early, t)) + (1.0 - sum(stopped_early)) * t[-1]
    return Crossing(float(sum(eff)), eff, fut, float(expected))


def stagewise_p_value(look: int, z: float, fractions: Sequence[float], bounds: Sequence[float]) -> float:
    """The stage-wise-ordering p-value of stopping at ``look`` (1-based) with combined ``z``.

    ``P_0(crossing before look) + P_0(not crossed before, Z_look >= z)``, with efficacy boundaries only
    (non-binding futility). It is at most the alpha spent by ``look`` exactly when ``z`` reaches the
    boundary there, so ``p < alpha'`` reads as it does for a fixed test.
    """
    t = check_fractions(fractions)
    walk, p = _Walk(0.0), 0.0
    for k in range(look - 1):
        high = bounds[k] * math.sqrt(t[k])
        if math.isfinite(high):
            p += walk.exceed(t[k], high)
        walk.advance(t[k], -math.inf, high)
    p += walk.exceed(t[look - 1], z * math.sqrt(t[look - 1]))
    return float(min(max(p, 0.0), 1.0))


def repeated_ci(
    estimates: Sequence[float], errors: Sequence[float], fractions: Sequence[float], bound: float
) -> tuple[float, float]:
    """Repeated confidence interval of the effect after ``len(estimates)`` looks.

    ``estimates``/``errors``: each look's mean gain and its standard error. The interval holds every
    delta for which the combined statistic ``sum w_j (est_j - delta) / se_j / sqrt(sum w_j^2)`` lies
    within ``±bound``: with the look's efficacy boundary it excludes 0 from below when (in the normal
    approximation) the boundary was crossed, and covers the true gain at every look simultaneously with
    probability at least ``1 - 2 alpha'``.
    """
    w = weights(fractions)[: len(estimates)]
    est, se = np.asarray(estimates, np.float64), np.maximum(np.asarray(errors, np.float64), 1e-12)
    scale = float(np.sum(w / se))
    centre = float(np.sum(w * est / se)) / scale
    half = bound * math.sqrt(float(np.sum(w * w))) / scale
    return centre - half, centre + half


def combined_estimate(estimates: Sequence[float], errors: Sequence[float], fractions: Sequence[float]) -> float:
    """The effect estimate that matches :func:`repeated_ci` (its centre)."""
    return repeated_ci(estimates, errors, fractions, 0.0)[0]


# ---- allocation ---------------------------------------------------------------------------------


def allocate(variances: np.ndarray, total: int, floor: int = 1, kind: str = "neyman") -> np.ndarray:
    """Per-example sample counts of the next look: ``total`` samples over the examples (rows).

    ``variances``: ``[n]`` (or ``[n, R]``, one allocation per column) per-example variance of a score
    estimated from the samples so far (the paired difference varies most where the policies are unsure).
    ``neyman``: counts proportional to the standard deviation, at least ``floor`` each; ``uniform``: as
    even as possible. Deterministic (largest remainder, ties to the lower row), so the champion and every
    candidate, and a rerun, get the same counts.
    """
    v = np.asarray(variances, np.float64)
    flat = v.ndim == 1
    v = v[:, None] if flat else v
    n = v.shape[0]
    if total < floor * n:
        raise ValueError(f"{total} samples cannot give {n} examples {floor} each")
    spare = total - floor * n
    if kind not in ("neyman", "uniform"):
        raise ValueError(f"allocation must be 'neyman' or 'uniform', got {kind!r}")
    sd = np.sqrt(np.maximum(v, 0.0))
    even = np.full_like(sd, spare / n)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(sd.sum(axis=0) > 0, spare * sd / sd.sum(axis=0), even) if kind == "neyman" else even
    counts = np.floor(share + 1e-9).astype(np.int64)
    remainder = spare - counts.sum(axis=0)  # [R]
    order = np.argsort(-(share - counts), axis=0, kind="stable")  # largest remainder first, ties to the lower row
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[:, None].repeat(v.shape[1], axis=1), axis=0)
    counts += rank < remainder[None, :]
    counts += floor
    return counts[:, 0] if flat else counts


def shrunk_variances(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-example variance of a score from its samples' sum, sum of squares and count (``[n]`` or ``[n, R]``),
    shrunk towards the pooled variance of its column by one pseudo-sample (two samples that agree do not
    make an example certain)."""
    s, q, k = (np.asarray(a, np.float64) for a in (sums, squares, counts))
    k_safe = np.maximum(k, 1.0)
    own = np.maximum(q / k_safe - (s / k_safe) ** 2, 0.0) * k_safe / np.maximum(k_safe - 1, 1.0)
    weight = np.maximum(k - 1, 0.0)  # degrees of freedom of each example's own estimate
    pooled = np.sum(own * weight, axis=0) / np.maximum(np.sum(weight, axis=0), 1.0)
    return (own * weight + pooled) / (weight + 1.0)
