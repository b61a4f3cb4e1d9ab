"""The vLLM engine against the transformers engine, both as replica actors, and vLLM's weight update.

    bash scripts/setup_vllm.sh && .venv-vllm/bin/python bench/vllm_engine.py [--repeats 4]

For each model (the default experiment's 1M, a 19M one) and dtype (fp32, bf16), one replica of each
engine generates the same prompts with the same sampling settings, A B A B (samples differ: each engine
draws its own noise, so each is timed on the tokens it produced). Reports tokens/s of each and vLLM /
transformers (target >= 2x on the 19M model). Then publishes 10 weight versions to the vLLM replica and
times each load (the Ray call included) against one memcpy of the same bytes (target <= 3x).
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
from bench.engine import SIZES  # noqa: E402  (the same two models and batches as bench/engine.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()

    import numpy as np
    import ray
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrl.actors.inference import InferenceActor
    from rayrl.config import TinyModelConfig
    from rayrl.engines.base import EngineSpec, SamplingParams
    from rayrl.engines.weights import flatten_state_dict
    from rayrl.models.tiny import build_tiny_model

    flops = matmul_flops_per_s(threads=args.threads)
    print(f"fp32 matmul rate (2048², {args.threads} threads): {flops / 1e9:.0f} GFLOP/s")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    rows, updates = [], []
    for name, (shape, prompts_n, samples, new_tokens) in SIZES.items():
        path = str(build_tiny_model(tmp / name.replace(" ", "-"), TinyModelConfig(**shape)))
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path)
        n_params = non_embedding_params(hf)
        prompts = [tok(f"{i % 100}+{(i * 37) % 100}=").input_ids for i in range(prompts_n) for _ in range(samples)]
        params = SamplingParams(max_tokens=new_tokens, temperature=1.0, seed=0)
        for dtype in args.dtypes.split(","):
            replicas = {
                engine: ray.remote(InferenceActor).options(num_cpus=1).remote(
                    path, EngineSpec(engine, "", dtype=dtype, threads=args.threads, max_batch_size=256,
                                     max_model_len=64, kv_cache_mib=256))
                for engine in ("transformers", "vllm")
            }  # fmt: skip
            for r in replicas.values():
                ray.get(r.generate.remote(prompts, params))  # warm-up
            times: dict[str, list[float]] = {e: [] for e in replicas}
            tokens: dict[str, int] = {}
            for _ in range(args.repeats):
                for engine, r in replicas.items():
                    t0 = time.perf_counter()
                    result = ray.get(r.generate.remote(prompts, params))
                    times[engine].append(time.perf_counter() - t0)
                    tokens[engine] = sum(len(c.token_ids) for c in result.completions)
            tps = {e: tokens[e] / statistics.median(times[e]) for e in replicas}
            rows.append((name, dtype, n_params, len(prompts), new_tokens, tps["transformers"], tps["vllm"],
                         mfu(n_params, 0, tps["transformers"], 1.0, flops), mfu(n_params, 0, tps["vllm"], 1.0, flops)))
            if dtype == "float32":
                state = {k: v.to(torch.float32) for k, v in hf.state_dict().items() if k != "lm_head.weight"}
                loads = []
                for version in range(1, 11):
                    state = {k: v + 1e-3 for k, v in state.items()}
                    ref = ray.put(flatten_state_dict(state, version))
                    ray.get(ref)  # the bundle is in the object store before the clock starts
                    t0 = time.perf_counter()
                    assert ray.get(replicas["vllm"].load_weights.remote(ref)) == version
                    loads.append(time.perf_counter() - t0)
                buffer = flatten_state_dict(state, 0).buffer
                copy = np.empty_like(buffer)
                memcpy = min(_timed(lambda: np.copyto(copy, buffer)) for _ in range(7))
                updates.append((name, buffer.nbytes, statistics.median(loads[2:]), memcpy))
            for r in replicas.values():
                ray.kill(r)
    print("\n| model | dtype | non-embedding params | sequences | new tokens | transformers tok/s | vLLM tok/s "
          "| vLLM / transformers | MFU transformers | MFU vLLM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, dtype, n, seqs, new, t_tps, v_tps, mfu_t, mfu_v in rows:
        print(f"| {name} | {dtype} | {n / 1e6:.2f}M | {seqs} | {new} | {t_tps:.0f} | {v_tps:.0f} | {v_tps / t_tps:.2f} "
              f"| {mfu_t:.1%} | {mfu_v:.1%} |")
    print("\n| model | weights MiB | vLLM update ms (median of versions 3-10, Ray call included) | one memcpy ms "
          "| update / memcpy |")
    print("|---|---|---|---|---|")
    for name, nbytes, load, memcpy in updates:
        print(f"| {name} | {nbytes / 2**20:.1f} | {load * 1e3:.1f} | {memcpy * 1e3:.2f} | {load / memcpy:.1f} |")
    big = [r for r in rows if r[0] == "19M"]
    worst = min(r[6] / r[5] for r in big) if big else float("nan")
    print(f"\ntarget vLLM >= 2x transformers on the 19M model: worst {worst:.2f} {'PASS' if worst >= 2 else 'MISS'}")
    ratio = max(u[2] / u[3] for u in updates)
    print(f"target weight update <= 3x one memcpy: worst {ratio:.1f}x {'PASS' if ratio <= 3 else 'MISS'}")
    ray.shutdown()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
