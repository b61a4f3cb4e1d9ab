"""Metrics: the step log line, ``metrics.jsonl`` (one JSON object a step) and where users look at them:
wandb (``[wandb] project``; offline without an API key), TensorBoard event files (``log.tensorboard``) and Ray
metrics (``log.ray_metrics``: the Ray dashboard, Prometheus).

``metrics.jsonl`` keeps its keys (plots, resume, the promotion gate read them); the three sinks see every
metric under one naming scheme, :func:`tracking_name` (``train/...``, ``eval/...``, ``time/...``,
``staleness/...``, ``reward/<env>/...``, ``fault/...``, ``numerics/...``, ``prompts/...``). docs/training.md,
"Tracking", has the table.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
from pathlib import Path
from typing import Any

from rayrl.config import Config
from rayrl.errors import ConfigError

log = logging.getLogger("rayrl")

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # wandb's own folder under the run: offline-run-*/, run-*/
WANDB_ID_FILE = "rayrl-run-id"  # in WANDB_DIR: a resumed run continues this wandb run
INSTALL_HINT = "pip install 'rayrl[tracking]'"


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


# ---- one naming scheme ---------------------------------------------------------------------------
# metrics.jsonl keys without a prefix that are not train/<key> in the trackers
RENAMED = {"eval_reward_mean": "eval/reward_mean", "step_time_s": "time/step_s"}
NOT_METRICS = ("step", "nonfinite")  # the step is the x axis; nonfinite lists keys (json_safe)


def tracking_name(key: str) -> str | None:
    """The name wandb, TensorBoard and Ray give the metrics.jsonl key ``key`` (None: not a metric).

    A key with a prefix keeps it (``time/...``, ``staleness/...``, ``reward/<env>/...``, ``eval/<env>/...``,
    ``fault/...``, ``numerics/...``, ``prompts/...``, ``value/...``, ``dynamic_sampling/...``); the
    unprefixed ones are the step's training statistics, ``train/<key>``, except ``eval_reward_mean`` ->
    ``eval/reward_mean`` and ``step_time_s`` -> ``time/step_s``."""
    if key in NOT_METRICS:
        return None
    if "/" in key:
        return key
    return RENAMED.get(key, f"train/{key}")


def tracked_scalars(metrics: dict[str, Any]) -> dict[str, float | int]:
    """The numeric metrics of one metrics.jsonl record under their :func:`tracking_name` (booleans as 0/1;
    strings, lists and None left out)."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        name = tracking_name(key)
        if name is None or value is None or not isinstance(value, numbers.Real):
            continue
        out[name] = int(value) if isinstance(value, numbers.Integral) else float(value)
    return out


# The Ray metrics (Gauges, tagged run=<run name>): tracking name -> description. Also rayrl_step (the step),
# rayrl_weights_version (tag replica=i), rayrl_env_reward_mean and rayrl_env_eval_reward_mean (tag env) and
# the counter rayrl_steps (Prometheus: rayrl_steps_total). Prometheus adds Ray's prefix: ray_rayrl_...
RAY_GAUGES = {
    "train/reward_mean": "Mean reward of the last step's samples",
    "eval/reward_mean": "Held-out reward at the last evaluation",
    "time/step_s": "Seconds the last step took",
    "train/tokens_per_s": "Tokens (prompt and completion) per second in the last step",
    "time/publish_s": "Seconds publishing the last step's weights to the replicas took",
    "staleness/mean": "Mean policy versions between a sample's generation and its update",
    "staleness/max": "Largest staleness in the last step",
    "staleness/dropped_samples": "Samples dropped as too stale in the last step",
    "train/policy_version": "Policy version after the last update",
    "fault/restarts": "Replica and rollout-worker restarts in this run so far",
}


def ray_metric_name(name: str) -> str:
    """A tracking name as a Ray metric: ``train/reward_mean`` -> ``rayrl_train_reward_mean``."""
    return "rayrl_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def env_reward(name: str) -> tuple[str, str] | None:
    """``("reward" | "eval", env)`` for ``reward/<env>/reward_mean`` and ``eval/<env>/reward_mean``, else None."""
    head, _, rest = name.partition("/")
    if head in ("reward", "eval") and rest.endswith("/reward_mean") and len(rest) > len("/reward_mean"):
        return head, rest[: -len("/reward_mean")]
    return None


# ---- the writer -----------------------------------------------------------------------------------
def missing(what: str, module: str) -> ConfigError:
    return ConfigError(f"{what} needs the Python package {module}, which this environment lacks: {INSTALL_HINT} "
                       "(or pip install -c constraints.txt -e '.[tracking]' in a checkout)")


