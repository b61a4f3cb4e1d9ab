"""Calibration of the promotion gate: false promotions under A/A, adoption against predicted power.

    .venv/bin/python bench/promotion_calibration.py [--reps 10000] [--examples 500 --samples 4]
                                                    [--gains 0.02 0.05] [--candidates 3] [--crn 0 0.5]
                                                    [--profile bench/data/trained_champion_rates.json]
                                                    [--skip-fixed]
                                                    [--real --real-reps 50 --real-seq-reps 50 --real-pool 2400]

Simulates the confirmation split the way the real task produces it: n examples with difficulty
p_i ~ Beta(a, b) (mean 0.4, U-shaped: many examples nearly always or never solved), K binary rewards
per example, the per-example mean handed to the gate (``rayrl.evaluation.gate``, default GateConfig).

- **A/A**: champion against itself, different sampling seeds (independent draws from the same p_i):
  the share of repetitions that promote is the false-promotion rate; it should be at most alpha.
- **Known gain**: the candidate's p_i shifted in logit space so that its mean over these examples is
  exactly +delta (easy and hopeless examples barely move, as with real training). The adoption rate is
  set against the power the normal approximation predicts: the paired bootstrap, Phi(delta sqrt(n) /
  sd(d) - z_(1-alpha')), with sd(d) the observed sd of per-example differences; the sign test,
  Phi((N p+ - N/2 - z_(1-alpha') sqrt(N)/2) / sqrt(N p+ (1 - p+))) with N the non-zero differences and p+
  the share of them that are positive.
- **m candidates** against one champion: with Bonferroni (alpha / m) and, for contrast, uncorrected.

Every repetition's p-values come from the gate's own vectorised test (``paired_test`` on the [n, R]
differences of all repetitions at once; the bootstrap resamples are the gate's, seed 0) and its own
correction (``corrected_alphas``); the first repetitions are checked against ``decide()`` itself.
Champion and candidates are sampled independently, which is conservative: the real gate scores both
with the same sampling seeds, which can only correlate their samples and shrink sd(d).

**Sequential design** (``design = "sequential"``, the default GateConfig; a second table): every look's
fresh samples per policy, ``round((t_k - t_{k-1}) budget K n)``, uniform at the first look and then
allocated by ``allocate(shrunk_variances(...))`` from every score seen so far (champion and running candidates
pooled, the same counts for every policy), drawn for R repetitions at once ([n, R] columns) and run through
gate.py's own ``stage_p_values``, ``combine`` weights, ``efficacy_bounds`` and SequentialGate.look's rules
(futility before the last look, efficacy from ``efficacy_from_look``, min_delta / max_regression on the
combined estimate, at most one adoption: the largest combined estimate among those crossing, and everything
stops then). The first ``--seq-spot-checks`` repetitions of every scenario are replayed through the real
SequentialGate (same adopted candidate, same stopping look). ``--crn c``: a share c of each example's samples
couples champion and candidates through a common uniform (common random numbers: the same sampling seeds);
c = 0 is independent sampling (the real tiny model's shared seeds leave 0.42 of the sampling variance, about
c = 0.58 here). Scenarios: A/A (m = 1 and m candidates, family-wise), +0.02 and +0.05, +0.02 among m (the
others null: "null adopted"), a harmful -0.05, and two whose gain varies over the examples with the variance
tau² measured on a real pair (per-example logit offsets): a null that differs (mean gain 0) and +0.02;
champion profiles Beta(a, b) and, when ``--profile`` exists, a real trained champion's per-example rates
(bench/data/trained_champion_rates.json). Columns: adoption rate with its Wilson
interval, the power ``crossing_probabilities`` predicts at drift sum_k w_k gain / se_k (se_k the observed
standard error of look k's mean gain), the expected and largest cost relative to today's fixed (m + 1) n K
samples, and where the repetitions stopped; then a PASS/MISS line per target.

``--real`` also runs A/A with the real tiny model (``rayrl.evaluation.runner.evaluate_model``): one
evaluation of the default experiment's base model (or ``--model DIR``) on its confirmation split with
2·K·R samples per example (temperature 1), split into R disjoint champion/candidate pairs of K samples
each, through ``decide()``; then the sequential A/A through the real SequentialGate: ``--real-seq-reps``
(default ``--real-reps``) pairs (m = 1) and as many triples (m = 3), each look's allocated per-example counts taken from unused samples of
that example's pool (``--real-pool`` samples per example, default 16·real-reps; one evaluation gives the
pool; champion and candidates of one replicate never share a sample, and once an example's pool is used up
its samples are reused by later replicates, the share reused printed); then the simulation again with the
real model's per-example success rates as p_i.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayrl.evaluation.gate import (  # noqa: E402
    GateConfig,
    corrected_alphas,
    decide,
    paired_test,
    sign_test_p,
)

Z = NormalDist()


@dataclass
class Row:
    scenario: str
    test: str
    m: int
    correction: str
    gain: float
    adopted: int  # repetitions in which the gain-carrying candidate (A/A: any candidate) was adopted
    wrong: int  # repetitions in which a null candidate was adopted (gain scenarios with m > 1)
    reps: int
    predicted: float  # A/A: the bound on the false-promotion rate; a gain: the predicted power


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n."""
    z = Z.inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def shift_logits(p: np.ndarray, gain: float, offsets: np.ndarray | None = None) -> np.ndarray:
    """p_i moved by one common logit shift s (plus per-example ``offsets``), s found by bisection so that
    mean(q) - mean(p) = gain."""
    if gain == 0 and offsets is None:
        return p.copy()
    logit = np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(p, 1e-6, 1 - 1e-6))
    logit = logit if offsets is None else logit + offsets
    lo, hi = -20.0, 20.0
    for _ in range(100):
        s = (lo + hi) / 2
        lo, hi = (s, hi) if (1 / (1 + np.exp(-(logit + s)))).mean() - p.mean() < gain else (lo, s)
    return 1 / (1 + np.exp(-(logit + (lo + hi) / 2)))


