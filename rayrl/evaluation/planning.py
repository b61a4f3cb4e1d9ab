"""Power planning for the promotion gate: the smallest gain it adopts, and what it costs (pure maths).

numpy, the standard library and the gate's own modules only (nothing of Ray or torch): ``rayrl gate plan``
imports this.

**Variance model.** Champion and candidate are scored on the same n confirmation examples, K samples each,
with the same sampling seeds. With binary rewards, a paired sample's difference has variance
``2 v crn`` where ``v = mean_i p_i (1 - p_i)`` over the examples (``p_i``: the champion's success rate on
example i; the candidate's is close to it when the gain is small), ``crn`` the share of that variance left
by common random numbers (1.0: none; 0.41-0.42 was measured on the tiny model for a step_600 vs step_800
pair and for the promotion demo's adopted pair), and ``tau^2`` the variance over examples of the true per-example gain (``--tau2``; default 0, but
0.0375 was measured on the promotion demo's adopted +0.036 pair: a trained candidate gains on some examples
and loses on others, and more samples per example do not shrink that). Without per-example rates, the
rates are taken as ``Beta(p c, (1 - p) c)`` around the champion's accuracy p, with ``c = 1.5``:
``v = p (1 - p) c / (c + 1)``. The standard error of the mean gain is then ``sqrt((2 v crn / K + tau^2) / n)``.

**Fixed design** (one look of K samples): ``MDE = (z_{1-alpha'} + z_{power}) SE`` with the one-sided
``alpha' = alpha / m`` of m candidates (Bonferroni; Holm is never less powerful), and ``alpha / (T m)`` for
the first of T iterations with ``gate.alpha_scope = "sweep"``.

**Sequential design**: the drift (expected combined Z at the last look) of a gain is ``gain / SE_full``
where ``SE_full`` is the standard error at the full budget (``budget x K`` samples per example); power,
stopping looks and the expected information come from :func:`rayrl.evaluation.sequential.crossing_probabilities`
with the gate's boundaries. The drift at which power reaches the target depends on the design only, so
``MDE = drift_MDE x SE_full``. Samples are taken as spread evenly over the examples: the gate's Neyman
allocation usually does better, so the sequential figures are on the safe side.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from rayrl.evaluation.gate import GateConfig
from rayrl.evaluation.sequential import (
    Crossing,
    crossing_probabilities,
    efficacy_bounds,
)

_NORMAL = NormalDist()
CONCENTRATION = 1.5  # c of the Beta(p c, (1 - p) c) per-example rates
TARGET_POWER = 0.8
GAINS = (0.02, 0.05)  # gains whose power the plan reports


# ---- v: the mean per-example Bernoulli variance ----------------------------------------------------


def beta_variance(accuracy: float, concentration: float = CONCENTRATION) -> float:
    """``v = E[p_i (1 - p_i)]`` when the per-example rates are ``Beta(p c, (1 - p) c)`` with mean ``accuracy``."""
    if not 0 < accuracy < 1:
        raise ValueError(f"accuracy must lie strictly between 0 and 1, got {accuracy}")
    if concentration <= 0:
        raise ValueError(f"concentration must be positive, got {concentration}")
    return accuracy * (1 - accuracy) * concentration / (concentration + 1)


def rate_variance(rates: Iterable[float]) -> float:
    """``v = mean_i p_i (1 - p_i)`` from known per-example success rates."""
    p = np.asarray(list(rates), np.float64)
    if p.size == 0 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("per-example rates must be a non-empty list of numbers in [0, 1]")
    return float(np.mean(p * (1 - p)))


def sample_variance(rewards: Sequence[Sequence[float]]) -> float:
    """``v`` from per-example samples (rows: examples, any number of samples each): the mean over examples of
    each row's unbiased variance (``p̂ (1 - p̂) K / (K - 1)`` for binary rewards; also right for other rewards).
    Rows with fewer than two samples say nothing about their variance and are left out."""
    per_row = []
    for row in rewards:
        x = np.asarray(row, np.float64).ravel()
        x = x[np.isfinite(x)]
        if x.size >= 2:
            per_row.append(float(np.var(x, ddof=1)))
    if not per_row:
        raise ValueError("a profile needs at least two samples of some example to estimate its variance")
    return float(np.mean(per_row))


@dataclass
class Profile:
    """What a profile of per-example rewards says: v, the mean reward and the examples it rests on."""

    variance: float
    accuracy: float
    examples: int


def profile_variance(profile: Mapping[str, Sequence]) -> Profile:
    """``v`` pooled over every environment (weighted by examples) of a profile ``{env: rows}``.

    Each environment's rows are either per-example lists of rewards (``[[0, 1, 1, 0], ...]``), per-example
    success rates (``[0.75, 0.25, ...]``), or a champion profile's per-example ``sum``, ``squares`` and
    ``count`` of rewards (``ROOT/profiles/<champion>.json``, written by the sequential gate).
    """
    if not isinstance(profile, Mapping) or not profile:
        raise ValueError('a profile is a JSON object {"environment": [[rewards of example 1], ...], ...}')
    total, weight, means = 0.0, 0, []
    for env, rows in profile.items():
        if isinstance(rows, Mapping) and {"sum", "squares", "count"} <= set(rows):  # a champion profile
            s, q, k = (np.asarray(rows[key], np.float64) for key in ("sum", "squares", "count"))
            if not s.size or s.shape != q.shape or s.shape != k.shape:
                raise ValueError(f"profile environment '{env}': sum, squares and count must be lists of one length")
            ok = k >= 2
            if not ok.any():
                raise ValueError(f"profile environment '{env}': no example has two samples")
            v = float(np.mean((q[ok] - s[ok] ** 2 / k[ok]) / (k[ok] - 1)))
            used = int(ok.sum())
            means.extend((s[k > 0] / k[k > 0]).tolist())
            total, weight = total + v * used, weight + used
            continue
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"profile environment '{env}': expected a non-empty list of examples")
        if all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rows):
            v, used = rate_variance(rows), len(rows)
            means.extend(float(r) for r in rows)
        elif all(isinstance(r, list) for r in rows):
            try:
                v = sample_variance(rows)
            except ValueError as e:
                raise ValueError(f"profile environment '{env}': {e}") from None
            used = sum(1 for r in rows if np.isfinite(np.asarray(r, np.float64)).sum() >= 2)
            means.extend(float(np.nanmean(np.asarray(r, np.float64))) for r in rows if len(r))
        else:
            raise ValueError(f"profile environment '{env}': give every example as a list of rewards, or every "
                             "example as one success rate")
        total, weight = total + v * used, weight + used
    return Profile(total / weight, float(np.mean(means)), weight)


# ---- the gate's operating characteristics ----------------------------------------------------------


@dataclass
class Inputs:
    """What the power of the gate depends on besides its design."""

    examples: int  # n: confirmation examples, every environment together
    samples: int  # K: samples per example and policy (gate.samples)
    candidates: int  # m: candidates compared per iteration
    variance: float  # v
    crn: float = 1.0  # variance factor of common random numbers (1.0: none)
    iterations: int = 1  # T: iterations of the `rayrl tune` run (gate.alpha_scope "sweep" divides alpha among them)
    heterogeneity: float = 0.0  # tau^2: variance over examples of the true per-example gain (more samples do not shrink it)

    def __post_init__(self) -> None:
        if min(self.examples, self.samples, self.candidates, self.iterations) < 1:
            raise ValueError(f"examples, samples, candidates and iterations must be at least 1, got {self.examples}, "
                             f"{self.samples}, {self.candidates}, {self.iterations}")
        if not self.variance > 0 or not self.crn > 0:
            raise ValueError(f"variance and crn must be positive, got {self.variance}, {self.crn}")
        if self.heterogeneity < 0:
            raise ValueError(f"heterogeneity (tau^2) must be at least 0, got {self.heterogeneity}")

    @property
    def today(self) -> int:
        """Samples per policy of today's fixed design: n K."""
        return self.examples * self.samples


