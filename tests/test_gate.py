"""The promotion gate: hand-computed test statistics, the correction, every reason, one adoption per iteration."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pydantic
import pytest

from rayrl.evaluation.gate import (
    GateConfig, bootstrap_p_values, corrected_alphas, decide, paired_differences, paired_scores, sign_test_p,
)

FAST = {"bootstrap_resamples": 2000}


def scores(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


# ---- the tests ----------------------------------------------------------------------------------


def test_sign_test_p_matches_hand_computed_binomial_tails():
    assert sign_test_p(9, 10) == 11 / 1024  # C(10,9) + C(10,10) over 2^10
    assert sign_test_p(10, 10) == 1 / 1024
    assert sign_test_p(5, 10) == (252 + 210 + 120 + 45 + 10 + 1) / 1024
    assert sign_test_p(0, 10) == 1.0
    assert sign_test_p(0, 0) == 1.0  # no non-zero difference: no evidence
    assert sign_test_p(1, 1) == 0.5
    assert 0 < sign_test_p(1200, 2000) < 1e-15  # big N stays exact, no overflow
    with pytest.raises(ValueError):
        sign_test_p(3, 2)


def test_sign_test_through_decide_ignores_ties():
    champion = {"arith": np.zeros(14)}
    # 9 wins, 1 loss, 4 ties -> p = P(Bin(10, 1/2) >= 9) = 11/1024
    candidate = {"arith": scores(*[0.25] * 9, -0.25, 0, 0, 0, 0)}
    (d,) = decide(champion, {"t": candidate}, GateConfig(test="sign"))
    assert d.p_value == 11 / 1024
    assert d.statistic == 9
    assert d.test == "sign"
    assert d.adopted and d.reason == "adopted: +0.143 (p = 0.0107 < 0.05)"


def test_bootstrap_p_small_on_clear_gain_and_one_on_identical_scores():
    rng = np.random.default_rng(0)
    difficulty = rng.beta(0.6, 0.9, 400)
    champ = rng.binomial(4, difficulty) / 4
    better = rng.binomial(4, np.clip(difficulty + 0.15, 0, 1)) / 4
    assert bootstrap_p_values(better - champ, 2000, seed=0)[0] < 0.01
    assert bootstrap_p_values(champ - champ, 2000, seed=0)[0] == 1.0  # every resampled mean is 0 <= 0
    # The +1 correction: the smallest p is 1 / (B + 1), never 0.
    assert bootstrap_p_values(np.ones(50), 999, seed=0)[0] == 1 / 1000


def test_bootstrap_is_seeded_and_columns_are_independent_calls():
    rng = np.random.default_rng(1)
    d = rng.normal(0.02, 0.3, size=(300, 3))
    together = bootstrap_p_values(d, 1000, seed=7)
    alone = [bootstrap_p_values(d[:, j], 1000, seed=7)[0] for j in range(3)]
    np.testing.assert_array_equal(together, alone)
    assert not np.array_equal(bootstrap_p_values(d, 1000, seed=8), together)


def test_bootstrap_resamples_within_each_environment():
    d = scores(*[1.0] * 20, *[-1.0] * 20)  # env a wins every example, env b loses every one: mean exactly 0
    assert bootstrap_p_values(d, 1000, seed=0, strata=[20, 20])[0] == 1.0  # each resample keeps 20 + 20
    assert 0.3 < bootstrap_p_values(d, 1000, seed=0)[0] < 0.7  # pooled resampling mixes them
    with pytest.raises(ValueError, match="strata"):
        bootstrap_p_values(d, 1000, seed=0, strata=[20, 19])


def test_bootstrap_p_tracks_the_normal_approximation():
    rng = np.random.default_rng(2)
    d = rng.normal(0.0, 1.0, 2000)
    d = d - d.mean() + 0.05  # mean 0.05, se ~ 1/sqrt(2000) = 0.0224 -> z = 2.24, one-sided p = 0.0126
    p = bootstrap_p_values(d, 20_000, seed=0)[0]
    assert 0.008 < p < 0.018


# ---- multiple comparisons -----------------------------------------------------------------------


def test_correction_arithmetic():
    bonferroni = corrected_alphas([0.01, 0.02, 0.3], GateConfig(), 3)
    assert [a for _, a, _ in bonferroni] == pytest.approx([0.05 / 3] * 3)
    assert [s for s, _, _ in bonferroni] == [True, False, False]
    assert corrected_alphas([0.01], GateConfig(), 8)[0][1] == pytest.approx(0.05 / 8)  # best of 8 trials
    assert corrected_alphas([0.04, 0.2], GateConfig(correction="none"), 2) == [
        (True, 0.05, "uncorrected for 2 candidates"), (False, 0.05, "uncorrected for 2 candidates")
    ]
    # Holm, ordered by p: 0.01 < 0.05/3, 0.02 < 0.05/2, 0.04 < 0.05/1 -> all significant
    holm = corrected_alphas([0.04, 0.01, 0.02], GateConfig(correction="holm"), 3)
    assert [a for _, a, _ in holm] == pytest.approx([0.05, 0.05 / 3, 0.05 / 2])
    assert [s for s, _, _ in holm] == [True, True, True]
    # the step-down stops at the first failure: 0.03 >= 0.05/2, so 0.04 < 0.05 is not significant either
    stopped = corrected_alphas([0.01, 0.03, 0.04], GateConfig(correction="holm"), 3)
    assert [s for s, _, _ in stopped] == [True, False, False]
    assert "stopped at rank 2" in stopped[2][2]
    with pytest.raises(ValueError, match="n_compared"):
        corrected_alphas([0.01, 0.02], GateConfig(), 1)


def test_n_compared_defaults_to_the_number_of_candidates():
    champion = {"arith": np.zeros(10)}
    cands = {name: {"arith": scores(*[0.25] * 9, -0.25)} for name in ("a", "b")}
    cfg = GateConfig(test="sign")
    assert [d.alpha for d in decide(champion, cands, cfg)] == [0.025, 0.025]
    assert [d.alpha for d in decide(champion, cands, cfg, n_compared=5)] == [0.01, 0.01]


# ---- reasons ------------------------------------------------------------------------------------


def test_rejected_for_significance_names_p_and_the_corrected_alpha():
    champion = {"arith": np.zeros(10)}
    weak = {"arith": scores(*[0.25] * 6, *[-0.25] * 4)}  # p = 386/1024 = 0.377
    decisions = decide(champion, {"weak": weak, "twin": {"arith": np.zeros(10)}}, GateConfig(test="sign"))
    assert [d.adopted for d in decisions] == [False, False]
    assert decisions[0].reason == "rejected: p = 0.377 ≥ alpha 0.025 (0.05 / 2 candidates)"
    assert decisions[1].reason == "rejected: p = 1 ≥ alpha 0.025 (0.05 / 2 candidates)"


def test_rejected_for_a_gain_below_min_delta():
    champion = {"arith": np.full(500, 0.5)}
    tiny_gain = {"arith": np.full(500, 0.504)}  # significant (every example wins) but too small to matter
    (d,) = decide(champion, {"t": tiny_gain}, GateConfig(min_delta=0.01, **FAST))
    assert d.p_value == 1 / 2001
    assert not d.adopted
    assert d.reason == "rejected: mean gain 0.004 < min_delta 0.01"


def test_rejected_when_one_environment_regresses():
    champion = {"arith": np.zeros(200), "sat": np.full(50, 0.5)}
    candidate = {"arith": np.full(200, 0.5), "sat": np.full(50, 0.38)}  # pooled gain, but sat drops by 0.12
    (d,) = decide(champion, {"t": candidate}, GateConfig(**FAST))
    assert d.p_value < 0.01 and d.mean_gain == pytest.approx((200 * 0.5 - 50 * 0.12) / 250)
    assert d.reason == "rejected: environment 'sat' regressed by 0.12 > max_regression 0.05"
    assert d.per_env["sat"] == pytest.approx({"champion": 0.5, "candidate": 0.38, "delta": -0.12, "n": 50})
    assert d.per_env["arith"]["n"] == 200


def test_every_failed_condition_is_named():
    champion = {"arith": np.full(20, 0.5), "sat": np.full(20, 0.5)}
    candidate = {"arith": np.full(20, 0.5), "sat": np.full(20, 0.3)}
    (d,) = decide(champion, {"t": candidate}, GateConfig(min_delta=0.01, test="sign"))
    assert d.reason == ("rejected: p = 1 ≥ alpha 0.05; mean gain -0.1 < min_delta 0.01; "
                        "environment 'sat' regressed by 0.2 > max_regression 0.05")


def test_adopted_reason_and_fields():
    rng = np.random.default_rng(3)
    champ = rng.binomial(4, rng.beta(0.6, 0.9, 300)) / 4
    cand = np.clip(champ + 0.25, 0, 1)
    (d,) = decide({"arith": champ}, {"t": {"arith": cand}}, GateConfig(**FAST), parent="base")
    assert d.adopted and d.parent == "base" and d.candidate == "t"
    assert d.reason == f"adopted: {d.mean_gain:+.3g} (p = 0.0005 < 0.05)"
    assert d.statistic > 5  # studentised mean difference
    assert d.per_env["arith"]["delta"] == pytest.approx(d.mean_gain)


def test_at_most_one_candidate_is_adopted_the_largest_gain():
    champion = {"arith": np.zeros(100)}
    cands = {"small": {"arith": np.full(100, 0.25)}, "large": {"arith": np.full(100, 0.5)},
             "none": {"arith": np.zeros(100)}}
    decisions = decide(champion, cands, GateConfig(**FAST))
    assert [d.adopted for d in decisions] == [False, True, False]
    assert decisions[0].reason == ("rejected: passed the gate (+0.25, p = 0.0005), but 'large' was adopted "
                                   "with a larger gain (+0.5)")
    assert decide(champion, {}, GateConfig()) == []


# ---- inputs -------------------------------------------------------------------------------------


def test_shape_mismatch_and_missing_environment_name_the_environment():
    champion = {"arith": np.zeros(10), "sat": np.zeros(5)}
    with pytest.raises(ValueError, match="environment 'sat'.*candidate 'short'"):
        decide(champion, {"short": {"arith": np.zeros(10), "sat": np.zeros(4)}}, GateConfig())
    with pytest.raises(ValueError, match="environment 'sat': candidate 'half' lacks it"):
        decide(champion, {"half": {"arith": np.zeros(10)}}, GateConfig())
    with pytest.raises(ValueError, match="environment 'arith'.*finite"):
        paired_differences({"arith": scores(0, np.nan)}, {"arith": scores(0, 1)})


def test_samples_are_averaged_per_example():
    champion = {"arith": np.array([[0, 0, 0, 0], [1, 1, 0, 0]], dtype=float)}  # [n=2, K=4]
    candidate = {"arith": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=float)}
    diffs, per_env = paired_differences(champion, candidate)
    np.testing.assert_allclose(diffs, [1.0, 0.25])
    assert per_env["arith"] == pytest.approx({"champion": 0.25, "candidate": 0.875, "delta": 0.625, "n": 2})
    with pytest.raises(ValueError, match="same examples, same K"):
        paired_differences(champion, {"arith": np.ones((2, 3))})


def test_paired_scores_aligns_candidate_to_champion_example_order():
    def result(ids, rows):
        return SimpleNamespace(envs={"arith": SimpleNamespace(example_ids=ids, scores=np.array(rows, float))})

    champ, cand = paired_scores(result(["a", "b", "c"], [[0, 0], [1, 0], [1, 1]]),
                                result(["c", "a", "b"], [[1, 0], [1, 1], [0, 0]]))
    np.testing.assert_allclose(champ["arith"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(cand["arith"], [1.0, 0.0, 0.5])  # a, b, c
    with pytest.raises(ValueError, match="environment 'arith': .*different examples"):
        paired_scores(result(["a", "b"], [[0], [1]]), result(["a", "x"], [[0], [1]]))


def test_gate_config_is_typed_and_closed():
    cfg = GateConfig()
    assert (cfg.alpha, cfg.min_delta, cfg.max_regression, cfg.test, cfg.correction, cfg.samples) == (
        0.05, 0.0, 0.05, "permutation", "bonferroni", 4)
    with pytest.raises(pydantic.ValidationError):
        GateConfig(alpah=0.1)
    with pytest.raises(pydantic.ValidationError):
        GateConfig(test="t-test")


def test_permutation_test_is_exact_on_a_tiny_case_and_clear_on_a_gain():
    from rayrl.evaluation.gate import permutation_p_values

    # d = (1, 1, 1): of the 8 sign vectors only all-plus reaches the observed sum -> p -> 1/8
    p = permutation_p_values(np.array([1.0, 1.0, 1.0]), resamples=40_000, seed=0)[0]
    assert abs(p - 1 / 8) < 0.01
    assert permutation_p_values(np.zeros(50), 1000, 0)[0] == 1.0  # no difference at all: never significant
    rng = np.random.default_rng(1)
    gain = rng.normal(0.1, 0.3, size=400)
    assert permutation_p_values(gain, 2000, 0)[0] < 0.01
    assert permutation_p_values(-gain, 2000, 0)[0] > 0.99


def test_permutation_test_false_positive_rate_under_a_a_is_at_most_alpha():
    """A/A: both columns are draws of the same policy, so the sign-flip test is exact: about alpha of
    200 repetitions reject at 0.05 (binomial 99.9% upper bound ~ 0.11)."""
    from rayrl.evaluation.gate import permutation_p_values

    rng = np.random.default_rng(7)
    p_true = rng.beta(0.6, 0.9, size=300)
    a = rng.binomial(4, p_true[:, None], size=(300, 200)) / 4
    b = rng.binomial(4, p_true[:, None], size=(300, 200)) / 4
    rate = float((permutation_p_values(b - a, 2000, 0) < 0.05).mean())
    assert rate <= 0.1, rate