def heterogeneous(p: np.ndarray, gain: float, tau2: float, seed: int = 0) -> np.ndarray:
    """Candidate rates whose gain over p averages ``gain`` but varies over the examples with variance ``tau2``
    (a trained candidate helps on some examples, hurts on others): per-example logit offsets sigma z_i, sigma
    found by bisection."""
    z = np.random.default_rng(seed).standard_normal(p.size)
    lo, hi = 0.0, 10.0
    for _ in range(60):
        sigma = (lo + hi) / 2
        lo, hi = (sigma, hi) if np.var(shift_logits(p, gain, sigma * z) - p) < tau2 else (lo, sigma)
    return shift_logits(p, gain, (lo + hi) / 2 * z)


def draw(rng: np.random.Generator, p: np.ndarray, k: int, reps: int) -> np.ndarray:
    """Per-example mean of K binary rewards: [n, reps]."""
    return rng.binomial(k, np.broadcast_to(p[:, None], (p.size, reps))) / k


def adoptions(diffs: list[np.ndarray], cfg: GateConfig, correction_m: int) -> np.ndarray:
    """Adopted candidate per repetition (-1 = none) from the gate's own test, correction and rules.

    ``diffs``: one [n, R] array per candidate (single environment, so the regression rule is gain >= -max_regression).
    """
    tests = [paired_test(d, cfg)[1] for d in diffs]
    gains = np.stack([d.mean(axis=0) for d in diffs])  # [m, R]
    out = np.full(diffs[0].shape[1], -1)
    for r in range(out.size):
        significance = corrected_alphas([float(t[r]) for t in tests], cfg, correction_m)
        passed = [j for j, (ok, _, _) in enumerate(significance)
                  if ok and gains[j, r] >= cfg.min_delta and -gains[j, r] <= cfg.max_regression]
        if passed:
            out[r] = max(passed, key=lambda j: (gains[j, r], -tests[j][r]))
    return out


def check_against_decide(champ: np.ndarray, cands: list[np.ndarray], cfg: GateConfig, chosen: np.ndarray,
                         correction_m: int, spot: int) -> None:
    for r in range(min(spot, chosen.size)):
        decisions = decide({"sim": champ[:, r]}, {f"c{j}": {"sim": c[:, r]} for j, c in enumerate(cands)}, cfg,
                           n_compared=correction_m)
        got = next((j for j, d in enumerate(decisions) if d.adopted), -1)
        assert got == chosen[r], f"repetition {r}: decide() adopted {got}, the vectorised path {chosen[r]}"


def predicted_power(test: str, diffs: np.ndarray, gain: float, alpha: float) -> float:
    """The one-sided paired test's power at level alpha, predicted from the observed differences [n, R].

    permutation and bootstrap: normal approximation, Phi(gain sqrt(n) / sd(d) - z_(1-alpha)), sd(d) the
    per-example sd.
    sign: exact binomial, P(Bin(N, p+) >= c(N)) averaged over each repetition's N (non-zero differences),
    with c(N) the smallest win count the test calls significant and p+ the share of non-zero
    differences that are positive (the discreteness of the test is part of the prediction).
    """
    n = diffs.shape[0]
    if test in ("permutation", "bootstrap"):
        sd = math.sqrt(float(diffs.var(axis=0, ddof=1).mean()))
        return Z.cdf(gain * math.sqrt(n) / sd - Z.inv_cdf(1 - alpha))
    nonzero = (diffs != 0).sum(axis=0)
    p_plus = float((diffs > 0).sum() / nonzero.sum())
    values, counts = np.unique(nonzero, return_counts=True)
    return float(sum(c * _binomial_tail(int(big_n), _critical_wins(int(big_n), alpha), p_plus)
                     for big_n, c in zip(values, counts)) / counts.sum())


def _critical_wins(nonzero: int, alpha: float) -> int:
    """Smallest number of wins among ``nonzero`` that the sign test calls significant at alpha."""
    wins = nonzero // 2
    while wins <= nonzero and sign_test_p(wins, nonzero) >= alpha:
        wins += 1
    return wins


def _binomial_tail(n: int, k: int, p: float) -> float:
    """P(Bin(n, p) >= k), summed in log space."""
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return sum(math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p
                        + (n - j) * log_q) for j in range(k, n + 1))


