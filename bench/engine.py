"""Replica throughput through Ray against the raw in-process engine, on the same batch.

    .venv/bin/python bench/engine.py [--repeats 5]

For two model sizes, the same prompts and sampling parameters are generated A B A B: A calls a
TransformersEngine in this process, B calls an InferenceActor (the same engine behind Ray) and
waits for the result. Reports tokens/s of each, the ratio B/A (target >= 0.9) and MFU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import matmul_flops_per_s, mfu, non_embedding_params  # noqa: E402

SIZES = {  # name: (TinyModelConfig fields, prompts, samples per prompt, new tokens)
    "default 1M": (dict(hidden_size=128, num_layers=4), 32, 8, 6),
    "19M": (dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1024), 16, 8, 32),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoTokenizer

    from rayrl.actors.inference import InferenceActor
    from rayrl.config import TinyModelConfig
    from rayrl.engines.base import EngineSpec, SamplingParams
    from rayrl.engines.transformers_engine import TransformersEngine
    from rayrl.models.tiny import build_tiny_model

    torch.set_num_threads(args.threads)
    flops = matmul_flops_per_s(threads=args.threads)
    print(f"fp32 matmul rate (2048², {args.threads} threads): {flops / 1e9:.0f} GFLOP/s")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    rows = []
    for name, (shape, prompts_n, samples, new_tokens) in SIZES.items():
        path = str(build_tiny_model(tmp / name.replace(" ", "-"), TinyModelConfig(**shape)))
        tok = AutoTokenizer.from_pretrained(path)
        prompts = [tok(f"{i % 100}+{(i * 37) % 100}=").input_ids for i in range(prompts_n) for _ in range(samples)]
        params = SamplingParams(max_tokens=new_tokens, temperature=1.0, seed=0)
        raw = TransformersEngine.from_pretrained(path)
        n_params = non_embedding_params(raw.model)
        replica = ray.remote(InferenceActor).options(num_cpus=1).remote(path, EngineSpec("transformers", "", threads=args.threads))
        raw.generate(prompts, params)
        ray.get(replica.generate.remote(prompts, params))  # warm-up both
        t_raw, t_ray, tokens = [], [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = raw.generate(prompts, params)
            t_raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = ray.get(replica.generate.remote(prompts, params))
            t_ray.append(time.perf_counter() - t0)
            tokens = sum(len(c.token_ids) for c in out)
            assert [c.token_ids for c in out] == [c.token_ids for c in result.completions]  # same work
        a, b = statistics.median(t_raw), statistics.median(t_ray)
        rows.append((name, n_params, len(prompts), new_tokens, tokens / a, tokens / b, a / b,
                     mfu(n_params, 0, tokens, a, flops), mfu(n_params, 0, tokens, b, flops)))
        ray.kill(replica)
    print("\n| model | non-embedding params | sequences | new tokens | raw engine tok/s | replica via Ray tok/s "
          "| replica / raw | MFU raw | MFU replica |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, seqs, new, raw_tps, ray_tps, ratio, mfu_a, mfu_b in rows:
        print(f"| {name} | {n / 1e6:.2f}M | {seqs} | {new} | {raw_tps:.0f} | {ray_tps:.0f} | {ratio:.3f} "
              f"| {mfu_a:.1%} | {mfu_b:.1%} |")
    worst = min(r[6] for r in rows)
    print(f"\ntarget replica >= 0.9x raw engine: worst {worst:.3f} {'PASS' if worst >= 0.9 else 'MISS'}")
    ray.shutdown()


if __name__ == "__main__":
    main()
