"""Async overlap: steady-state step time with max_off_policy_steps = 1 against max(generation, training).

    .venv/bin/python bench/overlap.py [--steps 40] [--hidden 256 --layers 4]

Runs the same experiment twice in one process, k = 1 and k = 0 (synchronous), alternating
k1 k0 k1 k0. Within each k = 1 run: generation time = the rollout's generation wall time, training
time = learner update + weight publication, both medians over the steady state (after 5 warm-up
steps); overlap ratio = mean step time / max(generation, training) (target <= 1.15). With 2
cores, the replica and the learner get one thread each so they can really run at the same time.
A partial-credit reward gives every step a gradient from random weights (no warm-start needed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import matmul_flops_per_s, mfu  # noqa: E402

WARMUP = 5


def run(k: int, steps: int, hidden: int, layers: int, cache: Path, out: Path) -> list[dict]:
    from rayrl.config import Config
    from rayrl.driver import train

    threads = 1 if k else 2
    cfg = Config.model_validate({
        "name": f"overlap-k{k}", "max_steps": steps, "batch_size": 256, "rollouts_per_example": 8, "seq_len": 32,
        "model": {"name": "builtin:tiny-qwen3", "tiny": {"hidden_size": hidden, "num_layers": layers,
                  "intermediate_size": 4 * hidden}, "cache_dir": str(cache)},
        "warmstart": {"enabled": False}, "optim": {"lr": 1e-5},
        "algorithm": {"max_off_policy_steps": k}, "sampling": {"max_tokens": 8},
        "env": [{"id": "arithmetic", "args": {"digits": 2, "reward": "digits"}}],
        "inference": {"threads": threads, "cpus_per_replica": 1}, "learner": {"threads": threads, "cpus_per_worker": 1,
                                                                              "micro_batch_size": 256},
        "eval": {"interval": 0}, "ckpt": {"interval": 0, "at_end": False}, "log": {"progress": False},
        "output_dir": str(out),
    })
    return train(cfg).metrics[WARMUP:]


def summarise(metrics: list[dict]) -> dict[str, float]:
    # Means, not medians: steady-state throughput is total time over steps, and a per-step median
    # of generation (slowed by contention while the learner runs) need not match the step median.
    med = lambda key: statistics.mean(m[key] for m in metrics)  # noqa: E731
    train_s = statistics.mean(m["time/update_s"] + m["time/publish_s"] for m in metrics)
    return {"step": med("step_time_s"), "generate": med("time/generate_s"), "train": train_s,
            "tokens": statistics.mean(m["train_tokens"] for m in metrics),
            "gen_tokens": statistics.mean(m["completion_len_mean"] * 256 for m in metrics)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import ray
    from transformers import AutoModelForCausalLM

    from bench.common import non_embedding_params

    flops = matmul_flops_per_s()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    results: dict[int, list[dict]] = {1: [], 0: []}
    for r in range(args.rounds):
        for k in (1, 0):
            results[k].append(summarise(run(k, args.steps, args.hidden, args.layers, tmp / "cache", tmp / f"k{k}-{r}")))
    base = next((tmp / "cache" / "base").iterdir())
    n_params = non_embedding_params(AutoModelForCausalLM.from_pretrained(base))
    print(f"\nmodel: hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.2f}M non-embedding params; "
          f"256 samples x up to 8 new tokens a step; fp32 matmul rate {flops / 1e9:.0f} GFLOP/s")
    print("| run | step s | generation s | training s | step / max(gen, train) | MFU |")
    print("|---|---|---|---|---|---|")
    for k in (1, 0):
        for i, s in enumerate(results[k]):
            ratio = s["step"] / max(s["generate"], s["train"])
            u = mfu(n_params, s["tokens"], s["gen_tokens"], s["step"], flops)
            print(f"| k={k} #{i + 1} | {s['step']:.3f} | {s['generate']:.3f} | {s['train']:.3f} | {ratio:.2f} | {u:.1%} |")
    k1 = statistics.mean(s["step"] / max(s["generate"], s["train"]) for s in results[1])
    speedup = statistics.mean(s["step"] for s in results[0]) / statistics.mean(s["step"] for s in results[1])
    print(f"\ntarget overlap ratio (k=1) <= 1.15: {k1:.2f} {'PASS' if k1 <= 1.15 else 'MISS'}")
    print(f"k=1 step time vs synchronous k=0: {speedup:.2f}x faster")
    ray.shutdown()


if __name__ == "__main__":
    main()