def standard_error(inputs: Inputs, budget: float = 1.0) -> float:
    """Standard error of the mean paired gain with ``budget x K`` samples per example and policy."""
    per_example = 2 * inputs.variance * inputs.crn / (inputs.samples * budget) + inputs.heterogeneity
    return math.sqrt(per_example / inputs.examples)


def iteration_alpha(gate: GateConfig, iterations: int = 1) -> float:
    """An iteration's alpha: ``alpha / T`` with ``gate.alpha_scope = "sweep"`` (the first iteration's, and every
    iteration's after one that adopted nothing; an iteration after an adoption gets more), else ``alpha``."""
    return gate.alpha / iterations if gate.alpha_scope == "sweep" else gate.alpha


def corrected_alpha(gate: GateConfig, candidates: int, iterations: int = 1) -> float:
    """One candidate's one-sided alpha: the iteration's alpha over ``m`` (Bonferroni, and Holm's first step)
    unless ``gate.correction = "none"``."""
    alpha = iteration_alpha(gate, iterations)
    return alpha if gate.correction == "none" else alpha / candidates


@dataclass
class Plan:
    """One design's operating characteristics for given inputs. Costs are samples per policy."""

    design: str  # "fixed" or "sequential"
    alpha: float  # alpha'
    standard_error: float  # of the mean gain at the design's full size
    mde: float  # smallest gain adopted with TARGET_POWER
    power: dict[float, float]  # gain -> P(adopt)
    cost_null: float  # expected samples per policy when the gain is 0
    cost_at_mde: float  # ... when the gain is the MDE
    max_cost: float  # the most samples per policy
    today: int  # n K: samples per policy of today's fixed design
    iteration_null: float  # expected samples of an iteration (champion + m candidates), every gain 0
    iteration_at_mde: float  # ... one candidate at the MDE, the others at 0
    iteration_max: float
    bounds: list[float] = field(default_factory=list)  # sequential: the efficacy boundaries of the combined Z


