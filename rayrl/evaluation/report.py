"""Files of ``rayrl eval``: per-step results and the consolidation across steps.

Layout under ``RUN_DIR/eval``::

    step_N/metrics.csv          one row per environment and an aggregate row (env = "all")
    step_N/completions.jsonl    one line per sample: env, example_id, sample, reward, completion, metrics
    step_N/summary.json         settings, checkpoint identity, statistics per environment and aggregate
    consolidated_metrics.csv    the metrics.csv rows of every evaluated step
    summary.json                steps, Pareto front across environments, best step per environment
    reward_by_step.png          reward against step per environment (Jeffreys band for binary tasks)

Step folders are written under a temporary name and renamed into place; the other files are
replaced atomically, so a reader never sees a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rayrl.storage.files import current_umask, write_text_atomic
from rayrl.evaluation.runner import EvalResult
from rayrl.evaluation.stats import JEFFREYS_LEVEL, ScoreStats, aggregate, dominated_by, pareto_front, summarize

FORMAT_VERSION = 1  # of the files below; results written by another version are never mixed in
AGGREGATE = "all"  # env column of the row pooling every environment's samples
BASE_COLUMNS = [
    "step", "env", "examples", "samples_per_example", "n", "reward_mean", "reward_std", "reward_median",
    "success_rate", "accuracy", "success_ci_low", "success_ci_high",
]


def step_rows(step: int, result: EvalResult) -> list[dict[str, Any]]:
    """metrics.csv rows of one step: one per environment (with its named metrics' means, as
    ``metric/<name>``), then the aggregate over all samples."""
    rows = []
    for name, env in result.envs.items():
        row = _stats_row(step, name, env.scores.shape[0], env.scores.shape[1], summarize(env.scores))
        for metric, values in env.metrics.items():
            row[f"metric/{metric}"] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        rows.append(row)
    pooled = aggregate({name: env.scores for name, env in result.envs.items()})
    examples = sum(env.scores.shape[0] for env in result.envs.values())
    samples = {env.scores.shape[1] for env in result.envs.values()}
    rows.append(_stats_row(step, AGGREGATE, examples, samples.pop() if len(samples) == 1 else "", pooled))
    return rows


def _stats_row(step: int, env: str, examples: int, samples: int | str, s: ScoreStats) -> dict[str, Any]:
    return {
        "step": step, "env": env, "examples": examples, "samples_per_example": samples, "n": s.n,
        "reward_mean": s.mean, "reward_std": s.std, "reward_median": s.median, "success_rate": s.success_rate,
        "accuracy": "" if s.accuracy is None else s.accuracy,
        "success_ci_low": s.success_ci_low, "success_ci_high": s.success_ci_high,
    }


def completion_records(result: EvalResult) -> list[dict[str, Any]]:
    records = []
    for name, env in result.envs.items():
        for i, example_id in enumerate(env.example_ids):
            for j, completion in enumerate(env.completions[i]):
                metrics = {m: float(v[i, j]) for m, v in env.metrics.items() if not math.isnan(v[i, j])}
                records.append({
                    "env": name, "example_id": example_id, "sample": j, "reward": float(env.scores[i, j]),
                    "completion": completion, "metrics": metrics,
                })
    return records


def write_step(eval_dir: Path, step: int, result: EvalResult, summary: dict[str, Any]) -> Path:
    """Write ``eval_dir/step_<step>/`` (staged under a temporary name, then renamed into place)."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step}-", dir=eval_dir))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; results are for everyone who reads the run
    try:
        rows = step_rows(step, result)
        (staging / "metrics.csv").write_text(to_csv(rows))
        with open(staging / "completions.jsonl", "w") as f:
            for record in completion_records(result):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        stats = {name: summarize(env.scores).as_dict() for name, env in result.envs.items()}
        stats[AGGREGATE] = aggregate({name: env.scores for name, env in result.envs.items()}).as_dict()
        full = {**summary, "step": step, "jeffreys_level": JEFFREYS_LEVEL, "stats": _json_safe(stats)}
        (staging / "summary.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        final = eval_dir / f"step_{step}"
        if final.exists():  # a re-evaluation: move the old folder aside, then swap in the new one
            aside = Path(tempfile.mkdtemp(prefix=f".old-step_{step}-", dir=eval_dir))
            final.rename(aside / "old")
            staging.rename(final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            staging.rename(final)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_step_summary(eval_dir: Path, step: int) -> dict[str, Any] | None:
    path = eval_dir / f"step_{step}" / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.csv, numbers parsed back (empty cells stay "")."""
    with open(path, newline="") as f:
        return [{k: _number(v) if k != "env" else v for k, v in row.items()} for row in csv.DictReader(f)]


def consolidate(eval_dir: Path, steps: list[int], settings: dict[str, Any],
                broken: dict[int, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """consolidated_metrics.csv, summary.json and reward_by_step.png over the step folders ``steps``;
    ``broken``: checkpoints that could not be evaluated, by step, and why (listed in summary.json)."""
    rows = [row for step in sorted(steps) for row in read_rows(eval_dir / f"step_{step}" / "metrics.csv")]
    envs = list(dict.fromkeys(r["env"] for r in rows if r["env"] != AGGREGATE))
    scores = {s: {r["env"]: r["reward_mean"] for r in rows if r["step"] == s and r["env"] != AGGREGATE} for s in sorted(steps)}
    pooled = {r["step"]: r["reward_mean"] for r in rows if r["env"] == AGGREGATE}
    summary = {
        "settings": settings,
        "steps": sorted(steps),
        "envs": envs,
        "reward_mean": {str(s): {**scores[s], AGGREGATE: pooled[s]} for s in sorted(steps)},
        "pareto_front": pareto_front(scores),  # on mean reward per environment: point estimates
        "dominated_by": {str(k): v for k, v in dominated_by(scores).items()},
        "best_step": {env: _argmax({s: scores[s][env] for s in scores}) for env in envs}
        | {AGGREGATE: _argmax(pooled)},
        "broken_checkpoints": {str(s): why for s, why in sorted((broken or {}).items())},
    }
    write_text_atomic(eval_dir / "consolidated_metrics.csv", to_csv(rows))
    write_text_atomic(eval_dir / "summary.json", json.dumps(_json_safe(summary), indent=2, sort_keys=True) + "\n")
    plot_reward_by_step(rows, eval_dir / "reward_by_step.png", summary["pareto_front"])
    return summary


def plot_reward_by_step(rows: list[dict[str, Any]], path: Path, front: list[int]) -> Path:
    """Mean reward against step per environment; for binary tasks the Jeffreys band of the accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    envs = list(dict.fromkeys(r["env"] for r in rows if r["env"] != AGGREGATE))
    for env in envs + ([AGGREGATE] if len(envs) > 1 else []):
        mine = sorted((r for r in rows if r["env"] == env), key=lambda r: r["step"])
        steps = [r["step"] for r in mine]
        style = {"linestyle": "--", "color": "black"} if env == AGGREGATE else {}
        line = ax.plot(steps, [r["reward_mean"] for r in mine], marker="o", markersize=3, label=env, **style)[0]
        if env != AGGREGATE and all(r["accuracy"] != "" for r in mine):
            ax.fill_between(steps, [r["success_ci_low"] for r in mine], [r["success_ci_high"] for r in mine],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        on_front = [r for r in mine if r["step"] in front]
        ax.plot([r["step"] for r in on_front], [r["reward_mean"] for r in on_front], linestyle="none", marker="*",
                markersize=11, color=line.get_color(), label="Pareto front" if env == envs[0] else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("held-out reward (mean)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"held-out reward by checkpoint (band: Jeffreys {JEFFREYS_LEVEL:.0%} interval, binary tasks)")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=".reward_by_step-", suffix=".png", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---- helpers ----------------------------------------------------------------------------------


def to_csv(rows: list[dict[str, Any]]) -> str:
    extra = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=BASE_COLUMNS + extra, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _number(text: str) -> int | float | str:
    if text == "":
        return ""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _argmax(values: dict[int, Any]) -> int | None:
    valid = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not math.isnan(v)}
    return max(valid, key=lambda k: (valid[k], -k)) if valid else None  # ties: the earliest step


def _json_safe(value: Any) -> Any:
    """NaN and inf become None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
