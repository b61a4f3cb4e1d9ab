"""Promotion gate: adopt a candidate only if it beats the champion significantly on the confirmation split.

Pure functions of per-example scores (numpy and the standard library only; nothing of Ray or torch).

**Inputs.** Champion and candidates are scored on the same confirmation examples (never used for trial
selection) with the same K sampling seeds; the gate takes, per environment, each example's mean score
over its K samples (an ``[n]`` array, or the raw ``[n, K]`` scores, averaged here).

**The test.** The paired differences ``d_i = candidate_i - champion_i`` of every example of every
environment are pooled (so each environment weighs by its number of examples). One-sided, H0: E[d] <= 0
against H1: E[d] > 0.

- ``permutation`` (default): the paired sign-flip randomisation test. Under H0 "candidate and champion
  are exchangeable" (exactly the A/A situation: the same policy sampled with other seeds) each
  difference is as likely to be ``+d_i`` as ``-d_i``; B seeded random sign flips give
  ``p = (1 + #{b : sum_b(±d) >= sum(d)}) / (B + 1)``, which is valid at any n (the bootstrap below is
  only asymptotically so, and promoted 5.2% of A/A comparisons at alpha 0.05, n = 500). Its
  ``statistic`` is the studentised mean difference, for reading only.
- ``bootstrap``: resample the examples with replacement B times, within each environment
  (seeded, so every candidate of an iteration sees the same resamples);
  ``p = (1 + #{b : mean_b(d) <= 0}) / (B + 1)``. Its ``statistic``
  is the studentised mean difference ``mean(d) / (std(d) / sqrt(n))``, for reading only.
- ``sign``: exact binomial test over the non-zero differences, ``p = P(Bin(N, 1/2) >= N+)``. Its
  ``statistic`` is ``N+``, the number of examples the candidate wins. Distribution-free, but it ignores
  the size of each difference, so it has less power than the bootstrap.

**Multiple comparisons.** An iteration that trains m trials and keeps the best one makes m chances for
noise to look like progress: if each trial had a 5% chance of a spurious win, the best of 8 would win
spuriously about a third of the time. Testing only the eval-split winner on a separate confirmation
split already removes the selection bias of that one comparison, but the tuner may hand over several
finalists, and the same confirmation split is then used m times. So alpha is divided among
``n_compared`` comparisons (default: the number of candidates given; pass the number of trials to be
strict about the selection as well): ``bonferroni`` gives each alpha / m, ``holm`` the step-down
alpha / m, alpha / (m - 1), ... over the candidates ordered by p-value (never less power than Bonferroni;
hypotheses not handed over count as the largest p-values), ``none`` keeps alpha.

**Designs.** ``design = "fixed"`` (this module's :func:`decide`) scores once, K samples per example.
``design = "sequential"`` (the default; :mod:`rayrl.evaluation.sequential_gate`, maths in
:mod:`rayrl.evaluation.sequential`) scores in looks of fresh samples and stops early; it reuses this
module's paired differences, tests and Decision record.

**The decision.** A candidate passes when p < its corrected alpha, its pooled mean gain is at least
``min_delta``, and no environment's mean drops by more than ``max_regression``. At most one candidate is
adopted per call: among those that pass, the one with the largest mean gain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from rayrl.config import Section

_NORMAL = NormalDist()
_CHUNK_ENTRIES = 1 << 21  # bootstrap entries materialised at once per array (16 MiB of float64)


class GateConfig(Section):
    """Promotion gate: when a candidate replaces the champion."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the one-sided paired test, "
                         "before the correction for the number of candidates compared.")
    min_delta: float = Field(0.0, description="Smallest pooled mean gain (candidate - champion) to adopt.")
    max_regression: float = Field(0.05, ge=0, description="Reject when any environment's mean score drops "
                                  "by more than this.")
    test: Literal["permutation", "bootstrap", "sign"] = Field(
        "permutation", description="Paired one-sided test over per-example scores: sign-flip randomisation "
        "test of the mean difference (exact under A/A), paired bootstrap of the mean, or exact sign test.")
    bootstrap_resamples: int = Field(10_000, ge=100, description="Random resamples (sign flips or bootstrap draws) of the test.")
    seed: int = Field(0, description="Seed of the resamples (the same for every candidate).")
    samples: int = Field(4, ge=1, description="K: samples per confirmation example, with the same sampling "
                         "seeds for champion and candidates.")
    correction: Literal["bonferroni", "holm", "none"] = Field(
        "bonferroni", description="Multiple-comparison correction over the candidates compared in an iteration "
        "(sequential design: holm acts as bonferroni, since an iteration ends at its first adoption)."
    )
    design: Literal["sequential", "fixed"] = Field(
        "sequential", description="sequential: score in looks with fresh samples, stop early when a candidate is "
        "clearly better or clearly not, combine the looks (inverse normal) against alpha-spending boundaries; "
        "fixed: one look of `samples` per example (the gate before [J]).")
    budget: float = Field(2.0, gt=0, description="Sequential design: the most samples per example and policy, in "
                          "units of `samples` (2.0 with samples 4: at most 8 per example, if every look is needed).")
    looks: list[float] = Field([0.25, 0.625, 1.0], min_length=1, description="Sequential design: the cumulative "
                               "share of the budget at each look (increasing, the last 1).")
    spending: Literal["obf", "pocock"] = Field("obf", description="Alpha-spending function (Lan-DeMets): obf "
                                               "(O'Brien-Fleming type, spends little early) or pocock (evenly).")
    efficacy_from_look: int = Field(2, ge=1, description="First look (1-based) at which a candidate may be "
                                    "adopted; earlier looks only stop hopeless candidates and guide allocation.")
    futility: list[float] = Field([0.0, 0.75], description="Sequential design: a candidate whose combined Z is "
                                  "below futility[k] at look k+1 (not the last) stops, rejected (non-binding: "
                                  "the boundaries hold even if it had gone on).")
    allocation: Literal["neyman", "uniform"] = Field(
        "neyman", description="Samples per example of each look: neyman puts more where the policies' scores "
        "vary most (estimated from earlier looks and, at the first, from the champion's profile; the same counts "
        "for every policy), uniform spreads them evenly.")
    alpha_scope: Literal["sweep", "iteration"] = Field(
        "sweep", description="sweep: alpha bounds the chance of any false adoption over every iteration of one "
        "`rayrl tune` run (fallback procedure: each of its T iterations gets alpha / T, plus the previous "
        "iteration's alpha when that one adopted); iteration: alpha per iteration.")
    max_resamples: int = Field(1_000_000, ge=100, description="Sequential design: the resamples a look's test "
                               "may grow to when its p-value must resolve a small boundary.")

    @model_validator(mode="after")
    def _check_design(self) -> GateConfig:
        from rayrl.evaluation.sequential import check_fractions

        try:
            check_fractions(self.looks)
        except ValueError as e:
            raise ValueError(f"gate.looks: {e}") from None
        if len(self.futility) > len(self.looks) - 1:
            raise ValueError(f"gate.futility has {len(self.futility)} values for {len(self.looks)} looks: give at "
                             "most one per look before the last")
        if self.efficacy_from_look > len(self.looks):
            raise ValueError(f"gate.efficacy_from_look = {self.efficacy_from_look} but there are only "
                             f"{len(self.looks)} looks")
        if self.design == "sequential":
            smallest = min(b - a for a, b in zip([0.0, *self.looks], self.looks)) * self.budget * self.samples
            if smallest < 1:
                raise ValueError(f"gate: the smallest look gets {smallest:.3g} samples per example (share of looks "
                                 f"x budget {self.budget:g} x samples {self.samples}); every look needs at least 1: "
                                 "raise gate.budget or gate.samples, use fewer looks, or set gate.design = "
                                 "\"fixed\" (one look of `samples` per example, the gate before [J])")
        return self