def fixed_power(gain: float, se: float, alpha: float) -> float:
    """P(one-sided z test at ``alpha`` rejects) when the mean gain is ``gain`` with standard error ``se``."""
    return _NORMAL.cdf(gain / se - _NORMAL.inv_cdf(1 - alpha))


def fixed_mde(se: float, alpha: float, power: float = TARGET_POWER) -> float:
    """``(z_{1-alpha} + z_power) SE``."""
    return (_NORMAL.inv_cdf(1 - alpha) + _NORMAL.inv_cdf(power)) * se


def fixed_plan(gate: GateConfig, inputs: Inputs, gains: Sequence[float] = GAINS) -> Plan:
    """Today's design: one look of K samples per example."""
    alpha = corrected_alpha(gate, inputs.candidates, inputs.iterations)
    se = standard_error(inputs)
    iteration = (inputs.candidates + 1) * inputs.today
    return Plan("fixed", alpha, se, fixed_mde(se, alpha), {g: fixed_power(g, se, alpha) for g in gains},
                inputs.today, inputs.today, inputs.today, inputs.today, iteration, iteration, iteration)


def _design(gate: GateConfig, alpha: float) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    looks = tuple(float(t) for t in gate.looks)
    bounds = tuple(float(b) for b in efficacy_bounds(looks, alpha, gate.spending, gate.efficacy_from_look))
    return looks, bounds, tuple(float(f) for f in gate.futility)


@functools.lru_cache(maxsize=64)
def _crossing(drift: float, looks: tuple, bounds: tuple, futility: tuple) -> Crossing:
    return crossing_probabilities(drift, looks, bounds, list(futility))


def sequential_crossing(gate: GateConfig, alpha: float, drift: float) -> Crossing:
    """The gate's crossing probabilities for one candidate whose expected combined Z at the last look is ``drift``."""
    return _crossing(float(drift), *_design(gate, alpha))


@functools.lru_cache(maxsize=64)
def _mde_drift(looks: tuple, bounds: tuple, futility: tuple, alpha: float, power: float, tol: float) -> float:
    """The drift at which the design's power is ``power``: bisection. The fixed design with the full budget's
    information (``z_{1-alpha} + z_power``) is the lower end of the bracket (spreading alpha over looks and
    stopping for futility only cost power), the last look's boundary instead of ``z_{1-alpha}`` the upper."""
    low = _NORMAL.inv_cdf(1 - alpha) + _NORMAL.inv_cdf(power)
    high = max(bounds[-1], _NORMAL.inv_cdf(1 - alpha)) + _NORMAL.inv_cdf(power) + tol
    if _crossing(low, looks, bounds, futility).power >= power:
        low = 0.0
    while _crossing(high, looks, bounds, futility).power < power:
        low, high = high, high * 1.5
    while high - low > tol:
        mid = (low + high) / 2
        low, high = (mid, high) if _crossing(mid, looks, bounds, futility).power < power else (low, mid)
    return high


def sequential_mde_drift(gate: GateConfig, alpha: float, power: float = TARGET_POWER, tol: float = 1e-3) -> float:
    """The drift (gain / SE at the full budget) the sequential gate adopts with probability ``power`` (rounded up
    to ``tol``: about 0.03% of the MDE)."""
    return _mde_drift(*_design(gate, alpha), float(alpha), float(power), float(tol))


def stop_distribution(crossing: Crossing) -> tuple[list[float], list[float]]:
    """Per look k (0-based): P(adopted by look k) and P(stopped for futility by look k), cumulative."""
    adopted = list(np.cumsum(crossing.efficacy))
    futile = list(np.cumsum(crossing.futility[:-1])) + [float("nan")]  # the last look rejects; not a futility stop
    return adopted, futile


