"""Supervised fine-tuning on Ray Train: ``rayrl sft EXPERIMENT.toml [--sft.key value ...] [--output-dir DIR]``.

The learner group's code (``rayrl.actors.learner.Learner``: FSDP2 over the workers, LoRA through peft)
runs inside Ray Train's ``TorchTrainer`` workers, which form the torch.distributed group. Data: the
``[sft]`` files (JSONL or Parquet, prompt and response columns, read with pyarrow), or, with none named,
the ``[[env]]`` entries' train examples and their reference answers (the built-in warm-start's data). The
run folder holds ``metrics.jsonl`` and ``metrics.png`` (training and validation loss), Ray Train's
checkpoints (``ray_train/``) and ``model/``: a Hugging Face folder (adapter merged) that ``rayrl train``
takes as ``model.name``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rayrl.config import Config
from rayrl.errors import ConfigError, DataError

log = logging.getLogger("rayrl")

MODEL_DIR = "model"  # the run folder's final model, a model.name for rayrl train


@dataclass
class SftResult:
    output_dir: Path
    model_dir: Path
    steps: int
    val_loss: float | None
    metrics: list[dict[str, Any]]


def load_pairs(cfg: Config) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Training and validation (prompt, response) pairs as ``[sft]`` says."""
    from rayrl.storage.tables import read_pairs

    s = cfg.sft
    if s.train_files:
        pairs = [p for f in s.train_files for p in read_pairs(f, s.prompt_key, s.response_key)]
    else:
        pairs = env_pairs(cfg)
    if s.val_files:
        return pairs, [p for f in s.val_files for p in read_pairs(f, s.prompt_key, s.response_key)]
    order = np.random.default_rng(cfg.seed).permutation(len(pairs))  # a seeded random share, not the file's tail
    n_val = int(len(pairs) * s.val_fraction)
    if s.val_fraction and n_val == 0:
        raise DataError(f"sft.val_fraction {s.val_fraction} of {len(pairs)} rows is no row: raise it, or name sft.val_files")
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def env_pairs(cfg: Config) -> list[tuple[str, str]]:
    """The ``[[env]]`` entries' train examples with their reference answers."""
    from rayrl.envs.registry import build_envs

    pairs = []
    for entry, env in zip(cfg.env, build_envs(cfg)):
        examples = env.examples("train")
        found = [(e.prompt, env.sft_completion(e)) for e in examples]
        if not examples or not all(r for _, r in found):
            raise DataError(
                f"[[env]] '{entry.id}': its train examples carry no reference answers to fine-tune on; "
                "name prompt/response files in sft.train_files"
            )
        pairs.extend(found)
    return pairs


def resolve_sft_dir(cfg: Config) -> Path:
    out = Path(cfg.output_dir or Path("runs", f"{cfg.name}-sft-{datetime.now():%Y%m%d-%H%M%S}")).expanduser()
    if "://" in str(cfg.output_dir or ""):
        raise ConfigError(f"--output-dir {cfg.output_dir}: rayrl sft writes to a local folder; archive it afterwards")
    if (out / MODEL_DIR).exists() or (out / "metrics.jsonl").exists():
        raise ConfigError(f"{out} already holds a fine-tuning run: choose another --output-dir")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file: name a folder")
    return out.resolve()


