"""Metrics: the step log line, ``metrics.jsonl`` (one JSON object a step), optional wandb."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rayrl.config import Config

log = logging.getLogger("rayrl")

METRICS_FILE = "metrics.jsonl"


def format_step_line(m: dict[str, Any]) -> str:
    """The one-line step summary prime-rl users know."""
    line = (
        f"Step {m['step']} | Time: {m['step_time_s']:.2f}s | Reward: {m['reward_mean']:.4f} | "
        f"Throughput: {m['tokens_per_s']:.1f} tokens/s | Seq. Length: {m['seq_len_mean']:.1f} tokens/sample"
    )
    if "eval_reward_mean" in m:
        line += f" | Eval: {m['eval_reward_mean']:.4f}"
    return line


def format_sft_line(m: dict[str, Any], total_steps: int) -> str:
    """The step line of supervised fine-tuning."""
    if "loss" not in m:
        return f"SFT step {m['step']}/{total_steps} | Val loss: {m['val_loss']:.4f} (before any update)"
    line = (f"SFT step {m['step']}/{total_steps} | Epoch: {m['epoch']} | Loss: {m['loss']:.4f} | "
            f"Throughput: {m['tokens_per_s']:.1f} tokens/s")
    if "val_loss" in m:
        line += f" | Val loss: {m['val_loss']:.4f}"
    return line


class MetricsWriter:
    """Appends step metrics to ``metrics.jsonl`` (and wandb when configured)."""

    def __init__(self, cfg: Config, output_dir: Path, resume_step: int | None):
        self.path = output_dir / METRICS_FILE
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        self._wandb = None
        if cfg.wandb.project:
            import wandb  # optional dependency: pip install wandb

            self._wandb = wandb.init(
                project=cfg.wandb.project, name=cfg.wandb.name or cfg.name, config=cfg.model_dump(), dir=str(output_dir)
            )

    def write(self, metrics: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(metrics), allow_nan=False) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=metrics["step"])

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` as strict JSON allows: a NaN or infinite value becomes null and its key is listed under
    ``"nonfinite"`` (so metrics.jsonl stays valid JSON that any reader parses)."""
    import math

    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return metrics
    return {**{k: (None if k in bad else v) for k, v in metrics.items()}, "nonfinite": bad}


def truncate_after(path: Path, step: int) -> None:
    """Drop metric lines of steps after ``step`` (they are about to be run again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
