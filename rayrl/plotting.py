"""PNG plots of a run's metrics: what people would rather look at than metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curves(metrics: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train reward per step and held-out eval reward, against step; saved as PNG at ``path``."""
    return _plot_two_series(
        series(metrics, "reward_mean"), "train reward (sampled)", series(metrics, "eval_reward_mean"), "held-out eval reward",
        path, title, ylabel="reward", ylim=(-0.02, 1.02), legend="lower right",
    )


def plot_sft_curves(metrics: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Supervised fine-tuning's training and validation loss against step, saved as PNG at ``path``."""
    return _plot_two_series(
        series(metrics, "loss"), "training loss (batch)", series(metrics, "val_loss"), "validation loss",
        path, title, ylabel="mean negative log-likelihood per response token", ylim=None, legend="upper right",
    )


def series(metrics: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every record holding a number under ``key`` (null, as non-finite values are written, skipped)."""
    return [(m["step"], m[key]) for m in metrics if m.get(key) is not None]


def _plot_two_series(noisy: list, noisy_label: str, measured: list, measured_label: str, path: str | Path, title: str,
                     ylabel: str, ylim: tuple[float, float] | None, legend: str) -> Path:  # fmt: skip
    """A faint per-step series and a marked periodic one against step, as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if noisy:
        ax.plot(*zip(*noisy), color="tab:blue", alpha=0.4, linewidth=1, label=noisy_label)
    if measured:
        ax.plot(*zip(*measured), color="tab:red", marker="o", markersize=3, label=measured_label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path)
    finally:  # a failed write (a full disk) leaves no figure open
        plt.close(fig)
    return path
