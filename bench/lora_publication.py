"""What a LoRA run publishes against full weights: bytes per version, the learner's publish time, and the
replica's load (merge) time, side by side on the same models.

    .venv/bin/python bench/lora_publication.py [--rank 64] [--repeats 5]

For each model shape: a learner (in process, ``learner.workers = 0``) with full weights and one with a LoRA
adapter (``lora.rank``, all linear layers) each publish a version; a transformers-engine replica loads it
(aliasing full weights; merging an adapter into its base). Prints bytes, medians and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # name: TinyModelConfig fields
    "default 1M": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512),
    "19M": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1024),
    "Qwen3-0.6B shape, 4 of 28 layers": dict(hidden_size=1024, num_layers=4, num_heads=16, num_kv_heads=8,
                                             intermediate_size=3072),
}


def measure(model_dir: str, lora: dict, repeats: int) -> dict:
    from rayrl.actors.learner import LearnerGroup
    from rayrl.config import Config
    from rayrl.engines.transformers_engine import TransformersEngine

    cfg = Config.model_validate({"model": {"name": model_dir}, "warmstart": {"enabled": False},
                                 "learner": {"workers": 0}, "lora": lora})
    group = LearnerGroup(cfg, model_dir, namespace="bench-lora")
    engine = TransformersEngine.from_pretrained(model_dir)
    publish, load, nbytes = [], [], 0
    for version in range(1, repeats + 1):
        t0 = time.perf_counter()
        bundle = group.publish_weights(version)  # Ray is not started: the bundle itself, no ray.put
        publish.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        engine.load_weights(bundle)
        load.append(time.perf_counter() - t0)
        nbytes = bundle.nbytes
    group.shutdown()
    return {"bytes": nbytes, "publish": statistics.median(publish), "load": statistics.median(load)}


def generation_ms(model_dir: str, rank: int, repeats: int) -> tuple[float, float]:
    """Median time of one generate call (64 prompts x 16 new tokens) with the adapter merged into the weights
    (what replicas do) and with peft's adapter layers in every forward (the alternative)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrl.engines.base import SamplingParams
    from rayrl.engines.transformers_engine import TransformersEngine

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(f"{i}+{2 * i}=").input_ids for i in range(64)]
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=1.0, seed=0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0))
    merged = AutoModelForCausalLM.from_pretrained(model_dir)  # same cost as merged weights: plain linear layers
    times: dict[str, list[float]] = {"merged": [], "peft": []}
    engines = {"merged": TransformersEngine(merged, tok.eos_token_id, tok.pad_token_id),
               "peft": TransformersEngine(peft_model, tok.eos_token_id, tok.pad_token_id)}
    for _ in range(repeats):
        for name, engine in engines.items():  # alternated, so drift cancels
            t0 = time.perf_counter()
            engine.generate(prompts, params)
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["merged"]) * 1e3, statistics.median(times["peft"]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from rayrl.config import TinyModelConfig
    from rayrl.models.tiny import build_tiny_model

    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    print(f"| model | full weights MiB | adapter (rank {args.rank}, all-linear) MiB | adapter / full | publish ms full "
          "| publish ms adapter | replica load ms full (alias) | replica load ms adapter (merge) "
          "| generate ms merged | generate ms with peft layers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        model_dir = str(build_tiny_model(tmp / name.split()[0], TinyModelConfig(**shape)))
        full = measure(model_dir, {"enabled": False}, args.repeats)
        lora = measure(model_dir, {"enabled": True, "rank": args.rank, "alpha": 2.0 * args.rank}, args.repeats)
        merged_ms, peft_ms = generation_ms(model_dir, args.rank, args.repeats)
        print(f"| {name} | {full['bytes'] / 2**20:.1f} | {lora['bytes'] / 2**20:.1f} | {lora['bytes'] / full['bytes']:.2f} "
              f"| {full['publish'] * 1e3:.1f} | {lora['publish'] * 1e3:.1f} | {full['load'] * 1e3:.1f} "
              f"| {lora['load'] * 1e3:.1f} | {merged_ms:.0f} | {peft_ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