def check_tracking_installed(cfg: Config) -> None:
    """Raise ConfigError when a sink ``cfg`` asks for cannot be imported (checked before any actor starts)."""
    import importlib.util

    if cfg.wandb.project and importlib.util.find_spec("wandb") is None:
        raise missing(f"[wandb] project = {cfg.wandb.project!r}", "wandb")
    if cfg.log.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise missing("log.tensorboard = true (the default; --log.tensorboard false turns it off)", "tensorboardX")


class MetricsWriter:
    """Appends step metrics to ``metrics.jsonl`` and hands them to the sinks ``cfg`` asks for: TensorBoard
    (``log.tensorboard``), wandb (``[wandb] project``) and Ray metrics (``log.ray_metrics``, when this process
    is connected to Ray). ``resume_step``: the run resumes after that step (later records are dropped from
    metrics.jsonl, hidden in TensorBoard and not logged to wandb twice). ``run_name`` tags the Ray metrics
    (default: the folder's name)."""

    def __init__(self, cfg: Config, output_dir: Path, resume_step: int | None, run_name: str | None = None):
        self.path = output_dir / METRICS_FILE
        last_written = last_step(self.path) if resume_step is not None else None
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        self.sinks: list[Any] = []
        try:
            if cfg.log.tensorboard:
                self.sinks.append(TensorBoardSink(output_dir / TENSORBOARD_DIR, resume_step, cfg))
            if cfg.wandb.project:
                self.sinks.append(WandbSink(cfg, output_dir, resume_step, last_written))
            if cfg.log.ray_metrics and ray_connected():
                self.sinks.append(RayMetricsSink(run_name or output_dir.name))
        except BaseException:
            self.close()
            raise

    def write(self, metrics: dict[str, Any], weight_loads: list | None = None) -> None:
        """One step's record; ``weight_loads``: the replicas' load_weights calls of the newest version (their
        versions, as far as they returned, go to the Ray metric rayrl_weights_version)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(metrics), allow_nan=False) + "\n")
        if not self.sinks:
            return
        scalars = tracked_scalars(metrics)
        for sink in self.sinks:
            sink.write(metrics["step"], scalars)
            if weight_loads and isinstance(sink, RayMetricsSink):
                sink.replica_versions(weight_loads)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


class TensorBoardSink:
    """Every tracked scalar at its step in ``<run>/tensorboard`` (tensorboardX: ray[tune] brings it, no
    TensorFlow). A fresh run hides events of a run that crashed in the folder before it (purge step 0); a
    resumed one hides the previous attempt's steps after the resume step."""

    def __init__(self, folder: Path, resume_step: int | None, cfg: Config):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise missing("log.tensorboard = true (the default; --log.tensorboard false turns it off)",
                          "tensorboardX") from e
        import time

        purge = 0 if resume_step is None else resume_step + 1
        # file names carry the second it started: the suffix orders (and separates) two in one second
        self.writer = SummaryWriter(logdir=str(folder), purge_step=purge, flush_secs=10,
                                    filename_suffix=f".{time.time_ns() % 10**9:09d}")
        if resume_step is None:
            text = json.dumps(cfg.model_dump(mode="json"), indent=2)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), global_step=0)

    def write(self, step: int, scalars: dict[str, float | int]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


def wandb_api_key_present() -> bool:
    """Whether wandb has an API key: WANDB_API_KEY or a netrc entry (``$NETRC`` or ``~/.netrc``) for the
    host of ``$WANDB_BASE_URL`` (default api.wandb.ai), where ``wandb login`` writes it."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbSink:
    """One wandb run per rayrl run: the config (``cfg.model_dump()``) and every tracked scalar at its step.
    Online with an API key, otherwise offline under ``<run>/wandb/offline-run-*`` (``wandb sync`` uploads it;
    ``$WANDB_MODE``, when set, decides instead). A resumed run continues the same wandb run (its id is kept in
    ``<run>/wandb/rayrl-run-id``) and logs only steps after the last one logged before: wandb steps only grow,
    so the steps trained again after the resume keep their first values there (metrics.jsonl has the new)."""

    def __init__(self, cfg: Config, output_dir: Path, resume_step: int | None, last_written: int | None):
        try:
            import wandb
        except ImportError as e:
            raise missing(f"[wandb] project = {cfg.wandb.project!r}", "wandb") from e
        import secrets

        folder = output_dir / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.exists() else ""
        if not run_id:  # a fresh run (also in a crashed run's folder) is a new wandb run
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id + "\n")
        mode = None if os.environ.get("WANDB_MODE") else ("online" if wandb_api_key_present() else "offline")
        self.run = wandb.init(
            project=cfg.wandb.project, name=cfg.wandb.name or cfg.name, id=run_id, resume="allow",
            config=cfg.model_dump(mode="json"), dir=str(output_dir), mode=mode, settings=wandb.Settings(quiet=True),
        )
        self.first_step = max(-1 if last_written is None else last_written + 1, int(self.run.step or 0))
        if getattr(self.run, "offline", False):
            sync_dir = getattr(self.run.settings, "sync_dir", None) or folder
            log.info("wandb: no API key (WANDB_API_KEY or ~/.netrc), so run %s is logged offline in %s; upload it "
                     "with `wandb sync %s` (a resumed run adds a folder: sync them in order)", run_id, sync_dir, sync_dir)
        if resume_step is not None and self.first_step > resume_step + 1:
            log.info("wandb: steps %d-%d were logged before this resume; wandb keeps those values (its steps only "
                     "grow) and gets steps from %d on", resume_step + 1, self.first_step - 1, self.first_step)

    def write(self, step: int, scalars: dict[str, float | int]) -> None:
        if step >= self.first_step:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def ray_connected() -> bool:
    import sys

    ray = sys.modules.get("ray")  # a process that never imported Ray is not connected to it
    return ray is not None and ray.is_initialized()


_RAY_METRICS: dict[str, Any] = {}  # one Ray metric object per name and process


def ray_metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...]):
    if name not in _RAY_METRICS:
        from ray.util import metrics

        _RAY_METRICS[name] = getattr(metrics, kind)(name, description=description, tag_keys=tag_keys)
    return _RAY_METRICS[name]


class RayMetricsSink:
    """Sets the Ray metrics of :data:`RAY_GAUGES` (and per-environment rewards, the step, the replicas'
    weights versions) from the driver, each tagged ``run``: the metrics agent of the driver's node exports
    them (Prometheus endpoint, the Ray dashboard's metrics view) every few seconds."""

    def __init__(self, run_name: str):
        self.tags = {"run": run_name}
        # every gauge's newest value, set again at each step: Ray drops a gauge from its export a few intervals
        # after its last set, so one set only at evaluations (eval reward) would show as short segments
        self.values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float | int] = {}

    def write(self, step: int, scalars: dict[str, float | int]) -> None:
        if "time/step_s" in scalars:  # a trained step (step 0 is the evaluation before any update)
            ray_metric("Counter", "rayrl_steps", "Steps trained by this driver", ("run",)).inc(1, tags=self.tags)
        self.values[("rayrl_step", "The last step written", ())] = step
        for name, value in scalars.items():
            if name in RAY_GAUGES:
                self.values[(ray_metric_name(name), RAY_GAUGES[name], ())] = value
            elif (per_env := env_reward(name)) is not None:
                kind, env = per_env
                metric = "rayrl_env_reward_mean" if kind == "reward" else "rayrl_env_eval_reward_mean"
                what = "Mean reward per environment" if kind == "reward" else "Held-out reward per environment"
                self.values[(metric, what, (("env", env),))] = value
        for (metric, what, extra), value in self.values.items():
            keys = ("run", *(k for k, _ in extra))
            ray_metric("Gauge", metric, what, keys).set(value, tags={**self.tags, **dict(extra)})

    def replica_versions(self, weight_loads: list) -> None:
        """rayrl_weights_version{replica=i}: the version replica i returned from its newest load (a load still
        running, or one that failed, leaves the gauge at what it was; the driver handles the failure)."""
        import ray

        gauge = ray_metric("Gauge", "rayrl_weights_version", "Weights version each replica holds", ("run", "replica"))
        ready, _ = ray.wait(list(weight_loads), num_returns=len(weight_loads), timeout=0, fetch_local=True)
        done = set(ready)
        for i, ref in enumerate(weight_loads):
            if ref in done:
                try:
                    gauge.set(int(ray.get(ref, timeout=0)), tags={**self.tags, "replica": str(i)})
                except Exception:  # noqa: BLE001 - a failed load is reported by the driver's own wait
                    pass

    def close(self) -> None:
        pass


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` as strict JSON allows: a NaN or infinite value becomes null and its key is listed under
    ``"nonfinite"`` (so metrics.jsonl stays valid JSON that any reader parses)."""
    import math

    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return metrics
    return {**{k: (None if k in bad else v) for k, v in metrics.items()}, "nonfinite": bad}


def last_step(path: Path) -> int | None:
    """The largest step in a metrics file (None: no file or no record)."""
    if not path.exists():
        return None
    return max((json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()), default=None)


def truncate_after(path: Path, step: int) -> None:
    """Drop metric lines of steps after ``step`` (they are about to be run again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
