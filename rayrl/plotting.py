"""PNG plots of a run's metrics: what people would rather look at than metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curves(metrics: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train reward per step and held-out eval reward, against step; saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["reward_mean"]) for m in metrics if "reward_mean" in m]
    evals = [(m["step"], m["eval_reward_mean"]) for m in metrics if "eval_reward_mean" in m]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), color="tab:blue", alpha=0.35, linewidth=1, label="train reward (sampled)")
    if evals:
        ax.plot(*zip(*evals), color="tab:red", marker="o", markersize=3, label="held-out eval reward")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sft_curves(metrics: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Supervised fine-tuning's training and validation loss against step, saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), color="tab:blue", alpha=0.5, linewidth=1, label="training loss (batch)")
    if val:
        ax.plot(*zip(*val), color="tab:red", marker="o", markersize=3, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("mean negative log-likelihood per response token")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
