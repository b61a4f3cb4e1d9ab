"""Legal-move rate of OpenSpiel tic-tac-toe before and after RL (experiments/openspiel_tictactoe.toml).

    .venv/bin/python bench/legal_moves.py [--steps 300] [--seeds 0,1,2]

Trains the experiment once per model seed (``model.tiny.seed``: a different random tiny model each)
through ``rayrl.driver.train`` and prints, per seed, the held-out legal-move rate (greedy, 200 eval
tasks never trained on by id) before any update (step 0) and after the last step, the sampled legal
rate of the base policy (step 1's rollouts) and of the last 10 steps, and the rate of a uniformly random
digit on the same eval positions as the chance reference. About 70 s a seed on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENT = ROOT / "experiments" / "openspiel_tictactoe.toml"


def random_digit_rate(cfg) -> float:
    """Legal-move rate of a uniformly random digit 0-9 on the eval positions the run evaluates."""
    from rayrl.envs import make_env

    env = make_env(cfg.env[0].id, cfg.env[0].args)
    examples = env.examples("eval")[: cfg.eval.num_examples]
    return statistics.mean(len(env.state(ex).legal_actions()) / 10 for ex in examples)


def run(seed: int, steps: int, out: Path, cache: Path) -> dict[str, float]:
    from rayrl.config.loading import load_config
    from rayrl.driver import train
    from rayrl.tracking import read_metrics

    cfg = load_config(EXPERIMENT, {
        "max_steps": str(steps), "model.tiny.seed": str(seed), "output_dir": str(out / f"seed{seed}"),
        "model.cache_dir": str(cache), "eval.interval": str(steps), "ckpt.at_end": "false", "log.progress": "false",
    })
    t0 = time.perf_counter()
    metrics = read_metrics(train(cfg).output_dir / "metrics.jsonl")
    evals = {m["step"]: m["eval/openspiel/legal"] for m in metrics if "eval/openspiel/legal" in m}
    sampled = [m["reward/openspiel/legal"] for m in metrics if "reward/openspiel/legal" in m]
    return {"before": evals[0], "after": evals[steps], "sampled_before": sampled[0],
            "sampled_after": statistics.mean(sampled[-10:]), "chance": random_digit_rate(cfg),
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated model.tiny.seed values, one run each")
    args = ap.parse_args()

    import ray

    seeds = [int(s) for s in args.seeds.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-legal-moves-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = {seed: run(seed, args.steps, tmp, tmp / "cache") for seed in seeds}
    finally:
        ray.shutdown()
    print(f"\n$ python bench/legal_moves.py --steps {args.steps} --seeds {args.seeds}")
    print(f"experiment: {EXPERIMENT.relative_to(ROOT)}, {args.steps} RL steps, random tiny model (no warm-start)")
    print("| model seed | eval legal rate, step 0 (greedy) | after | sampled, base | sampled, last 10 steps "
          "| random digit | wall s |")
    print("|---|---|---|---|---|---|---|")
    for seed, r in results.items():
        print(f"| {seed} | {r['before']:.3f} | {r['after']:.3f} | {r['sampled_before']:.3f} | {r['sampled_after']:.3f} "
              f"| {r['chance']:.3f} | {r['wall_s']:.0f} |")
    before = statistics.mean(r["before"] for r in results.values())
    after = statistics.mean(r["after"] for r in results.values())
    print(f"mean held-out legal-move rate: {before:.3f} before -> {after:.3f} after")


if __name__ == "__main__":
    main()