def run_sft(cfg: Config) -> SftResult:
    """Fine-tune ``cfg.model`` on the ``[sft]`` data; returns where the model was written."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    from rayrl.algorithms.sft import tokenize_pairs
    from rayrl.cluster import connect
    from rayrl.models.export import export_model
    from rayrl.models.loading import resolve_base_model
    from rayrl.models.source import cluster_nodes, model_source
    from rayrl.plotting import plot_sft_curves
    from rayrl.storage.disk import best_effort
    from rayrl.tracking import read_metrics

    out = resolve_sft_dir(cfg)
    train_pairs, val_pairs = load_pairs(cfg)  # bad data fails before anything starts or is written
    # Ray Train's controller watchdog asks the state API (the dashboard's) whether the run is alive
    owns_ray = connect(cfg.ray.model_copy(update={"dashboard": True}))
    try:
        base_path, _ = resolve_base_model(cfg.model_copy(update={"warmstart": cfg.warmstart.model_copy(update={"enabled": False})}))
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        train_rows, val_rows = (tokenize_pairs(tokenizer, p, cfg.seq_len) for p in (train_pairs, val_pairs))
        for name, rows in (("training", train_rows), ("validation", val_rows)):
            if rows.truncated or rows.dropped:
                log.warning("%s rows: %d cut at seq_len %d, %d dropped (prompt alone too long): raise seq_len to keep them",
                            name, rows.truncated, cfg.seq_len, rows.dropped)
        if not train_rows.rows:
            raise DataError("no training rows left to fine-tune on (every prompt filled seq_len)")
        out.mkdir(parents=True, exist_ok=True)
        log.info("supervised fine-tuning %s on %d rows (%d validation), %d epoch(s), batch %d, %s; output %s",
                 cfg.model.name, len(train_rows.rows), len(val_rows.rows), cfg.sft.epochs, cfg.sft.batch_size,
                 "LoRA" if learner_config(cfg).lora.enabled else "full weights", out)
        lc = cfg.learner
        workers = max(1, lc.workers)
        trainer = TorchTrainer(
            sft_worker,
            train_loop_config={
                "cfg": cfg.model_dump(mode="json"), "base": model_source(base_path, ship=cluster_nodes() > 1),
                "rows": ray.put((train_rows.rows, val_rows.rows)), "output_dir": str(out),
            },
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=lc.gpus_per_worker > 0,
                resources_per_worker={"CPU": lc.cpus_per_worker, **({"GPU": lc.gpus_per_worker} if lc.gpus_per_worker else {})},
            ),
            torch_config=TorchConfig(backend="nccl" if lc.gpus_per_worker > 0 else "gloo"),
            run_config=RunConfig(name="sft", storage_path=str(out / "ray_train"),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.sft.keep)),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        metrics = read_metrics(out / "metrics.jsonl")
        best_effort(lambda: plot_sft_curves(metrics, out / "metrics.png", f"{cfg.name}: supervised fine-tuning"), "metrics.png")
        export_model(result.checkpoint.path, out / MODEL_DIR, dtype=cfg.model.dtype, force=True)
    finally:
        if owns_ray:
            ray.shutdown()
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    return SftResult(out, out / MODEL_DIR, max((m["step"] for m in metrics), default=0), vals[-1] if vals else None,
                     metrics)


def learner_config(cfg: Config) -> Config:
    """The learner's view of an SFT run: ``[sft]``'s optimizer settings, no RL extras (reference, value head)."""
    s = cfg.sft
    lora = cfg.lora if s.lora is None else cfg.lora.model_copy(update={"enabled": s.lora})
    return cfg.model_copy(update={
        "lora": lora,
        "optim": cfg.optim.model_copy(update={"lr": s.lr, "weight_decay": s.weight_decay, "warmup_steps": s.warmup_steps}),
        "learner": cfg.learner.model_copy(update={"micro_batch_size": s.micro_batch_size}),
        "algorithm": type(cfg.algorithm)(),
    })


def planned_steps(cfg: Config, rows: int) -> int:
    per_epoch = math.ceil(rows / cfg.sft.batch_size)
    total = per_epoch * cfg.sft.epochs
    return min(total, cfg.sft.max_steps) if cfg.sft.max_steps else total


def sft_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: a Learner rank; rank 0 writes the metrics; every rank reports each checkpoint."""
    import sys
    import tempfile

    import ray
    import ray.train
    import torch

    from rayrl.actors.learner import Learner
    from rayrl.algorithms.grpo import shard_evenly
    from rayrl.algorithms.sft import supervised_samples
    from rayrl.tracking import format_sft_line

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = Config.model_validate(config["cfg"])
    learner = Learner(learner_config(cfg), rank, world)
    learner.setup(None, config["base"])
    train_rows, val_rows = ray.get(config["rows"])
    total_steps = planned_steps(cfg, len(train_rows))
    s = cfg.sft

    def batch_loss(rows: list, train: bool) -> float:
        part = learner.supervised_update(shard_evenly(supervised_samples(rows), world)[rank], train=train)
        if world > 1:
            value = torch.tensor([part], dtype=torch.float64)
            torch.distributed.all_reduce(value)
            part = float(value.item())
        return part

    metrics_file = Path(config["output_dir"]) / "metrics.jsonl"
    def record(metrics: dict[str, Any]) -> None:
        if rank == 0:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            # not print(): Ray Train tees print to its logger and to stdout, so every line would show twice
            sys.stdout.write(format_sft_line(metrics, total_steps) + "\n")
            sys.stdout.flush()

    def report(step: int, metrics: dict[str, Any], final: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="rayrl-sft-") as folder:
            learner.save(folder)  # collective: rank 0 writes
            checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report({"step": step, **{k: v for k, v in metrics.items() if k != "step"}, "final": final},
                             checkpoint=checkpoint)

    if val_rows:
        record({"step": 0, "val_loss": batch_loss(val_rows, train=False)})
    step, started = 0, time.perf_counter()
    metrics: dict[str, Any] = {}
    for epoch in range(s.epochs):
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(train_rows))
        for start in range(0, len(order), s.batch_size):
            if step >= total_steps:
                break
            rows = [train_rows[i] for i in order[start : start + s.batch_size]]
            t0 = time.perf_counter()
            loss = batch_loss(rows, train=True)
            step += 1
            tokens = sum(len(ids) for ids, _ in rows)
            metrics = {"step": step, "epoch": epoch + 1, "loss": loss, "lr": learner.scheduler.get_last_lr()[0],
                       "tokens_per_s": tokens / (time.perf_counter() - t0), "elapsed_s": time.perf_counter() - started}
            last = step == total_steps
            if val_rows and ((s.eval_interval and step % s.eval_interval == 0) or last):
                metrics["val_loss"] = batch_loss(val_rows, train=False)
            record(metrics)
            if last or (s.save_interval and step % s.save_interval == 0):
                report(step, metrics, final=last)
    learner.shutdown()
