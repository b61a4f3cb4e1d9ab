"""The sequential promotion gate: boundaries against published values and Monte Carlo, the decisions it takes
look by look, the allocation of samples, the confidence interval it records."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest

from rayrl.evaluation.gate import GateConfig
from rayrl.evaluation.sequential_gate import SequentialGate
from rayrl.evaluation.sequential import (
    allocate, combine, crossing_probabilities, efficacy_bounds, repeated_ci, shrunk_variances, spending,
    stagewise_p_value, weights,
)

LOOKS = [1 / 3, 2 / 3, 1.0]


def test_obrien_fleming_bounds_match_published_values():
    # gsDesign (Lan-DeMets O'Brien-Fleming spending, one-sided 0.025, three equally spaced looks)
    assert efficacy_bounds(LOOKS, 0.025) == pytest.approx([3.7103, 2.5114, 1.9930], abs=0.003)
    assert efficacy_bounds([1.0], 0.05) == pytest.approx([1.6449], abs=1e-3)  # one look: the fixed test
    pocock = efficacy_bounds(LOOKS, 0.025, "pocock")
    assert np.ptp(pocock) < 0.05 and 2.2 < pocock.mean() < 2.4  # roughly constant
    late = efficacy_bounds([0.25, 0.625, 1.0], 0.05 / 3, first=2)
    assert late[0] == math.inf and late[1:] == pytest.approx(efficacy_bounds([0.25, 0.625, 1.0], 0.05 / 3)[1:], abs=0.01)


def test_crossing_probabilities_agree_with_a_brownian_motion_simulation():
    rng = np.random.default_rng(0)
    t = np.array([0.25, 0.625, 1.0])
    bounds, futility = efficacy_bounds(t, 0.05 / 3, first=2), [0.0, 0.75]
    for drift in (0.0, 2.5):
        increments = rng.normal(size=(200_000, 3)) * np.sqrt(np.diff([0, *t])) + drift * np.diff([0, *t])
        z = np.cumsum(increments, axis=1) / np.sqrt(t)
        alive, crossed, futile = np.ones(len(z), bool), np.zeros(3), np.zeros(3)
        for k in range(3):
            up = alive & (z[:, k] >= bounds[k])
            down = alive & ~up & (z[:, k] < futility[k]) if k < 2 else np.zeros(len(z), bool)
            crossed[k], futile[k] = up.mean(), down.mean()
            alive &= ~up & ~down
        c = crossing_probabilities(drift, t, bounds, futility)
        assert c.efficacy == pytest.approx(crossed, abs=0.004)
        assert c.futility[:2] == pytest.approx(futile[:2], abs=0.004)
    # non-binding: without futility the false-crossing probability is exactly the alpha spent
    assert crossing_probabilities(0.0, t, bounds).power == pytest.approx(0.05 / 3, rel=1e-3)


def test_stagewise_p_value_is_below_alpha_exactly_when_the_boundary_is_crossed():
    t, alpha = [0.25, 0.625, 1.0], 0.05 / 3
    bounds = efficacy_bounds(t, alpha, first=2)
    for look in (2, 3):
        at = stagewise_p_value(look, bounds[look - 1], t, bounds)
        assert at == pytest.approx(spending(t[look - 1], alpha), rel=1e-3)
        assert stagewise_p_value(look, bounds[look - 1] + 0.05, t, bounds) < at
        assert stagewise_p_value(look, bounds[look - 1] - 0.05, t, bounds) > at
    assert stagewise_p_value(3, 0.0, t, bounds) > 0.4


def test_combination_and_repeated_ci():
    t = [0.25, 0.625, 1.0]
    w = weights(t)
    assert w == pytest.approx(np.sqrt([0.25, 0.375, 0.375]))
    assert combine([1.0, 1.0, 1.0], t) == pytest.approx(np.sum(w) / 1.0)
    assert combine([2.0], t) == pytest.approx(2.0)
    est, se = [0.03, 0.025], [0.01, 0.008]
    z = combine([e / s for e, s in zip(est, se)], t)
    low, high = repeated_ci(est, se, t, bound=z)  # at the bound equal to Z the interval touches 0
    assert low == pytest.approx(0.0, abs=1e-12) and high > 0.05
    low, _ = repeated_ci(est, se, t, bound=z - 0.1)
    assert low > 0


def test_allocation_is_proportional_deterministic_and_keeps_the_total():
    v = np.array([0.25, 0.0, 0.25, 0.0625])
    counts = allocate(v, 20, floor=1)
    assert counts.sum() == 20 and counts.min() >= 1
    assert counts.tolist() == [8, 1, 7, 4]  # 1 + 16 spare x sd / sum(sd) = 1 + [6.4, 0, 6.4, 3.2]; the tie to row 0
    assert (allocate(v, 20) == counts).all()
    assert allocate(np.zeros(4), 10).tolist() == [3, 3, 2, 2]  # no information: as even as possible
    assert allocate(v, 10, kind="uniform").tolist() == [3, 3, 2, 2]
    columns = allocate(np.stack([v, v[::-1]], axis=1), 20)
    assert columns[:, 0].tolist() == counts.tolist() and columns[:, 1].tolist() == [4, 8, 1, 7]  # tie to the lower row
    with pytest.raises(ValueError, match="cannot give"):
        allocate(v, 3)
    # two agreeing samples do not make an example certain: shrunk towards the pooled variance
    shrunk = shrunk_variances(np.array([2.0, 0.0, 1.0]), np.array([2.0, 0.0, 1.0]), np.array([2, 2, 2]))
    assert shrunk[0] == shrunk[1] > 0 and shrunk[2] > shrunk[0]


def _look(gate: SequentialGate, champion: np.ndarray, candidates: dict[str, np.ndarray]):
    return gate.look({"math": champion}, {name: {"math": c} for name, c in candidates.items()}, samples=champion.size)


def test_a_clear_gain_is_adopted_at_the_second_look_with_its_interval():
    rng = np.random.default_rng(1)
    cfg = GateConfig(bootstrap_resamples=2000)
    gate = SequentialGate(cfg, ["better", "same"], parent="champ")
    p = rng.uniform(0.2, 0.8, 400)
    for look in (1, 2):
        champion = rng.binomial(2, p) / 2
        decisions = _look(gate, champion, {"better": rng.binomial(2, np.minimum(p + 0.15, 1)) / 2,
                                          "same": rng.binomial(2, p) / 2})
        if look == 1:
            assert decisions is None  # no efficacy stop before efficacy_from_look
    better, same = decisions
    assert better.adopted and not same.adopted
    assert better.look == 2 and better.looks == 3 and better.design == "sequential"
    assert better.reason.startswith("adopted at look 2 of 3: +")
    assert better.p_value < better.alpha == pytest.approx(0.025)
    low, high = better.effect_ci
    assert 0 < low < better.mean_gain < high and low < 0.15 < high
    assert better.samples == {"candidate": 800, "champion": 800}
    assert better.statistic >= better.boundary and len(better.stage_z) == 2
    assert "rejected at look" in same.reason  # stopped by futility at look 1, or when 'better' was adopted


def test_futility_stops_an_identical_candidate_at_the_first_look():
    rng = np.random.default_rng(2)
    gate = SequentialGate(GateConfig(bootstrap_resamples=2000), ["twin"])
    champion = rng.binomial(2, rng.uniform(0.2, 0.8, 300)) / 2
    (twin,) = _look(gate, champion, {"twin": champion.copy()})
    assert not twin.adopted and twin.look == 1
    assert "(futility)" in twin.reason and twin.p_value > 0.5
    with pytest.raises(ValueError, match="already decided"):
        _look(gate, champion, {"twin": champion})


def test_crossing_with_a_regressed_environment_is_rejected_naming_it():
    rng = np.random.default_rng(3)
    gate = SequentialGate(GateConfig(bootstrap_resamples=2000, max_regression=0.02), ["mixed"])
    p = rng.uniform(0.2, 0.8, 400)
    for _ in range(3):
        champ = {"math": rng.binomial(2, p) / 2, "words": rng.binomial(2, p) / 2}
        cand = {"math": rng.binomial(2, np.minimum(p + 0.3, 1)) / 2, "words": rng.binomial(2, p * 0.9) / 2}
        decisions = gate.look(champ, {"mixed": cand}, samples=1600)
        if decisions:
            break
    (mixed,) = decisions
    assert not mixed.adopted and "crossed the boundary, but environment 'words' regressed by" in mixed.reason


def test_the_last_look_rejects_what_never_crossed_and_a_wrong_candidate_set_is_an_error():
    rng = np.random.default_rng(4)
    gate = SequentialGate(GateConfig(bootstrap_resamples=2000, futility=[]), ["flat"])
    p = rng.uniform(0.2, 0.8, 200)
    with pytest.raises(ValueError, match="running candidates are"):
        _look(gate, p, {"other": p})
    decisions = None
    for _ in range(3):
        decisions = _look(gate, rng.binomial(2, p) / 2, {"flat": rng.binomial(2, p) / 2})
    (flat,) = decisions
    assert not flat.adopted and flat.look == 3 and "rejected at look 3 of 3: Z = " in flat.reason
    assert flat.p_value >= flat.alpha


def test_gate_config_checks_the_design():
    with pytest.raises(pydantic.ValidationError, match="gate.looks"):
        GateConfig(looks=[0.5, 0.9])
    with pytest.raises(pydantic.ValidationError, match="futility has 3 values for 3 looks"):
        GateConfig(futility=[0, 0, 0])
    with pytest.raises(pydantic.ValidationError, match="every look needs at least 1"):
        GateConfig(samples=1, budget=1.0)
    GateConfig(samples=1, budget=1.0, design="fixed")  # the fixed design has no looks to fill


def test_the_run_s_alpha_is_shared_over_its_iterations_and_passed_on_by_an_adoption():
    from rayrl.evaluation.gate import iteration_alphas

    assert iteration_alphas(0.05, [], 1) == 0.05  # one iteration: the whole alpha
    assert iteration_alphas(0.05, [], 4) == pytest.approx(0.0125)
    assert iteration_alphas(0.05, [True], 4) == pytest.approx(0.025)  # the adoption passes its alpha on
    assert iteration_alphas(0.05, [True, True], 4) == pytest.approx(0.0375)
    assert iteration_alphas(0.05, [True, False], 4) == pytest.approx(0.0125)  # a rejection does not
    assert iteration_alphas(0.05, [False] * 3, 4, scope="iteration") == 0.05
    with pytest.raises(ValueError, match="planned 2 iteration"):
        iteration_alphas(0.05, [False, False], 2)
    # family-wise over a run: even if every iteration were a null tested at its own alpha independently,
    # the chance of any false adoption is at most the sum of the alphas spent while nothing true was adopted
    assert sum(iteration_alphas(0.05, [False] * t, 5) for t in range(5)) == pytest.approx(0.05)


def test_a_champion_profile_is_read_back_in_the_split_s_order_and_a_mismatch_is_ignored(tmp_path, caplog):
    from rayrl.tuning.profiles import load_profile, save_profile, stats_of

    scores = np.array([[1.0, 1.0, np.nan], [0.0, 1.0, 0.0]])  # a NaN pads an example scored fewer times
    stats = stats_of(scores)
    assert stats.tolist() == [[2.0, 1.0], [2.0, 1.0], [2.0, 3.0]]
    save_profile(tmp_path, "initial", {"math": ["a", "b"]}, {"math": stats})
    back = load_profile(tmp_path, "initial", {"math": ["b", "a"]})
    assert back["math"].tolist() == [[1.0, 2.0], [1.0, 2.0], [3.0, 2.0]]
    assert load_profile(tmp_path, "nobody", {"math": ["a"]}) is None
    assert load_profile(tmp_path, "initial", {"math": ["a", "c"]}) is None
    assert "does not fit this confirmation split" in caplog.text
