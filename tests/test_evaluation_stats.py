"""Evaluation statistics against hand-computed values (no Ray, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayrl.evaluation.stats import (
    aggregate, beta_ppf, betainc, dominated_by, dominates, is_binary, jeffreys_interval, pareto_front, summarize,
)

# (successes, n) -> 10th and 90th percentiles of Beta(successes + 0.5, n - successes + 0.5),
# computed once with scipy 1.17.1: scipy.stats.beta.ppf([0.1, 0.9], k + 0.5, n - k + 0.5).
JEFFREYS_80 = {
    (0, 1): (0.0061812439384296685, 0.6486428019743724),
    (3, 10): (0.1505912258762015, 0.5017811181000884),
    (10, 10): (0.8764257936713199, 0.9992302446953152),
    (13, 30): (0.3229410612206633, 0.5498926651218499),
    (412, 1000): (0.3921916811368204, 0.4320594725930709),
    (0, 1000): (7.893382292542787e-06, 0.0013515194122113363),
    (5000, 10000): (0.49359266543611735, 0.5064073345638826),
}


@pytest.mark.parametrize("k,n", sorted(JEFFREYS_80))
def test_jeffreys_interval_matches_scipy_constants(k, n):
    low, high = jeffreys_interval(k, n)
    assert low == pytest.approx(JEFFREYS_80[k, n][0], rel=1e-9, abs=1e-12)
    assert high == pytest.approx(JEFFREYS_80[k, n][1], rel=1e-9, abs=1e-12)


def test_beta_closed_forms():
    # Beta(0.5, 0.5) is the arcsine law: CDF (2/pi) asin(sqrt(x)), quantile sin^2(pi q / 2).
    for q in (0.1, 0.5, 0.9):
        assert beta_ppf(q, 0.5, 0.5) == pytest.approx(math.sin(math.pi * q / 2) ** 2, abs=1e-12)
    # Beta(a, 1): CDF x^a; Beta(1, b): CDF 1 - (1 - x)^b.
    for x in (0.01, 0.3, 0.77, 0.999):
        assert betainc(2.5, 1.0, x) == pytest.approx(x**2.5, rel=1e-12)
        assert betainc(1.0, 3.5, x) == pytest.approx(1 - (1 - x) ** 3.5, rel=1e-12)
    # Symmetry: I_x(a, b) = 1 - I_{1-x}(b, a), and the median of a symmetric Beta is 1/2.
    assert betainc(7.5, 3.5, 0.4) == pytest.approx(1 - betainc(3.5, 7.5, 0.6), abs=1e-14)
    assert beta_ppf(0.5, 40.5, 40.5) == pytest.approx(0.5, abs=1e-12)
    assert betainc(2.0, 3.0, 0.0) == 0.0 and betainc(2.0, 3.0, 1.0) == 1.0


def test_jeffreys_interval_is_symmetric_and_narrows():
    low, high = jeffreys_interval(3, 10)
    mirrored = jeffreys_interval(7, 10)
    assert (low, high) == pytest.approx((1 - mirrored[1], 1 - mirrored[0]), abs=1e-12)
    widths = [np.subtract(*jeffreys_interval(n // 2, n)[::-1]) for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]
    with pytest.raises(ValueError):
        jeffreys_interval(11, 10)


def test_summarize_binary_scores():
    # 3 of 10 correct: mean 0.3, std sqrt(0.3 * 0.7), median 0.
    s = summarize([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    assert (s.n, s.mean, s.median, s.success_rate, s.accuracy) == (10, pytest.approx(0.3), 0.0, 0.3, pytest.approx(0.3))
    assert s.std == pytest.approx(math.sqrt(0.21))
    assert s.binary
    assert (s.success_ci_low, s.success_ci_high) == pytest.approx(JEFFREYS_80[3, 10], rel=1e-9)


def test_summarize_partial_credit_scores():
    # Not binary: no accuracy; success rate = share of non-zero scores (3 of 4).
    s = summarize(np.array([[0.5, 0.0], [1.0, 0.25]]))
    assert s.accuracy is None and not s.binary and not is_binary(np.array([0.5, 1.0]))
    assert (s.n, s.mean, s.median, s.success_rate) == (4, pytest.approx(0.4375), pytest.approx(0.375), 0.75)
    assert s.std == pytest.approx(np.std([0.5, 0.0, 1.0, 0.25]))
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([0.0, math.nan])


def test_aggregate_weights_environments_by_samples():
    # env a: 2 of 4 right (0.5); env b: 11 of 12 right... mean over 16 samples = 13/16, not (0.5 + 11/12) / 2.
    a = np.array([1, 0, 1, 0], dtype=float)
    b = np.array([1] * 11 + [0], dtype=float)
    pooled = aggregate({"a": a, "b": b.reshape(6, 2)})
    assert pooled.n == 16
    assert pooled.mean == pytest.approx(13 / 16)
    assert pooled.accuracy == pytest.approx(13 / 16)
    assert (pooled.success_ci_low, pooled.success_ci_high) == jeffreys_interval(13, 16)
    assert aggregate({"a": a, "c": np.array([0.5])}).accuracy is None  # one non-binary env: no accuracy


def test_pareto_dominance():
    a = {"x": 0.5, "y": 0.4}
    assert dominates({"x": 0.6, "y": 0.4}, a)  # better on x, equal on y
    assert not dominates(a, a)  # equal everywhere: not strictly better anywhere
    assert not dominates({"x": 0.6, "y": 0.3}, a) and not dominates(a, {"x": 0.6, "y": 0.3})  # a trade-off
    assert not dominates({"x": math.nan, "y": 1.0}, a)
    with pytest.raises(ValueError):
        dominates({"x": 1.0}, a)


def test_pareto_front_and_dominated_by():
    points = {
        10: {"x": 0.2, "y": 0.2},  # dominated by 20, 30 and 40
        20: {"x": 0.5, "y": 0.3},  # dominated by 40
        30: {"x": 0.3, "y": 0.6},  # front (best y)
        40: {"x": 0.6, "y": 0.4},  # front (best x)
        50: {"x": 0.6, "y": 0.4},  # front: ties with 40, neither dominates
    }
    assert pareto_front(points) == [30, 40, 50]
    assert dominated_by(points) == {10: [20, 30, 40, 50], 20: [40, 50], 30: [], 40: [], 50: []}
    # One environment: the front is the best step(s).
    assert pareto_front({1: {"x": 0.1}, 2: {"x": 0.3}, 3: {"x": 0.3}}) == [2, 3]


def test_against_scipy_when_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.uniform(0.2, 300, 2)
        q = rng.uniform(0.001, 0.999)
        assert beta_ppf(q, a, b) == pytest.approx(scipy_stats.beta.ppf(q, a, b), rel=1e-8, abs=1e-12)
