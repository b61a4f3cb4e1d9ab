"""Weight publication through the object store: time to R = 1, 2, 4 replicas, against one memcpy.

    .venv/bin/python bench/weights.py [--hidden 512 --layers 8] [--repeats 7]

Measures, side by side in one run (R values interleaved so drift cancels):
- t(R): from the learner's publish call until every one of R replicas has loaded the new version
  (full-state gather on rank 0, flatten into one buffer, one ray.put, R zero-copy loads);
- t(R)/t(1): publication must not grow with the number of replicas (target <= 1.2);
- t(1) / memcpy: against one np.copyto of the same bytes (target <= 3);
- replicas' memory (PSS) after loading: shared weights are counted once per node, not per replica.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--prefault", action="store_true", help="RAY_preallocate_plasma_memory=1: touch the store's pages at start")
    ap.add_argument("--object-store-mib", type=int, default=0, help="object store size (default: Ray's)")
    args = ap.parse_args()

    import ray

    from rayrl.actors.inference import InferenceActor
    from rayrl.engines.base import EngineSpec
    from rayrl.actors.learner import LearnerGroup
    from rayrl.config import Config, TinyModelConfig
    from rayrl.models.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    heads = max(4, args.hidden // 64)
    tiny = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=heads, num_kv_heads=heads // 2,
                           intermediate_size=3 * args.hidden)
    model_dir = str(build_tiny_model(tmp / "model", tiny))
    cfg = Config.model_validate({
        "model": {"name": model_dir}, "warmstart": {"enabled": False},
        "learner": {"workers": 1, "threads": 2, "cpus_per_worker": 0.5},
    })
    if args.prefault:
        os.environ["RAY_preallocate_plasma_memory"] = "1"
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             object_store_memory=args.object_store_mib * 2**20 if args.object_store_mib else None)
    group = LearnerGroup(cfg, model_dir, namespace="bench-weights")
    replicas = [
        ray.remote(InferenceActor).options(num_cpus=0.5).remote(model_dir, EngineSpec("transformers", "", threads=1, max_batch_size=64))
        for _ in range(4)
    ]
    ray.get([r.get_version.remote() for r in replicas])

    probe = ray.get(group.publish_weights(0))
    nbytes = probe.nbytes
    src, dst = np.ones(nbytes, dtype=np.uint8), np.empty(nbytes, dtype=np.uint8)
    memcpy = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        memcpy.append(time.perf_counter() - t0)
    del probe

    times: dict[int, list[float]] = {1: [], 2: [], 4: []}
    publish_only: dict[int, list[float]] = {1: [], 2: [], 4: []}
    version = 0
    for _ in range(args.repeats):
        for r in (1, 2, 4):
            version += 1
            t0 = time.perf_counter()
            ref = group.publish_weights(version)
            t1 = time.perf_counter()
            ray.get([rep.load_weights.remote(ref) for rep in replicas[:r]])
            times[r].append(time.perf_counter() - t0)
            publish_only[r].append(t1 - t0)
            # As in training, every replica ends on the newest version, so exactly one older version
            # stays pinned; otherwise idle replicas pin stale objects and ray.put faults in fresh pages.
            ray.get([rep.load_weights.remote(ref) for rep in replicas[r:]])
            del ref
    memory = ray.get([rep.memory_info.remote() for rep in replicas])

    t_mem = min(memcpy)
    med = {r: statistics.median(v) for r, v in times.items()}
    print(f"\nmodel: hidden {args.hidden}, {args.layers} layers, weight buffer {nbytes / 2**20:.1f} MiB "
          f"({nbytes / 4 / 1e6:.1f}M fp32 values)")
    print(f"one memcpy of the same bytes (np.copyto, best of {args.repeats}): {t_mem * 1e3:.1f} ms")
    print("| replicas R | publication t(R), median ms | of which learner publish | t(R)/t(1) | t(R)/memcpy |")
    print("|---|---|---|---|---|")
    for r in (1, 2, 4):
        pub = statistics.median(publish_only[r]) * 1e3
        print(f"| {r} | {med[r] * 1e3:.1f} | {pub:.1f} | {med[r] / med[1]:.2f} | {med[r] / t_mem:.2f} |")
    ratio4, ratio_mem = med[4] / med[1], med[1] / t_mem
    print(f"\ntarget t(4)/t(1) <= 1.2: {ratio4:.2f} {'PASS' if ratio4 <= 1.2 else 'MISS'}")
    print(f"target publication <= 3x memcpy: {ratio_mem:.2f}x {'PASS' if ratio_mem <= 3 else 'MISS'}")
    mib = 2**20
    print("replica memory after loading (MiB): " + ", ".join(
        f"rss {m['rss'] / mib:.0f} / pss {m['pss'] / mib:.0f} / uss {m['uss'] / mib:.0f}" for m in memory))
    print(f"  (weights alias the one object-store copy: uss, the memory private to a replica, stays below the "
          f"{nbytes / mib:.0f} MiB of weights)")
    print("MFU: n/a (publication does no model FLOPs)")
    group.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