def simulate(p: np.ndarray, args: argparse.Namespace, spot: int) -> list[Row]:
    rng = np.random.default_rng(args.seed)
    rows: list[Row] = []
    k, reps, m = args.samples, args.reps, args.candidates
    for test in ("permutation", "bootstrap", "sign"):
        cfg = GateConfig(alpha=args.alpha, test=test, bootstrap_resamples=args.resamples, samples=k)
        none = GateConfig(**{**cfg.model_dump(), "correction": "none"})
        # A/A, one candidate
        champ = draw(rng, p, k, reps)
        cand = draw(rng, p, k, reps)
        chosen = adoptions([cand - champ], cfg, 1)
        check_against_decide(champ, [cand], cfg, chosen, 1, spot)
        rows.append(Row("A/A", test, 1, "-", 0.0, int((chosen >= 0).sum()), 0, reps, args.alpha))
        # known gains, one candidate
        for gain in args.gains:
            better = draw(rng, shift_logits(p, gain), k, reps)
            chosen = adoptions([better - champ], cfg, 1)
            check_against_decide(champ, [better], cfg, chosen, 1, spot)
            power = predicted_power(test, better - champ, gain, args.alpha)
            rows.append(Row(f"gain +{gain:g}", test, 1, "-", gain, int((chosen == 0).sum()), 0, reps, power))
        if m < 2:
            continue
        # m candidates, A/A: Bonferroni against uncorrected
        nulls = [draw(rng, p, k, reps) - champ for _ in range(m)]
        for config, name in ((cfg, "bonferroni"), (none, "none")):
            chosen = adoptions(nulls, config, m)
            if name == "bonferroni":
                check_against_decide(champ, [champ + d for d in nulls], config, chosen, m, spot)
            bound = args.alpha if name == "bonferroni" else 1 - (1 - args.alpha) ** m  # m independent tests
            rows.append(Row(f"A/A, {m} candidates", test, m, name, 0.0, int((chosen >= 0).sum()), 0, reps, bound))
        # m candidates, one carries the largest gain, the others none
        gain = max(args.gains)
        better = draw(rng, shift_logits(p, gain), k, reps) - champ
        chosen = adoptions([better, *nulls[1:]], cfg, m)
        check_against_decide(champ, [champ + better] + [champ + d for d in nulls[1:]], cfg, chosen, m, spot)
        power = predicted_power(test, better, gain, args.alpha / m)
        rows.append(Row(f"gain +{gain:g} among {m}", test, m, "bonferroni", gain, int((chosen == 0).sum()),
                        int((chosen > 0).sum()), reps, power))
    return rows


