"""Calibration of the promotion gate: false promotions under A/A, adoption against predicted power.

    .venv/bin/python bench/promotion_calibration.py [--reps 10000] [--examples 500 --samples 4]
                                                    [--gains 0.02 0.05] [--candidates 3] [--real]

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

``--real`` also runs A/A with the real tiny model (``rayrl.evaluation.runner.evaluate_model``): one
evaluation of the default experiment's base model (or ``--model DIR``) on its confirmation split with
2·K·R samples per example (temperature 1), split into R disjoint champion/candidate pairs of K samples
each, through ``decide()``; then the simulation again with the real model's per-example success rates as p_i.
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


def shift_logits(p: np.ndarray, gain: float) -> np.ndarray:
    """p_i moved by one common logit shift s, found by bisection, so that mean(q) - mean(p) = gain."""
    if gain == 0:
        return p.copy()
    logit = np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(p, 1e-6, 1 - 1e-6))
    lo, hi = 0.0, 20.0
    for _ in range(100):
        s = (lo + hi) / 2
        lo, hi = (s, hi) if (1 / (1 + np.exp(-(logit + s)))).mean() - p.mean() < gain else (lo, s)
    return 1 / (1 + np.exp(-(logit + (lo + hi) / 2)))


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


def real_aa(args: argparse.Namespace) -> np.ndarray:
    """Real A/A on the default experiment's base model; returns its per-example success rates [n]."""
    from rayrl.cluster import connect
    from rayrl.config.loading import load_config
    from rayrl.evaluation.runner import evaluate_model
    from rayrl.models.loading import resolve_base_model

    experiment = Path(__file__).resolve().parents[1] / "experiments" / "default.toml"
    cfg = load_config(str(experiment), {"eval.confirm_examples": str(args.examples)})
    owns = connect(cfg.ray)
    try:
        model_dir = args.model or resolve_base_model(cfg)[0]  # builds and warm-starts it once (cached)
        k, reps = args.samples, args.real_reps
        t0 = time.perf_counter()
        result = evaluate_model(cfg, model_dir, split="confirm", samples=2 * k * reps, seed=args.seed,
                                temperature=1.0)
        print(f"real model {model_dir}: {len(result.envs)} environment(s), {2 * k * reps} samples per example, "
              f"{time.perf_counter() - t0:.0f} s")
    finally:
        if owns:
            import ray

            ray.shutdown()
    (env,) = result.envs.values()
    scores = env.scores  # [n, 2·K·R]
    adopted, p_values = 0, []
    for r in range(reps):
        block = scores[:, 2 * k * r : 2 * k * (r + 1)]
        (d,) = decide({"real": block[:, :k]}, {"same": {"real": block[:, k:]}}, GateConfig(alpha=args.alpha))
        adopted += d.adopted
        p_values.append(d.p_value)
    low, high = wilson(adopted, reps)
    print(f"real A/A (bootstrap, alpha {args.alpha:g}): {adopted}/{reps} promoted = {adopted / reps:.3f}, "
          f"95% CI [{low:.3f}, {high:.3f}]; median p {np.median(p_values):.3f}, "
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
    args = ap.parse_args()

    print("command: .venv/bin/python bench/promotion_calibration.py " + " ".join(sys.argv[1:]))
    t0 = time.perf_counter()
    p = np.random.default_rng(args.seed + 1).beta(*args.beta, size=args.examples)
    print(f"simulated confirmation split: n = {args.examples}, K = {args.samples}, p_i ~ Beta{tuple(args.beta)} "
          f"(mean {p.mean():.3f}), {args.reps} repetitions, bootstrap B = {args.resamples}, alpha = {args.alpha:g}\n")
    print(table(simulate(p, args, args.spot_checks)))
    print(f"\n(decide() agreed with the vectorised path on the first {args.spot_checks} repetitions of every "
          f"scenario; {time.perf_counter() - t0:.0f} s)")
    if args.real:
        try:
            import rayrl.evaluation.runner  # noqa: F401
        except ModuleNotFoundError:
            print("\n--real: rayrl.evaluation.runner is not available; skipped")
            return
        p_real = real_aa(args)
        print(f"\nsimulated A/A with the real model's per-example success rates (mean {p_real.mean():.3f}):\n")
        real_args = argparse.Namespace(**{**vars(args), "gains": args.gains, "candidates": 1})
        print(table(simulate(p_real, real_args, args.spot_checks)))


if __name__ == "__main__":
    main()
