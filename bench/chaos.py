"""Chaos benchmark: the default experiment while a replica, a rollout worker and a learner are killed (SIGKILL)
or frozen (SIGSTOP) at random steps, beside the same run left alone.

Checks, and prints: every step present exactly once in metrics.jsonl, the final checkpoint intact (its
files against their sha256 sums) and loadable, the restarts counted as injected, and the held-out reward
curve of the disturbed run against the undisturbed one (each eval point's difference against its
binomial standard error). Everything stays on this machine: a local Ray cluster, signals to its processes.

    .venv/bin/python bench/chaos.py --max-steps 100 --events 4 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def metric_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plan_events(rng: random.Random, count: int, max_steps: int, replicas: int, workers: int,
                learners: int) -> list[tuple[int, str, str]]:  # fmt: skip
    """``count`` (step, actor name, "kill" | "freeze"), at distinct random steps in the run's middle; the
    first three hit a replica, a rollout worker and a learner (when there are learner actors)."""
    kinds = [[f"replica-{i}" for i in range(replicas)], [f"rollout-{i}" for i in range(workers)],
             [f"learner-{i}" for i in range(learners)]]
    kinds = [k for k in kinds if k]
    targets = [rng.choice(k) for k in kinds] + [rng.choice(sum(kinds, [])) for _ in range(count - len(kinds))]
    rng.shuffle(targets)
    steps = sorted(rng.sample(range(3, max_steps - 3), count))
    return [(step, target, rng.choice(["kill", "freeze"])) for step, target in zip(steps, targets)]


class Chaos(threading.Thread):
    """Sends each planned signal once the run has logged the planned step."""

    def __init__(self, run: Path, namespace: str, events: list[tuple[int, str, str]]):
        super().__init__(daemon=True)
        self.run_dir, self.namespace, self.events = run, namespace, events
        self.done: list[tuple[int, str, str, float]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        import ray

        try:
            start = time.monotonic()
            for step, target, kind in self.events:
                while not any(m.get("step", 0) >= step for m in metric_records(self.run_dir)):
                    time.sleep(0.05)
                pid = ray.get(ray.get_actor(target, namespace=self.namespace).pid.remote(), timeout=120)
                os.kill(pid, signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
                self.done.append((step, target, kind, time.monotonic() - start))
                print(f"  chaos: {kind} {target} (pid {pid}) after step {step}", flush=True)
        except BaseException as e:  # noqa: BLE001 - reported by main
            self.error = e


def run_once(cfg, events: list | None) -> tuple[object, float, Chaos | None]:
    from rayrl.driver import train

    chaos = None
    if events:
        chaos = Chaos(Path(cfg.output_dir), Path(cfg.output_dir).name, events)
        chaos.start()
    start = time.perf_counter()
    result = train(cfg)
    elapsed = time.perf_counter() - start
    if chaos is not None:
        chaos.join(timeout=30)
    return result, elapsed, chaos


def check_run(run: Path, max_steps: int) -> dict:
    from safetensors.torch import load_file

    from rayrl.storage.checkpoints import CheckpointStore

    steps = [m["step"] for m in metric_records(run) if m["step"] > 0]
    store = CheckpointStore(run / "checkpoints")
    latest = store.latest_step()
    problem = store.problem(latest) if latest is not None else "no checkpoint"
    weights = load_file(run / "checkpoints" / f"step_{latest}" / "model.safetensors") if problem is None else {}
    return {
        "every_step_once": steps == list(range(1, max_steps + 1)),
        "final_checkpoint": f"step_{latest}", "intact": problem is None, "problem": problem,
        "loads": bool(weights), "finite": all(bool(t.isfinite().all()) for t in weights.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "default.toml"))
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--events", type=int, default=4, help="faults injected into the disturbed run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault plan")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from rayrl.cli import setup_logging
    from rayrl.config.loading import load_config

    setup_logging("WARNING")
    learners = load_config(args.experiment, {}).learner.workers
    plan = plan_events(random.Random(args.seed), args.events, args.max_steps, args.replicas, args.workers, learners)
    scratch = Path(tempfile.mkdtemp(prefix="rayrl-chaos-"))
    overrides = {
        "max_steps": args.max_steps, "log.progress": False, "inference.replicas": args.replicas,
        "inference.cpus_per_replica": 0.5, "inference.threads": 1, "rollout.workers": args.workers,
        "fault.max_restarts": args.events + 1, "fault.max_recoveries": args.events + 1,
        "fault.generate_timeout_s": 15.0, "fault.rollout_timeout_s": 60.0, "fault.learner_timeout_s": 60.0,
        "fault.ready_timeout_s": 120.0, "ckpt.interval": 10, "ray.num_cpus": 4,
    }
    results = {}
    for label, events in (("undisturbed", None), ("chaos", plan)):
        cfg = load_config(args.experiment, {**overrides, "output_dir": str(scratch / label)})
        print(f"{label}: {args.max_steps} steps" + (f", faults {[(s, t, k) for s, t, k in plan]}" if events else ""), flush=True)
        result, elapsed, chaos = run_once(cfg, events)
        if chaos is not None and chaos.error is not None:
            raise chaos.error
        checks = check_run(scratch / label, args.max_steps)
        evals = {m["step"]: m["eval_reward_mean"] for m in metric_records(scratch / label) if "eval_reward_mean" in m}
        restarts = result.metrics[-1].get("fault/restarts", 0)
        info = json.loads((scratch / label / "checkpoints" / checks["final_checkpoint"] / "training_info.json").read_text())
        recoveries = len(info.get("recoveries", []))
        results[label] = {"elapsed": elapsed, "evals": evals, "restarts": restarts, "recoveries": recoveries, **checks,
                          "injected": len(chaos.done) if chaos else 0}
        print(f"  {elapsed:.1f} s, restarts {restarts}, recoveries {recoveries}, checks {checks}", flush=True)

    base, hit = results["undisturbed"], results["chaos"]
    n_eval = load_config(args.experiment, {}).eval.num_examples
    print("\n| step | undisturbed eval | chaos eval | difference / standard error |")
    print("|---|---|---|---|")
    worst = 0.0
    for step in sorted(base["evals"]):
        a, b = base["evals"][step], hit["evals"].get(step, math.nan)
        se = math.sqrt(max(a * (1 - a) + b * (1 - b), 1e-9) / n_eval)
        z = (b - a) / se
        worst = max(worst, abs(z))
        print(f"| {step} | {a:.3f} | {b:.3f} | {z:+.2f} |")
    print(f"\nfaults injected: {hit['injected']} of {len(plan)}; replica/worker restarts counted: {hit['restarts']}; "
          f"recoveries from a checkpoint (learner faults): {hit['recoveries']}")
    print(f"every step exactly once: undisturbed {base['every_step_once']}, chaos {hit['every_step_once']}")
    print(f"final checkpoint {hit['final_checkpoint']}: intact {hit['intact']}, loads {hit['loads']}, finite {hit['finite']}")
    print(f"wall time chaos / undisturbed: {hit['elapsed'] / base['elapsed']:.2f} ({hit['elapsed']:.1f} s / {base['elapsed']:.1f} s)")
    print(f"largest |difference| / standard error over eval points: {worst:.2f} (within noise below 3)")
    ok = (hit["every_step_once"] and hit["intact"] and hit["loads"] and hit["finite"]
          and hit["restarts"] + hit["recoveries"] >= hit["injected"] == len(plan) and worst < 3)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
