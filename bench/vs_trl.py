"""rayrl against TRL's GRPOTrainer, side by side, runs alternated A B A B.

    bash bench/setup_trl.sh                       # once: .venv-bench with rayrl + trl==1.16.0
    .venv-bench/bin/python bench/vs_trl.py [--quick]

Same locally built Qwen3 models, same task (2-digit addition with partial-credit reward, so random
weights still get a varying reward and both systems train every step), 16 prompts x 8 completions a
step, same max new tokens, lr 1e-5, fp32, temperature 1.0, both on this CPU, both synchronous
(on-policy). Two sizes: about 0.6M non-embedding parameters with 6 new tokens, and about 19M
(hidden 512, 8 layers) with 32 new tokens. Completions/s excludes start-up and the first 2 steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import matmul_flops_per_s, mfu, non_embedding_params  # noqa: E402

PROMPTS, GROUP, LR, WARMUP = 16, 8, 1e-5, 2
SIZES = {  # name: (TinyModelConfig fields, new tokens, steps per run)
    "0.6M": (dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=640), 6, 20),
    "19M": (dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1024), 32, 8),
}


def make_env():
    from rayrl.envs import make_env as make

    return make("arithmetic", {"digits": 2, "reward": "digits"})


def run_rayrl(model_dir: str, new_tokens: int, steps: int, out: Path) -> dict:
    from rayrl.config import Config
    from rayrl.driver import train

    cfg = Config.model_validate({
        "name": "vs-trl", "max_steps": steps, "batch_size": PROMPTS * GROUP, "rollouts_per_example": GROUP,
        "seq_len": 64, "model": {"name": model_dir}, "warmstart": {"enabled": False},
        "optim": {"lr": LR}, "sampling": {"max_tokens": new_tokens, "temperature": 1.0},
        "env": [{"id": "arithmetic", "args": {"digits": 2, "reward": "digits"}}],
        "inference": {"threads": 2}, "learner": {"threads": 2, "micro_batch_size": PROMPTS * GROUP},
        "eval": {"interval": 0}, "ckpt": {"interval": 0, "at_end": False}, "log": {"progress": False},
        "output_dir": str(out),
    })
    metrics = train(cfg).metrics[WARMUP:]
    wall = sum(m["step_time_s"] for m in metrics)
    return {
        "completions_per_s": PROMPTS * GROUP * len(metrics) / wall, "wall": wall, "steps": len(metrics),
        "train_tokens": sum(m["train_tokens"] for m in metrics),
        "gen_tokens": sum(m["completion_len_mean"] * PROMPTS * GROUP for m in metrics),
    }


def run_trl(model_dir: str, new_tokens: int, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    env = make_env()
    examples = env.examples("train")[: PROMPTS * (steps + 2)]
    dataset = Dataset.from_dict({"prompt": [e.prompt for e in examples], "answer": [e.answer for e in examples]})

    def reward(prompts, completions, answer, **_):
        return [env.score(type("E", (), {"answer": a})(), c) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    args = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
        num_generations=GROUP, max_completion_length=new_tokens, learning_rate=LR, temperature=1.0, beta=0.0,
        use_cpu=True, bf16=False, fp16=False, report_to="none", logging_steps=1, save_strategy="no",
        max_steps=steps, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    torch.set_num_threads(2)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(model_dir, padding_side="left"),
        reward_funcs=reward, args=args, train_dataset=dataset, callbacks=[timer],
    )
    trainer.train()
    times = timer.times[WARMUP:]
    wall = sum(times)
    seq_tokens = PROMPTS * GROUP * (8 + new_tokens)  # prompt ~7 chars + <bos>, all completions to length
    return {
        "completions_per_s": PROMPTS * GROUP * len(times) / wall, "wall": wall, "steps": len(times),
        "train_tokens": seq_tokens * len(times), "gen_tokens": PROMPTS * GROUP * new_tokens * len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke test: 4 steps a run, one round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import ray
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from rayrl.config import TinyModelConfig
    from rayrl.models.tiny import build_tiny_model

    hf_logging.set_verbosity_error()
    flops = matmul_flops_per_s()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
    rounds = 1 if args.quick else args.rounds
    lines = [f"fp32 matmul rate (2048², 2 threads): {flops / 1e9:.0f} GFLOP/s", "",
             "| model | non-embedding N | new tokens | rayrl completions/s (runs) | TRL completions/s (runs) "
             "| rayrl / TRL | target | MFU rayrl | MFU TRL |", "|---|---|---|---|---|---|---|---|---|"]
    for name, (shape, new_tokens, steps) in SIZES.items():
        steps = 4 + WARMUP if args.quick else steps
        model_dir = str(build_tiny_model(tmp / name, TinyModelConfig(**shape)))
        n = non_embedding_params(AutoModelForCausalLM.from_pretrained(model_dir))
        results: dict[str, list[dict]] = {"rayrl": [], "trl": []}
        for r in range(rounds):
            results["rayrl"].append(run_rayrl(model_dir, new_tokens, steps, tmp / f"{name}-rayrl-{r}"))
            results["trl"].append(run_trl(model_dir, new_tokens, steps, tmp / f"{name}-trl-{r}"))
            print(f"{name} round {r + 1}: rayrl {results['rayrl'][-1]['completions_per_s']:.1f}, "
                  f"TRL {results['trl'][-1]['completions_per_s']:.1f} completions/s", flush=True)
        mean = {k: statistics.mean(x["completions_per_s"] for x in v) for k, v in results.items()}
        util = {k: statistics.mean(mfu(n, x["train_tokens"], x["gen_tokens"], x["wall"], flops) for x in v)
                for k, v in results.items()}
        ratio = mean["rayrl"] / mean["trl"]
        target = 1.5 if name == "19M" else 1.0
        runs = {k: ", ".join(f"{x['completions_per_s']:.1f}" for x in v) for k, v in results.items()}
        lines.append(
            f"| {name} | {n / 1e6:.2f}M | {new_tokens} | {mean['rayrl']:.1f} ({runs['rayrl']}) | "
            f"{mean['trl']:.1f} ({runs['trl']}) | {ratio:.2f}x | >= {target}x {'PASS' if ratio >= target else 'MISS'} "
            f"| {util['rayrl']:.1%} | {util['trl']:.1%} |"
        )
    ray.shutdown()
    table = "\n".join(lines)
    print("\n" + table)
    results_dir = Path(__file__).resolve().parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "vs_trl.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
