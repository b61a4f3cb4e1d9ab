"""The promotion demo's candidates judged again: by the fixed gate as it was before [J], and what the real pair
says about common random numbers (CRN) and the heterogeneity of a gain.

    .venv/bin/rayrl tune experiments/sweeps/promotion_demo.toml --champion CKPT --output-dir DEMO
    .venv/bin/python bench/gate_demo.py DEMO [--samples 8] [--seeds 21 22]

1. Every candidate of the lineage in DEMO (its first iteration) against the initial champion with the fixed
   design: greedy K = 1 (the demo's gate before [J]) and sampled 500 x 4 (seed 0), through ``decide()``.
2. The first adopted candidate and the champion, each scored with K samples under two seeds: the variance of
   the per-example difference with shared seeds against other seeds (the CRN factor of the sampling noise),
   and tau², the variance over examples of the true gain (the covariance of two independent same-seed
   differences), which more samples per example cannot shrink. ``rayrl gate plan --crn --tau2`` takes both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayrl.evaluation.gate import GateConfig, decide, paired_scores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", help="the output folder of the promotion demo (lineage.jsonl)")
    ap.add_argument("--sweep", default="experiments/sweeps/promotion_demo.toml")
    ap.add_argument("--samples", type=int, default=8, help="K per seed for the CRN measurement")
    ap.add_argument("--seeds", type=int, nargs=2, default=[21, 22])
    args = ap.parse_args()
    print("command: .venv/bin/python bench/gate_demo.py " + " ".join(sys.argv[1:]))

    from rayrl.cluster import connect
    from rayrl.evaluation.runner import evaluate_model
    from rayrl.tuning.lineage import Lineage
    from rayrl.tuning.sweep import load_sweep

    records = Lineage(args.demo).records()
    champion = next(r["checkpoint"] for r in records if r["decision"] == "initial")
    candidates = {r["candidate"]: r["checkpoint"] for r in records if r.get("iteration") == 1}
    sweep = load_sweep(args.sweep, champion=champion, output_dir=args.demo)
    base = sweep.config()
    connect(base.ray)

    for label, k, temperature in [("fixed, greedy K = 1 (the demo's gate before [J])", 1, 0.0),
                                  ("fixed, sampled 500 x 4", 4, base.sampling.temperature)]:
        t0 = time.perf_counter()
        ch = evaluate_model(base, champion, split="confirm", samples=k, seed=0, temperature=temperature)
        scores = {name: paired_scores(ch, evaluate_model(base, d, split="confirm", samples=k, seed=0,
                                                         temperature=temperature))[1] for name, d in candidates.items()}
        cfg = GateConfig(design="fixed", samples=k, alpha=sweep.gate.alpha, max_regression=sweep.gate.max_regression)
        print(f"\n{label}: {len(candidates) + 1} policies x {k * len(next(iter(ch.envs.values())).example_ids)} "
              f"samples, {time.perf_counter() - t0:.0f} s")
        for d in decide(paired_scores(ch, ch)[0], scores, cfg, parent="initial"):
            print(f"  {d.candidate}: {d.reason}; interval [{d.effect_ci[0]:+.3f}, {d.effect_ci[1]:+.3f}]")

    adopted = next((r for r in records if r["decision"] == "adopted"), None)
    if adopted is None:
        print("\nno candidate was adopted: no pair to measure")
        return
    scored = {}
    for name, d in (("champion", champion), ("candidate", adopted["checkpoint"])):
        for seed in args.seeds:
            (e,) = evaluate_model(base, d, split="confirm", samples=args.samples, seed=seed,
                                  temperature=base.sampling.temperature).envs.values()
            scored[name, seed] = np.asarray(e.scores, np.float64)
    s1, s2 = args.seeds
    a1, a2, b1, b2 = scored["champion", s1], scored["champion", s2], scored["candidate", s1], scored["candidate", s2]
    d1, d2 = (b1 - a1).mean(axis=1), (b2 - a2).mean(axis=1)
    tau2 = float(np.cov(d1, d2)[0, 1])  # independent noise: only the true per-example gains co-vary
    shared = float((d1 - d2).var() / 2)  # sampling noise of one same-seed difference
    other = float(((a1 - a2).mean(axis=1).var() + (b1 - b2).mean(axis=1).var()) / 2)  # the same without CRN
    print(f"\nthe adopted pair ({adopted['candidate']} against the champion), K = {args.samples} per seed, seeds "
          f"{s1} and {s2}: gain {d1.mean():+.4f} / {d2.mean():+.4f}")
    print(f"  sampling variance of a per-example difference: shared seeds {shared:.4f}, other seeds {other:.4f}: "
          f"CRN factor {shared / other:.2f}")
    print(f"  tau² (variance over examples of the true gain) {tau2:.4f}; equal rewards per sample: shared seeds "
          f"{(a1 == b1).mean():.3f}, other seeds {(a2 == b1).mean():.3f}")
    out = Path(args.demo, "gate_pair.json")
    out.write_text(json.dumps({"crn": shared / other, "tau2": tau2, "gain": float(d1.mean())}))
    print(f"  written to {out} (rayrl gate plan --crn {shared / other:.2f} --tau2 {tau2:.4f})")


if __name__ == "__main__":
    main()