@dataclass
class Decision:
    """The gate's verdict on one candidate against the champion (one line of lineage.jsonl)."""

    candidate: str
    parent: str
    adopted: bool
    reason: str  # "adopted: +0.083 (p = 0.0004 < 0.025)" or "rejected: ..." (every failed condition)
    p_value: float
    alpha: float  # after the multiple-comparison correction
    mean_gain: float  # pooled over every confirmation example
    statistic: float  # permutation/bootstrap: studentised mean difference; sign: wins among non-zero differences
    test: str
    per_env: dict[str, dict[str, float]] = field(default_factory=dict)  # env -> champion, candidate, delta, n
    design: str = "fixed"
    look: int = 1  # the look at which the decision fell
    looks: int = 1  # looks planned
    effect_ci: tuple[float, float] | None = None  # repeated confidence interval of the gain (level 1 - 2 alpha)
    boundary: float | None = None  # the efficacy boundary of the combined Z at that look
    stage_z: list[float] = field(default_factory=list)  # each look's z (Phi^-1(1 - its p))
    samples: dict[str, int] = field(default_factory=dict)  # samples scored: candidate, champion (shared)


# ---- inputs -------------------------------------------------------------------------------------


def paired_scores(champion: Any, candidate: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-example mean scores of two evaluation results, the candidate's put in the champion's example order.

    Each result is duck-typed like ``rayrl.evaluation.runner.EvalResult``: ``.envs[name].example_ids``
    (``[n]`` strings) and ``.envs[name].scores`` (``[n, K]``). Raises ValueError naming the environment when
    the two were not scored on the same examples with the same K.
    """
    champ_out, cand_out = {}, {}
    if set(champion.envs) != set(candidate.envs):
        raise ValueError(f"champion has environments {sorted(champion.envs)}, candidate {sorted(candidate.envs)}")
    for name, champ in champion.envs.items():
        cand = candidate.envs[name]
        champ_ids, cand_ids = [str(i) for i in champ.example_ids], [str(i) for i in cand.example_ids]
        if len(set(cand_ids)) != len(cand_ids) or set(champ_ids) != set(cand_ids):
            raise ValueError(f"environment '{name}': champion and candidate were scored on different examples")
        champ_scores, cand_scores = np.asarray(champ.scores, np.float64), np.asarray(cand.scores, np.float64)
        if champ_scores.shape != cand_scores.shape:
            raise ValueError(f"environment '{name}': champion scores {champ_scores.shape}, "
                             f"candidate {cand_scores.shape}: use the same examples and K")
        position = {example: i for i, example in enumerate(cand_ids)}
        order = [position[example] for example in champ_ids]
        champ_out[name] = _per_example(champ_scores)
        cand_out[name] = _per_example(cand_scores)[order]
    return champ_out, cand_out


def _per_example(scores: np.ndarray) -> np.ndarray:
    """Per-example means; a NaN pads the rows of examples scored with fewer samples than others."""
    return np.nanmean(scores, axis=1) if scores.ndim == 2 else scores


def paired_differences(
    champion: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], name: str = "candidate"
) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Pooled ``candidate - champion`` per example ``[sum of n_env]`` and per-environment means.

    Both map environment -> ``[n]`` per-example mean scores (or ``[n, K]`` samples) in the same example
    order. Raises ValueError naming the environment on a missing environment or a shape mismatch.
    """
    if not champion:
        raise ValueError("the champion has no environments")
    if set(champion) != set(candidate):
        missing, extra = sorted(set(champion) - set(candidate)), sorted(set(candidate) - set(champion))
        env = (missing or extra)[0]
        where = f"candidate '{name}' lacks" if missing else "the champion lacks"
        raise ValueError(f"environment '{env}': {where} it (both must be scored on the same environments)")
    diffs, per_env = [], {}
    for env, champ_raw in champion.items():
        champ, cand = np.asarray(champ_raw, np.float64), np.asarray(candidate[env], np.float64)
        if champ.shape != cand.shape or champ.ndim not in (1, 2) or champ.shape[0] == 0:
            raise ValueError(f"environment '{env}': champion scores have shape {champ.shape}, candidate '{name}' "
                             f"{cand.shape}; both need the same non-empty [n] or [n, K] (same examples, same K)")
        if not (np.isfinite(champ).all() and np.isfinite(cand).all()):
            raise ValueError(f"environment '{env}': scores must be finite (no NaN or inf)")
        champ, cand = _per_example(champ), _per_example(cand)
        diffs.append(cand - champ)
        per_env[env] = {"champion": float(champ.mean()), "candidate": float(cand.mean()),
                        "delta": float(cand.mean() - champ.mean()), "n": int(champ.size)}
    return np.concatenate(diffs), per_env


# ---- tests --------------------------------------------------------------------------------------


def sign_test_p(wins: int, nonzero: int) -> float:
    """Exact one-sided sign test: ``P(Bin(nonzero, 1/2) >= wins)`` (1.0 when every difference is zero)."""
    if not 0 <= wins <= nonzero:
        raise ValueError(f"sign test: wins ({wins}) must lie in [0, nonzero ({nonzero})]")
    term = total = math.comb(nonzero, wins)
    for k in range(wins, nonzero):  # C(N, k+1) = C(N, k) (N - k) / (k + 1), exact in integers
        term = term * (nonzero - k) // (k + 1)
        total += term
    return total / 2**nonzero  # int / int is correctly rounded, even for huge N


def sign_test(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sign test of each column of ``diffs`` ``[n]`` or ``[n, R]``: (wins ``[R]``, p-values ``[R]``)."""
    d = as_columns(diffs)
    wins, nonzero = (d > 0).sum(axis=0), (d != 0).sum(axis=0)
    p = np.array([sign_test_p(int(w), int(z)) for w, z in zip(wins, nonzero)])
    return wins.astype(np.float64), p


def bootstrap_p_values(
    diffs: np.ndarray, resamples: int, seed: int, strata: list[int] | None = None
) -> np.ndarray:
    """Paired-bootstrap p-values of H1: mean > 0 for each column of ``diffs`` ``[n]`` or ``[n, R]`` -> ``[R]``.

    Every column sees the same ``resamples`` resamples of the n rows (drawn from ``seed``), as counts
    ``[B, n]`` multiplied into the columns, so R candidates (or R simulated repetitions) cost one matmul.
    ``strata``: sizes of consecutive row blocks (one per environment) resampled separately, so every
    resample keeps each environment's number of examples. ``p = (1 + #{b : sum_b <= 0}) / (B + 1)``;
    sums within rounding of zero count as zero.
    """
    d = as_columns(diffs)
    n, columns = d.shape
    sizes = [n] if strata is None else list(strata)
    if sum(sizes) != n or min(sizes) < 1:
        raise ValueError(f"strata {sizes} must be positive and add up to the {n} rows")
    offsets = np.cumsum([0, *sizes[:-1]])
    rng = np.random.default_rng(seed)
    tolerance = 1e-9 * np.abs(d).max(axis=0, initial=0.0)  # rounding of a sum of n exact ties
    at_most_zero = np.zeros(columns, dtype=np.int64)
    chunk = max(1, min(resamples, _CHUNK_ENTRIES // n))  # resamples per counts array [chunk, n]
    block = max(1, _CHUNK_ENTRIES // chunk)  # columns per sums array [chunk, block]
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        picks = np.concatenate([offset + rng.integers(0, size, size=(rows, size))
                                for offset, size in zip(offsets, sizes)], axis=1)
        picks += n * np.arange(rows)[:, None]
        counts = np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)
        for first in range(0, columns, block):
            cols = slice(first, first + block)
            at_most_zero[cols] += (counts @ d[:, cols] <= tolerance[cols]).sum(axis=0)
    return (1 + at_most_zero) / (resamples + 1)


def studentised_mean(diffs: np.ndarray) -> np.ndarray:
    """``mean / (std / sqrt(n))`` of each column (0 where every difference is zero)."""
    d = as_columns(diffs)
    mean, std = d.mean(axis=0), d.std(axis=0, ddof=1) if d.shape[0] > 1 else np.zeros(d.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, mean / (std / math.sqrt(d.shape[0])), np.sign(mean) * np.inf)
    return np.nan_to_num(z, nan=0.0, posinf=np.inf, neginf=-np.inf)


def paired_test(
    diffs: np.ndarray, cfg: GateConfig, strata: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The configured one-sided test on each column of ``diffs`` ``[n]`` or ``[n, R]``: (statistic, p) ``[R]``.

    ``strata``: rows per environment, for the bootstrap (see :func:`bootstrap_p_values`).
    """
    if cfg.test == "sign":
        return sign_test(diffs)
    if cfg.test == "permutation":
        return studentised_mean(diffs), permutation_p_values(diffs, cfg.bootstrap_resamples, cfg.seed)
    return studentised_mean(diffs), bootstrap_p_values(diffs, cfg.bootstrap_resamples, cfg.seed, strata)


def permutation_p_values(diffs: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Sign-flip randomisation p-values of H1: mean > 0 for each column of ``diffs`` ``[n]`` or ``[n, R]``.

    Every column sees the same ``resamples`` random sign vectors (drawn from ``seed``), ``[B, n]`` times
    the columns in one matmul per chunk. ``p = (1 + #{b : sum_b >= observed sum}) / (B + 1)``, sums within
    rounding of the observed one counting as reaching it (ties favour H0).
    """
    d = as_columns(diffs)
    n, columns = d.shape
    rng = np.random.default_rng(seed)
    observed = d.sum(axis=0)
    tolerance = 1e-9 * np.abs(d).sum(axis=0)
    at_least = np.zeros(columns, dtype=np.int64)
    chunk = max(1, min(resamples, _CHUNK_ENTRIES // n))
    block = max(1, _CHUNK_ENTRIES // chunk)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        signs = rng.integers(0, 2, size=(rows, n)).astype(np.float64) * 2.0 - 1.0
        for first in range(0, columns, block):
            cols = slice(first, first + block)
            at_least[cols] += (signs @ d[:, cols] >= observed[cols] - tolerance[cols]).sum(axis=0)
    return (1 + at_least) / (resamples + 1)


def as_columns(diffs: np.ndarray) -> np.ndarray:
    """``diffs`` as a float64 ``[n, R]`` array (a ``[n]`` vector becomes one column); a clear error otherwise."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[:, None] if d.ndim == 1 else d
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"paired differences must be a non-empty [n] or [n, R] array, got shape {d.shape}")
    return d


# ---- multiple comparisons -----------------------------------------------------------------------


def corrected_alphas(p_values: list[float], cfg: GateConfig, n_compared: int) -> list[tuple[bool, float, str]]:
    """Per candidate: (significant, its corrected alpha, how that alpha was reached: "" or "0.05 / 3 candidates")."""
    m = n_compared
    if m < len(p_values):
        raise ValueError(f"n_compared ({m}) is below the number of candidates ({len(p_values)})")
    if cfg.correction == "none":
        note = f"uncorrected for {m} candidates" if m > 1 else ""
        return [(p < cfg.alpha, cfg.alpha, note) for p in p_values]
    if cfg.correction == "bonferroni":
        alpha = cfg.alpha / m
        note = f"{cfg.alpha:g} / {m} candidates" if m > 1 else ""
        return [(p < alpha, alpha, note) for p in p_values]
    out: list[tuple[bool, float, str]] = [(False, 0.0, "")] * len(p_values)
    stopped: int | None = None  # Holm: the first rank whose p reaches its threshold rejects every later one
    for rank, i in enumerate(sorted(range(len(p_values)), key=lambda j: p_values[j])):
        alpha = cfg.alpha / (m - rank)
        if stopped is None and p_values[i] >= alpha:
            stopped = rank
        note = f"Holm: {cfg.alpha:g} / {m - rank}, rank {rank + 1} of {m}"
        if stopped is not None and stopped < rank:
            note += f", but the step-down stopped at rank {stopped + 1}"
        out[i] = (stopped is None, alpha, note)
    return out


# ---- the decision -------------------------------------------------------------------------------


def decide(
    champion: Mapping[str, np.ndarray],
    candidates: Mapping[str, Mapping[str, np.ndarray]],
    cfg: GateConfig,
    parent: str = "champion",
    n_compared: int | None = None,
) -> list[Decision]:
    """One Decision per candidate (in the given order); at most one has ``adopted=True``.

    ``champion``: environment -> per-example mean score ``[n_env]`` (or samples ``[n_env, K]``) on the
    confirmation split; ``candidates``: name -> the same for each candidate, same examples, same order.
    ``n_compared``: comparisons to correct alpha for (default ``len(candidates)``; see the module doc).
    """
    if not candidates:
        return []
    names = list(candidates)
    measured = [paired_differences(champion, candidates[name], name) for name in names]
    strata = [m["n"] for m in measured[0][1].values()]  # every candidate has the champion's environments
    statistics, p_values = paired_test(np.stack([diffs for diffs, _ in measured], axis=1), cfg, strata)
    significance = corrected_alphas(p_values.tolist(), cfg, len(names) if n_compared is None else n_compared)

    decisions = []
    for name, (diffs, per_env), statistic, p, (significant, alpha, note) in zip(
        names, measured, statistics.tolist(), p_values.tolist(), significance
    ):
        gain = float(diffs.mean())
        how = f" ({note})" if note else ""
        failures = [] if significant else [f"p = {p:.3g} {'≥' if p >= alpha else '<'} alpha {alpha:.3g}{how}"]
        if gain < cfg.min_delta:
            failures.append(f"mean gain {gain:.3g} < min_delta {cfg.min_delta:g}")
        for env, m in per_env.items():
            if -m["delta"] > cfg.max_regression:
                failures.append(
                    f"environment '{env}' regressed by {-m['delta']:.3g} > max_regression {cfg.max_regression:g}"
                )
        if failures:
            reason = "rejected: " + "; ".join(failures)
        else:
            reason = f"adopted: {gain:+.3g} (p = {p:.3g} < {alpha:.3g}{'; ' + note if note else ''})"
        half = -_NORMAL.inv_cdf(alpha) * float(diffs.std(ddof=1)) / math.sqrt(diffs.size) if diffs.size > 1 else math.inf
        decisions.append(Decision(candidate=name, parent=parent, adopted=not failures, reason=reason, p_value=p,
                                  alpha=alpha, mean_gain=gain, statistic=statistic, test=cfg.test, per_env=per_env,
                                  effect_ci=(gain - half, gain + half), samples=_sample_counts(candidates[name])))

    passed = [d for d in decisions if d.adopted]
    if len(passed) > 1:  # at most one per iteration: the largest gain, then the smallest p
        best = min(passed, key=lambda d: (-d.mean_gain, d.p_value))
        for d in passed:
            if d is not best:
                d.adopted = False
                d.reason = (f"rejected: passed the gate ({d.mean_gain:+.3g}, p = {d.p_value:.3g}), but "
                            f"'{best.candidate}' was adopted with a larger gain ({best.mean_gain:+.3g})")
    return decisions


def _sample_counts(scores: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Samples behind per-environment scores given as ``[n, K]`` (for the record; empty for per-example means)."""
    arrays = [np.asarray(a) for a in scores.values()]
    if not arrays or any(a.ndim != 2 for a in arrays):
        return {}
    total = int(sum(np.isfinite(a).sum() for a in arrays))
    return {"candidate": total, "champion": total}


def iteration_alphas(alpha: float, adopted: Sequence[bool], iterations: int, scope: str = "sweep") -> float:
    """The alpha of the next iteration of a run of ``iterations`` iterations, given whether each earlier one adopted.

    ``sweep`` scope, the fallback procedure (Wiens 2003; online form in Tian and Ramdas 2021): iteration t
    gets ``alpha / T``, plus iteration t-1's alpha if t-1 adopted (a true adoption passes its alpha on). The
    chance of any false adoption over the run stays at most ``alpha`` whatever the dependence between
    iterations. ``iteration`` scope: ``alpha`` each time.
    """
    if scope == "iteration":
        return alpha
    if len(adopted) >= iterations:
        raise ValueError(f"the run planned {iterations} iteration(s) and has decided {len(adopted)}")
    current = alpha / iterations
    for was_adopted in adopted:
        current = alpha / iterations + (current if was_adopted else 0.0)
    return current