def iteration_fractions(looks: Sequence[float], crossings: Sequence[Crossing]) -> tuple[float, list[float]]:
    """Expected information fractions an iteration scores: the champion's, and each candidate's.

    The gate scores the champion while any candidate runs and ends at the first adoption; a candidate runs
    until it stops, or the iteration ends. Candidates are taken as independent (they share the champion's
    samples, so they are not quite), and each candidate's samples as spread evenly (no Neyman allocation).
    ``P(iteration runs past look k) = prod_j P(j not adopted by k) - prod_j P(j stopped for futility by k)``.
    """
    t = list(looks)
    stops = [stop_distribution(c) for c in crossings]
    champion, candidates = t[0], [t[0]] * len(crossings)
    for k in range(len(t) - 1):
        not_adopted = [1.0 - a[k] for a, _ in stops]
        futile = [f[k] for _, f in stops]
        step = t[k + 1] - t[k]
        champion += (math.prod(not_adopted) - math.prod(futile)) * step
        for j, (a, f) in enumerate(stops):
            running = 1.0 - a[k] - f[k]
            others = math.prod(x for i, x in enumerate(not_adopted) if i != j)
            candidates[j] += running * others * step
    return champion, candidates


def sequential_plan(gate: GateConfig, inputs: Inputs, gains: Sequence[float] = GAINS) -> Plan:
    """The sequential gate's MDE, power and expected cost (uniform allocation: conservative)."""
    alpha = corrected_alpha(gate, inputs.candidates, inputs.iterations)
    se_full = standard_error(inputs, gate.budget)
    drift_mde = sequential_mde_drift(gate, alpha)
    most = gate.budget * inputs.today
    null = sequential_crossing(gate, alpha, 0.0)
    at_mde = sequential_crossing(gate, alpha, drift_mde)
    power = {g: sequential_crossing(gate, alpha, g / se_full).power for g in gains}
    m = inputs.candidates

    def iteration(first: Crossing) -> float:
        champion, candidates = iteration_fractions(gate.looks, [first] + [null] * (m - 1))
        return (champion + sum(candidates)) * most

    return Plan("sequential", alpha, se_full, drift_mde * se_full, power, null.expected_fraction * most,
                at_mde.expected_fraction * most, most, inputs.today, iteration(null), iteration(at_mde),
                (m + 1) * most, list(_design(gate, alpha)[1]))


def plan(gate: GateConfig, inputs: Inputs, design: str, gains: Sequence[float] = GAINS) -> Plan:
    if design == "fixed":
        return fixed_plan(gate, inputs, gains)
    if design == "sequential":
        return sequential_plan(gate, inputs, gains)
    raise ValueError(f"design must be 'fixed' or 'sequential', got {design!r}")


# ---- what buys what ----------------------------------------------------------------------------------


@dataclass
class Lever:
    """One change to the gate's inputs and what it buys: the MDE of both designs and their costs, relative to
    today's fixed n K samples per policy (of the unchanged inputs)."""

    change: str  # "K x2"
    setting: str  # how to make it: "gate.samples = 8"
    fixed: Plan | None  # None where the change does not apply to the fixed design (budget)
    sequential: Plan


def what_buys_what(gate: GateConfig, inputs: Inputs, eval_examples: int = 0, environments: int = 1,
                   budget: float = 3.0, crn: float = 0.6) -> list[Lever]:
    """Today's inputs, then K x2, n x2, the sequential budget at ``budget`` and common random numbers at ``crn``.

    ``eval_examples``/``environments``: ``eval.num_examples`` and the environments, to say how many held-out
    examples per environment twice the confirmation examples need.
    """
    from dataclasses import replace

    per_env = math.ceil(2 * inputs.examples / max(environments, 1))
    more_budget = gate.model_copy(update={"budget": float(budget)})
    levers = [("today", "", inputs, gate, True),
              ("K x2", f"gate.samples = {2 * inputs.samples}", replace(inputs, samples=2 * inputs.samples), gate,
               True),
              ("n x2", (f"eval.confirm_examples = {per_env} (held-out split of at least {eval_examples + per_env} "
                        "per environment)"), replace(inputs, examples=2 * inputs.examples), gate, True),
              (f"budget {budget:g}", f"gate.budget = {budget:g}", inputs, more_budget, False),
              (f"crn {crn:g}", f"shared seeds leaving {crn:.0%} of the paired variance (rayrl gate plan --crn {crn:g})",
               replace(inputs, crn=crn), gate, True)]
    return [Lever(change, setting, fixed_plan(g, i, ()) if with_fixed else None, sequential_plan(g, i, ()))
            for change, setting, i, g, with_fixed in levers]