def table(rows: list[Row]) -> str:
    """Markdown. "check": A/A, whether the rate is within its bound (95% CI low <= bound); a gain, the observed
    rate minus the predicted power, and whether the prediction lies in the 95% CI."""
    out = ["| scenario | test | correction | true gain | adopted | 95% CI (Wilson) | predicted | check "
           "| null adopted |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = wilson(r.adopted, r.reps)
        if r.gain:
            predicted = f"{r.predicted:.3f}"
            check = f"{r.adopted / r.reps - r.predicted:+.3f}" + (" (in CI)" if low <= r.predicted <= high else "")
        else:
            predicted = f"≤ {r.predicted:.3g}"
            check = "-" if r.correction == "none" else ("within" if low <= r.predicted else "ABOVE")
        wrong = f"{r.wrong / r.reps:.3f}" if r.m > 1 and r.gain else "-"
        out.append(f"| {r.scenario} | {r.test} | {r.correction} | {r.gain:+.3f} | {r.adopted / r.reps:.3f} "
                   f"({r.adopted}/{r.reps}) | [{low:.3f}, {high:.3f}] | {predicted} | {check} | {wrong} |")
    return "\n".join(out)


# ---- the sequential design ----------------------------------------------------------------------


def draw_coupled(rng: np.random.Generator, p: np.ndarray, qs: list[np.ndarray], counts: np.ndarray,
                 crn: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Success counts ``[n, R]`` of the champion (rates p) and of each candidate (rates q) for ``counts``
    samples per example and column, with common random numbers: per example M ~ Bin(counts, crn) of the samples
    share a uniform u with the champion's (champion succeeds iff u < p, candidate iff u < q), drawn as the
    champion first and then each candidate conditionally (after a champion success it succeeds with
    probability min(1, q/p), after a failure max(0, (q-p)/(1-p))); the other samples are independent."""
    P = p[:, None]
    coupled = rng.binomial(counts, crn) if crn > 0 else np.zeros_like(counts)
    both = rng.binomial(coupled, P)  # the champion's successes among the coupled samples
    champion = both + rng.binomial(counts - coupled, P)
    out = []
    for q in qs:
        with np.errstate(divide="ignore", invalid="ignore"):
            after_win = np.where(p > 0, np.minimum(1.0, q / p), 1.0)[:, None]
            after_loss = np.where(p < 1, np.maximum(0.0, (q - p) / (1 - p)), 0.0)[:, None]
        x = rng.binomial(counts - coupled, q[:, None])
        if crn > 0:
            x += rng.binomial(both, after_win) + rng.binomial(coupled - both, after_loss)
        out.append(x)
    return champion, out


def look_totals(cfg: GateConfig, n: int) -> list[int]:
    """Samples per policy at each look: round((t_k - t_{k-1}) budget K n)."""
    shares = np.diff([0.0, *cfg.looks])
    return [round(float(s) * cfg.budget * cfg.samples * n) for s in shares]


@dataclass
class SeqResult:
    adopted: np.ndarray  # [R] candidate adopted (-1 = none)
    stop: np.ndarray  # [R] the look (1-based) at which the gate finished
    cost: np.ndarray  # [R] samples scored, champion and candidates together
    errors: list[float]  # mean standard error of candidate 0's gain at each look (columns where it ran)
    record: list[list[tuple]]  # per spot-checked column, per look: (counts, champion means, {j: means})


def simulate_sequential(p: np.ndarray, qs: list[np.ndarray], cfg: GateConfig, reps: int, crn: float,
                        rng: np.random.Generator, spot: int) -> SeqResult:
    """R repetitions of one sequential gate at once (columns), with gate.py's own pieces and rules."""
    from rayrl.evaluation.sequential_gate import stage_p_values
    from rayrl.evaluation.sequential import (
        allocate,
        efficacy_bounds,
        shrunk_variances,
        weights,
        z_of_p,
    )

    n, m, looks = p.size, len(qs), len(cfg.looks)
    alpha = cfg.alpha if cfg.correction == "none" else cfg.alpha / m
    bounds = efficacy_bounds(cfg.looks, alpha, cfg.spending, cfg.efficacy_from_look)
    w = weights(cfg.looks)
    shares = np.diff([0.0, *cfg.looks])
    totals = look_totals(cfg, n)
    z_of = np.vectorize(z_of_p, otypes=[np.float64])

    running = np.ones((m, reps), bool)
    adopted, stop, cost = np.full(reps, -1), np.zeros(reps, np.int64), np.zeros(reps, np.int64)
    z = np.zeros((looks, m, reps))
    est, err = np.zeros((looks, m, reps)), np.ones((looks, m, reps))
    champ_mean, cand_mean = np.zeros((looks, m, reps)), np.zeros((looks, m, reps))
    last_p = np.ones((m, reps))
    sums, cnts = np.zeros((n, reps)), np.zeros((n, reps))  # binary scores: squares = sums
    mean_errors: list[float] = []
    record: list[list[tuple]] = [[] for _ in range(min(spot, reps))]
    for k in range(looks):
        active = running.any(axis=0)
        if k == 0:
            counts = np.repeat(allocate(np.zeros(n), totals[0], 1, "uniform")[:, None], reps, axis=1)
        else:
            counts = allocate(shrunk_variances(sums, sums, cnts), totals[k], 1, cfg.allocation)
        champ_x, cand_x = draw_coupled(rng, p, qs, counts, crn)
        champ = champ_x / counts
        sums += champ_x
        cnts += counts
        for j in range(m):
            sums += cand_x[j] * running[j]
            cnts += counts * running[j]
        cost += counts.sum(axis=0) * (active + running.sum(axis=0))
        for r, rec in enumerate(record):
            if active[r]:
                rec.append((counts[:, r].copy(), champ[:, r].copy(),
                            {j: cand_x[j][:, r] / counts[:, r] for j in range(m) if running[j, r]}))
        js, rs = np.nonzero(running)
        d = np.empty((n, js.size))
        for j in range(m):
            sel = js == j
            d[:, sel] = cand_x[j][:, rs[sel]] / counts[:, rs[sel]] - champ[:, rs[sel]]
        pv = stage_p_values(d, z[:k, js, rs], k, cfg, bounds)
        last_p[js, rs] = pv
        z[k, js, rs] = z_of(pv)
        est[k, js, rs] = d.mean(axis=0)
        err[k, js, rs] = d.std(axis=0, ddof=1) / math.sqrt(n)
        champ_mean[k, js, rs] = np.array([champ[:, r].mean() for r in rs])
        for j in range(m):
            sel = js == j
            cand_mean[k, j, rs[sel]] = np.array([(cand_x[j][:, r] / counts[:, r]).mean() for r in rs[sel]])
        ran0 = rs[js == 0]
        mean_errors.append(float(err[k, 0, ran0].mean()) if ran0.size else float("nan"))
        # the gate's rules, as SequentialGate.look applies them
        wk = w[: k + 1]
        combined = np.einsum("k,kmr->mr", wk, z[: k + 1]) / math.sqrt(float(np.sum(wk * wk)))
        se = np.maximum(err[: k + 1], 1e-12)
        estimate = np.einsum("k,kmr->mr", wk, est[: k + 1] / se) / np.einsum("k,kmr->mr", wk, 1 / se)
        sh = shares[: k + 1]
        delta = (np.einsum("k,kmr->mr", sh, cand_mean[: k + 1]) / sh.sum()
                 - np.einsum("k,kmr->mr", sh, champ_mean[: k + 1]) / sh.sum())
        crossed = running & (combined >= bounds[k])
        rules = (estimate >= cfg.min_delta) & (-delta <= cfg.max_regression)
        passed = crossed & rules
        stopped = crossed & ~rules
        if k == looks - 1:
            stopped |= running & ~crossed
        elif k < len(cfg.futility):
            stopped |= running & ~crossed & (combined < cfg.futility[k])
        running &= ~stopped
        for r in np.flatnonzero(passed.any(axis=0)):
            cands = np.flatnonzero(passed[:, r])
            adopted[r] = max(cands, key=lambda j: (estimate[j, r], -last_p[j, r]))
            running[:, r] = False
        finished = active & ~running.any(axis=0)
        stop[finished] = k + 1
    return SeqResult(adopted, stop, cost, mean_errors, record)


def check_against_gate(result: SeqResult, cfg: GateConfig, m: int) -> None:
    """Replay the spot-checked columns through the real SequentialGate: same adoption, same stopping look."""
    from rayrl.evaluation.sequential_gate import SequentialGate

    for r, rec in enumerate(result.record):
        gate = SequentialGate(cfg, [f"c{j}" for j in range(m)])
        decisions = None
        for counts, champ, cands in rec:
            assert sorted(cands) == [int(name[1:]) for name in gate.running], (r, sorted(cands), gate.running)
            decisions = gate.look({"sim": champ}, {f"c{j}": {"sim": c} for j, c in cands.items()},
                                  int(counts.sum()))
        assert decisions is not None, f"repetition {r}: the gate did not finish after the replayed looks"
        got = next((j for j, d in enumerate(decisions) if d.adopted), -1)
        look = max(d.look for d in decisions)
        assert (got, look) == (result.adopted[r], result.stop[r]), (
            f"repetition {r}: SequentialGate adopted {got} at look {look}, the vectorised path "
            f"{result.adopted[r]} at look {result.stop[r]}")


@dataclass
class SeqRow:
    scenario: str
    profile: str
    crn: float
    m: int
    gain: float
    adopted: int  # the gain-carrying candidate (A/A: any candidate) adopted
    wrong: int  # a null candidate adopted (gain among m)
    reps: int
    predicted: float | None  # A/A: the bound alpha; a gain: the power from crossing_probabilities (m = 1)
    cost: float  # E[samples] / today's fixed (m + 1) n K
    max_cost: float
    stops: list[float]  # share of repetitions finishing at each look
    seconds: float


TAU2 = 0.0375  # variance over examples of the true gain, measured on the promotion demo's adopted pair


def sequential_scenarios(m_family: int) -> list[tuple[str, float, int, float]]:
    """(name, mean gain, candidates, tau^2 of the gain over examples)."""
    return [("A/A", 0.0, 1, 0.0), (f"A/A, {m_family} candidates", 0.0, m_family, 0.0), ("gain +0.02", 0.02, 1, 0.0),
            ("gain +0.05", 0.05, 1, 0.0), (f"gain +0.02 among {m_family}", 0.02, m_family, 0.0),
            ("harmful -0.05", -0.05, 1, 0.0), (f"null that differs (tau² {TAU2:g})", 0.0, 1, TAU2),
            (f"gain +0.02, tau² {TAU2:g}", 0.02, 1, TAU2)]


def simulate_sequential_table(profiles: dict[str, np.ndarray], args: argparse.Namespace,
                              scenarios: list[tuple[str, float, int, float]] | None = None) -> list[SeqRow]:
    from rayrl.evaluation.sequential import crossing_probabilities, efficacy_bounds

    cfg = GateConfig(alpha=args.alpha, bootstrap_resamples=args.resamples, samples=args.samples)
    rng = np.random.default_rng(args.seed + 7)
    rows = []
    for profile, p in profiles.items():
        n = p.size
        for crn in args.crn:
            for scenario, gain, m, tau2 in scenarios or sequential_scenarios(args.candidates):
                t0 = time.perf_counter()
                first = heterogeneous(p, gain, tau2, args.seed) if tau2 else shift_logits(p, gain)
                qs = [first] + [p.copy() for _ in range(m - 1)]
                res = simulate_sequential(p, qs, cfg, args.reps, crn, rng, args.seq_spot_checks)
                check_against_gate(res, cfg, m)
                predicted = None
                if gain == 0:
                    predicted = cfg.alpha
                elif all(math.isfinite(e) and e > 0 for e in res.errors):
                    # E[Z_K] = sum_k w_k E[z_k] with E[z_k] ~ gain / se_k (se_k: the mean observed standard
                    # error of look k's mean gain, Neyman allocation included); power of the design at that drift
                    from rayrl.evaluation.sequential import weights

                    drift = float(np.sum(weights(cfg.looks) * gain / np.array(res.errors)))
                    alpha = cfg.alpha / m
                    bounds = efficacy_bounds(cfg.looks, alpha, cfg.spending, cfg.efficacy_from_look)
                    predicted = crossing_probabilities(drift, cfg.looks, bounds, cfg.futility).power
                fixed = (m + 1) * n * cfg.samples
                stops = np.bincount(res.stop, minlength=len(cfg.looks) + 1)[1:] / args.reps
                target = (res.adopted >= 0) if gain == 0 else (res.adopted == 0)
                rows.append(SeqRow(scenario, profile, crn, m, gain, int(target.sum()),
                                   int((res.adopted > 0).sum()) if gain else 0, args.reps, predicted,
                                   float(res.cost.mean() / fixed), float(res.cost.max() / fixed), stops.tolist(),
                                   time.perf_counter() - t0))
                print(f"  [{profile}, crn {crn:g}] {scenario}: {rows[-1].adopted}/{args.reps} adopted, "
                      f"E[cost] {rows[-1].cost:.2f}, {rows[-1].seconds:.0f} s", flush=True)
    return rows


def seq_table(rows: list[SeqRow]) -> str:
    out = [("| profile | crn c | scenario | m | true gain | adopted | 95% CI (Wilson) | predicted | null adopted "
            "| E[cost] | max cost | stop at look 1 / 2 / 3 | s |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = wilson(r.adopted, r.reps)
        if r.predicted is None:
            predicted = "-"
        elif r.gain == 0:
            predicted = f"≤ {r.predicted:.3g}"
        else:
            predicted = f"{r.predicted:.3f}" + ("" if r.m == 1 else " (Bonferroni, no competition)")
        wrong = f"{r.wrong / r.reps:.4f}" if r.m > 1 and r.gain else "-"
        stops = " / ".join(f"{s:.3f}" for s in r.stops)
        out.append(f"| {r.profile} | {r.crn:g} | {r.scenario} | {r.m} | {r.gain:+.3f} | {r.adopted / r.reps:.4f} "
                   f"({r.adopted}/{r.reps}) | [{low:.4f}, {high:.4f}] | {predicted} | {wrong} | {r.cost:.3f} "
                   f"| {r.max_cost:.3f} | {stops} | {r.seconds:.0f} |")
    return "\n".join(out)


def verdicts(rows: list[SeqRow], alpha: float, m_family: int) -> str:
    out = []
    for m in (1, m_family):
        aa = [r for r in rows if r.gain == 0 and r.m == m]
        ok = [wilson(r.adopted, r.reps)[0] <= alpha for r in aa]
        detail = "; ".join(f"{r.profile}, c {r.crn:g}, {r.scenario}: {r.adopted / r.reps:.4f} (CI low "
                           f"{wilson(r.adopted, r.reps)[0]:.4f})" for r in aa)
        out.append(f"(a) A/A m={m} false adoption ≤ {alpha:g} (Wilson CI low ≤ {alpha:g}): "
                   f"{'PASS' if all(ok) else 'MISS'} — {detail}")
    for crn in sorted({r.crn for r in rows}):
        power = [r for r in rows if r.scenario == "gain +0.02" and r.crn == crn]
        ok = [r.adopted / r.reps >= 0.80 and r.cost <= 2.0 for r in power]
        detail = "; ".join(f"{r.profile}: power {r.adopted / r.reps:.3f}, E[cost] {r.cost:.2f}" + ("" if o else " MISS")
                           for r, o in zip(power, ok))
        out.append(f"(b) power ≥ 0.80 at +0.02 (m=1, the same logit shift on every example) with E[cost] ≤ 2.0, "
                   f"CRN c = {crn:g}: {'PASS' if all(ok) else 'MISS'} — {detail}")
    varied = [r for r in rows if r.scenario.startswith("gain +0.02, tau")]
    if varied:
        out.append("(info) +0.02 whose gain varies over examples (tau² measured on a real pair): " + "; ".join(
            f"{r.profile}, c {r.crn:g}: power {r.adopted / r.reps:.3f}, E[cost] {r.cost:.2f}" for r in varied))
    return "\n".join(out)


def real_sequential_aa(scores: np.ndarray, args: argparse.Namespace) -> None:
    """Real A/A through the real SequentialGate: R pairs (m = 1) and R triples (m = 3, family-wise), R =
    ``--real-seq-reps`` (default ``--real-reps``), each look's per-example counts drawn from the unused samples
    of each example's pool (disjoint within a pair or triple; once an example's pool is exhausted its cursor
    wraps around and samples are reused across replicates)."""
    from rayrl.evaluation.sequential_gate import SequentialGate
    from rayrl.evaluation.sequential import allocate, shrunk_variances

    cfg = GateConfig(alpha=args.alpha, bootstrap_resamples=args.resamples, samples=args.samples)
    n, pool = scores.shape
    totals = look_totals(cfg, n)
    reps = args.real_seq_reps or args.real_reps
    cursor = np.zeros(n, np.int64)
    taken = np.zeros(n, np.int64)  # samples handed out in all (above pool: reused)

    def take(counts: np.ndarray, used: np.ndarray) -> np.ndarray:
        out = np.empty(n)
        for i in range(n):
            if used[i] + counts[i] > pool:
                raise RuntimeError(f"example {i}: one replicate needs more than the pool's {pool} samples")
            idx = (cursor[i] + np.arange(counts[i])) % pool
            out[i] = scores[i, idx].mean()
            cursor[i] = (cursor[i] + counts[i]) % pool
        used += counts
        taken[:] += counts
        return out

    for m in (1, args.candidates):
        t0 = time.perf_counter()
        adopted, samples_used, looks_used = 0, [], []
        for _ in range(reps):
            gate = SequentialGate(cfg, [f"c{j}" for j in range(m)])
            used = np.zeros(n, np.int64)
            sums, cnts = np.zeros(n), np.zeros(n)
            counts = allocate(np.zeros(n), totals[0], 1, "uniform")
            total_used, k, decisions = 0, 0, None
            while decisions is None:
                champ = take(counts, used)
                cands = {name: take(counts, used) for name in gate.running}
                for x in (champ, *cands.values()):
                    sums += x * counts
                    cnts += counts
                total_used += int(counts.sum()) * (1 + len(cands))
                decisions = gate.look({"real": champ}, {c: {"real": x} for c, x in cands.items()}, int(counts.sum()))
                k += 1
                if decisions is None:
                    counts = allocate(shrunk_variances(sums, sums, cnts), totals[k], 1, cfg.allocation)
            adopted += any(d.adopted for d in decisions)
            samples_used.append(total_used / ((m + 1) * n * cfg.samples))
            looks_used.append(max(d.look for d in decisions))
        low, high = wilson(adopted, reps)
        stops = np.bincount(looks_used, minlength=len(cfg.looks) + 1)[1:] / reps
        print(f"real sequential A/A, m = {m}{' (family-wise, Bonferroni)' if m > 1 else ''}: {adopted}/"
              f"{reps} adopted = {adopted / reps:.3f}, 95% CI [{low:.3f}, {high:.3f}]; mean "
              f"cost {np.mean(samples_used):.3f} of the fixed (m+1)·n·K (mean {np.mean(samples_used) * (m + 1) * cfg.samples:.2f} "
              f"samples per example, all policies), stopped at look 1/2/3: "
              f"{' / '.join(f'{s:.2f}' for s in stops)}; {time.perf_counter() - t0:.1f} s", flush=True)
    reused = float(np.maximum(taken - pool, 0).sum()) / max(1, int(taken.sum()))
    print(f"pool: {pool} samples per example, {int(taken.sum())} handed out, {reused:.1%} of them reused "
          f"(pool exhausted at {int((taken > pool).sum())} of {n} examples)")


def real_pool(args: argparse.Namespace) -> np.ndarray:
    """One evaluation of the default experiment's base model (or ``--model``) on its confirmation split at
    temperature 1: ``[n, pool]`` rewards, every sample with its own seed."""
    from rayrl.cluster import connect
    from rayrl.config.loading import load_config
    from rayrl.evaluation.runner import evaluate_model
    from rayrl.models.loading import resolve_base_model

    experiment = Path(__file__).resolve().parents[1] / "experiments" / "default.toml"
    # one big generate call per replica: give it time (the default 300 s takes a slow call for a frozen replica)
    cfg = load_config(str(experiment), {"eval.confirm_examples": str(args.examples),
                                        "fault.generate_timeout_s": "7200", "fault.rollout_timeout_s": "7200"})
    owns = connect(cfg.ray)
    pool = max(2 * args.samples * args.real_reps, args.real_pool or 16 * args.real_reps)
    try:
        model_dir = args.model or resolve_base_model(cfg)[0]  # builds and warm-starts it once (cached)
        t0 = time.perf_counter()
        result = evaluate_model(cfg, model_dir, split="confirm", samples=pool, seed=args.seed, temperature=1.0)
        seconds = time.perf_counter() - t0
        (env,) = result.envs.values()
        print(f"real model {model_dir}: {len(result.envs)} environment(s), {pool} samples per example "
              f"({env.scores.size} in all), {seconds:.0f} s ({env.scores.size / seconds:.0f} samples/s)", flush=True)
    finally:
        if owns:
            import ray

            ray.shutdown()
    return np.asarray(env.scores, np.float64)


def real_aa(scores: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """Real A/A, fixed design: the pool's first 2·K·R samples as R disjoint champion/candidate pairs of K samples
    each through ``decide()``; returns the model's per-example success rates [n] (over the whole pool)."""
    k, reps = args.samples, args.real_reps
    adopted, p_values = 0, []
    for r in range(reps):
        block = scores[:, 2 * k * r : 2 * k * (r + 1)]
        (d,) = decide({"real": block[:, :k]}, {"same": {"real": block[:, k:]}}, GateConfig(alpha=args.alpha,
                                                                                          design="fixed"))
        adopted += d.adopted
        p_values.append(d.p_value)
    low, high = wilson(adopted, reps)
    print(f"real A/A (fixed design, permutation, alpha {args.alpha:g}): {adopted}/{reps} promoted = "
          f"{adopted / reps:.3f}, 95% CI [{low:.3f}, {high:.3f}]; median p {np.median(p_values):.3f}, "
          f"share of p < 0.5: {np.mean(np.array(p_values) < 0.5):.2f} (uniform under H0: 0.5)")
    return scores.mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10_000, help="repetitions per scenario")
    ap.add_argument("--examples", type=int, default=500, help="confirmation examples n")
    ap.add_argument("--samples", type=int, default=4, help="K samples per example")
    ap.add_argument("--gains", type=float, nargs="+", default=[0.02, 0.05], help="true mean gains to detect")
    ap.add_argument("--candidates", type=int, default=3, help="m candidates in the multiple-comparison scenarios")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (the gate's default)")
    ap.add_argument("--beta", type=float, nargs=2, default=[0.6, 0.9], metavar=("A", "B"),
                    help="difficulty distribution p_i ~ Beta(A, B)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spot-checks", type=int, default=10, help="repetitions re-run through decide() per scenario")
    ap.add_argument("--real", action="store_true", help="also run A/A with the real tiny model (needs Ray)")
    ap.add_argument("--real-reps", type=int, default=10, help="A/A pairs from the real model")
    ap.add_argument("--model", help="model directory for --real (default: the default experiment's base model)")
    ap.add_argument("--crn", type=float, nargs="+", default=[0.0, 0.5],
                    help="sequential design: share c of samples coupling champion and candidate (common random numbers)")
    ap.add_argument("--profile", default=str(Path(__file__).resolve().parent / "data" / "trained_champion_rates.json"),
                    help="JSON {\"rates\": [...]} of a real champion's per-example success rates: a second champion "
                    "profile of the sequential design (default: the default experiment's step-600 checkpoint, 16 "
                    "samples per confirmation example at temperature 1; skipped when absent)")
    ap.add_argument("--seq-spot-checks", type=int, default=5,
                    help="repetitions per sequential scenario re-run through SequentialGate")
    ap.add_argument("--skip-fixed", action="store_true", help="skip the fixed design's table")
    ap.add_argument("--real-seq-reps", type=int, default=0,
                    help="--real: sequential A/A pairs and triples from the pool (default: --real-reps)")
    ap.add_argument("--real-pool", type=int, default=0,
                    help="--real: samples per example of the real pool (default 16·real-reps)")
    args = ap.parse_args()

    print("command: .venv/bin/python bench/promotion_calibration.py " + " ".join(sys.argv[1:]))
    start = time.perf_counter()
    p = np.random.default_rng(args.seed + 1).beta(*args.beta, size=args.examples)
    if not args.skip_fixed:
        t0 = time.perf_counter()
        print(f"simulated confirmation split: n = {args.examples}, K = {args.samples}, p_i ~ Beta{tuple(args.beta)} "
              f"(mean {p.mean():.3f}), {args.reps} repetitions, bootstrap B = {args.resamples}, alpha = {args.alpha:g}\n")
        print("## fixed design (today's gate: K samples per example, one look)\n")
        print(table(simulate(p, args, args.spot_checks)))
        print(f"\n(decide() agreed with the vectorised path on the first {args.spot_checks} repetitions of every "
              f"scenario; fixed table {time.perf_counter() - t0:.0f} s)")

    profiles = {f"Beta{tuple(args.beta)} (mean {p.mean():.2f})": p}
    if args.profile and Path(args.profile).is_file():
        import json

        real = np.asarray(json.loads(Path(args.profile).read_text())["rates"], np.float64)
        if real.size == args.examples:
            profiles[f"trained champion (real rates, mean {real.mean():.2f})"] = real
        else:
            print(f"--profile {args.profile}: {real.size} examples, not {args.examples}; skipped")
    cfg = GateConfig(alpha=args.alpha, samples=args.samples)
    t0 = time.perf_counter()
    print(f"\n## sequential design (default GateConfig: budget {cfg.budget:g}, looks {cfg.looks}, {cfg.spending}, "
          f"efficacy from look {cfg.efficacy_from_look}, futility {cfg.futility}, {cfg.allocation} allocation, "
          f"{cfg.test} B = {args.resamples}), {args.reps} repetitions; cost relative to today's fixed (m+1)·n·K\n",
          flush=True)
    rows = simulate_sequential_table(profiles, args)
    print()
    print(seq_table(rows))
    print(f"\n(SequentialGate agreed with the vectorised path — adopted candidate and stopping look — on the first "
          f"{args.seq_spot_checks} repetitions of every scenario; sequential table {time.perf_counter() - t0:.0f} s)\n")
    print(verdicts(rows, args.alpha, args.candidates))
    print(f"\nsimulation total {time.perf_counter() - start:.0f} s", flush=True)
    if args.real:
        try:
            import rayrl.evaluation.runner  # noqa: F401
        except ModuleNotFoundError:
            print("\n--real: rayrl.evaluation.runner is not available; skipped")
            return
        print()
        scores = real_pool(args)
        p_real = real_aa(scores, args)
        t0 = time.perf_counter()
        real_sequential_aa(scores, args)
        print(f"(real sequential A/A {time.perf_counter() - t0:.0f} s)")
        print(f"\nsimulated with the real model's per-example success rates (mean {p_real.mean():.3f}):\n")
        real_args = argparse.Namespace(**{**vars(args), "gains": args.gains, "candidates": 1})
        if not args.skip_fixed:
            print(table(simulate(p_real, real_args, args.spot_checks)))
        seq_args = argparse.Namespace(**{**vars(args), "crn": [0.0]})
        print(seq_table(simulate_sequential_table({f"tiny model (mean {p_real.mean():.2f})": p_real}, seq_args,
                                                  sequential_scenarios(args.candidates)[:2])))


if __name__ == "__main__":
    main()
