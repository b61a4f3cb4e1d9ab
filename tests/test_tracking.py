"""Where users look at a run: wandb (offline without an API key), TensorBoard event files and Ray metrics
(the node's Prometheus endpoint), all under one naming scheme (rayrl.tracking.tracking_name). One short
real run is shared by the three sinks' tests; the rest are pure or use MetricsWriter alone."""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from rayrl.config import Config
from rayrl.errors import ConfigError
from rayrl.tracking import (
    INSTALL_HINT,
    MetricsWriter,
    env_reward,
    ray_metric_name,
    read_metrics,
    tracked_scalars,
    tracking_name,
)


# ---- readers: what wandb and TensorBoard wrote, read back without their servers ---------------------------
def read_wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` transaction log: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log records in 32 KiB blocks (crc32c, length, type: full, first, middle, last), each a
    ``wandb_internal_pb2.Record`` (wandb 0.31 no longer ships a Python reader)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, records, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):  # still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            records.append(partial + chunk)
    return [wandb_internal_pb2.Record.FromString(r) for r in records]


def wandb_run(folder: Path) -> tuple[dict, list[tuple[int, dict]]]:
    """The config and the history rows ``(step, {name: value})`` of one offline run folder (waiting for its
    exit record: wandb's service process may still be writing the file after ``finish()`` returned)."""
    (log_file,) = folder.glob("run-*.wandb")
    deadline = time.monotonic() + 20
    while True:
        records = read_wandb_records(log_file)
        if records and records[-1].WhichOneof("record_type") == "exit" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    config, history = {}, []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates})
        elif kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            history.append((record.history.step.num, {k: v for k, v in row.items() if not k.startswith("_")}))
    return config, history


def read_tensorboard(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar ``{tag: {step: value}}`` as TensorBoard shows it: event files in name order, and a
    SessionLog START at step s (a resume's purge step) hides what earlier files logged at steps >= s."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):  # TFRecord: uint64 length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 16 + length
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text endpoint: (name, labels, value)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = []
    for line in body.splitlines():
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if m and not line.startswith("#"):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def close_to(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)  # TensorBoard keeps float32


# ---- the naming scheme (pure) --------------------------------------------------------------------------
def test_tracking_names_follow_one_scheme():
    expected = {
        "reward_mean": "train/reward_mean", "reward_std": "train/reward_std", "loss": "train/loss",
        "tokens_per_s": "train/tokens_per_s", "seq_len_mean": "train/seq_len_mean", "lr": "train/lr",
        "policy_version": "train/policy_version", "eval_reward_mean": "eval/reward_mean",
        "step_time_s": "time/step_s", "time/publish_s": "time/publish_s", "staleness/max": "staleness/max",
        "reward/arithmetic/reward_mean": "reward/arithmetic/reward_mean",
        "eval/affine:abd/reward_mean": "eval/affine:abd/reward_mean", "fault/restarts": "fault/restarts",
        "numerics/skipped_updates": "numerics/skipped_updates", "prompts/truncated": "prompts/truncated",
        "step": None, "nonfinite": None,
    }
    assert {key: tracking_name(key) for key in expected} == expected


def test_tracked_scalars_keep_numbers_under_tracking_names():
    record = {"step": 3, "reward_mean": np.float64(0.5), "tokens": 12.0, "train_samples": np.int64(8),
              "eval_reward_mean": 0.25, "nonfinite": ["loss"], "loss": None, "flag": True, "note": "x"}
    scalars = tracked_scalars(record)
    assert scalars == {"train/reward_mean": 0.5, "train/tokens": 12.0, "train/train_samples": 8,
                       "eval/reward_mean": 0.25, "train/flag": 1}
    assert type(scalars["train/reward_mean"]) is float and type(scalars["train/train_samples"]) is int


def test_ray_metric_names():
    assert ray_metric_name("train/reward_mean") == "rayrl_train_reward_mean"
    assert ray_metric_name("time/step_s") == "rayrl_time_step_s"
    assert env_reward("reward/affine:abd/reward_mean") == ("reward", "affine:abd")
    assert env_reward("eval/arithmetic/reward_mean") == ("eval", "arithmetic")
    assert env_reward("eval/reward_mean") is None and env_reward("reward/arithmetic/samples") is None


# ---- optional sinks -----------------------------------------------------------------------------------
def test_sinks_not_asked_for_need_nothing_installed_and_asked_for_name_the_extra(tmp_path, monkeypatch, small_config):
    from rayrl.driver import Trainer

    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # as if not installed
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)
    writer = MetricsWriter(Config.model_validate({"log": {"tensorboard": False, "ray_metrics": False}}), tmp_path, None)
    writer.write({"step": 0, "eval_reward_mean": 0.5})
    writer.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 0, "eval_reward_mean": 0.5}]
    with pytest.raises(ConfigError, match=re.escape(INSTALL_HINT)):
        MetricsWriter(Config(), tmp_path, None)  # log.tensorboard defaults to true
    with pytest.raises(ConfigError, match=r"\[wandb\] project = 'p' needs the Python package wandb.*" + re.escape(INSTALL_HINT)):
        Trainer(small_config(tmp_path / "run", wandb={"project": "p"}, log={"tensorboard": False}))
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """No API key anywhere wandb looks (environment, netrc); its own folders under tmp_path."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def test_a_resume_logs_each_step_once_in_wandb_and_tensorboard_hides_the_replaced_steps(tmp_path, offline_wandb, caplog):
    """Steps 0-4 written, the run resumes from its step-2 checkpoint: metrics.jsonl and TensorBoard show the
    new steps 3-4; wandb (whose steps only grow) keeps the first 3-4 and gets 5 from the resumed run."""
    cfg = Config.model_validate({"name": "resume", "wandb": {"project": "rayrl-test"}, "log": {"ray_metrics": False}})
    writer = MetricsWriter(cfg, tmp_path, None)
    for step in range(5):
        writer.write({"step": step, "reward_mean": step / 10})
    writer.close()
    time.sleep(1.05 - time.time() % 1)  # wandb names a run's folder by the second it started
    with caplog.at_level(logging.INFO, logger="rayrl"):
        writer = MetricsWriter(cfg, tmp_path, resume_step=2)
    for step in (3, 4, 5):
        writer.write({"step": step, "reward_mean": 1 + step / 10})
    writer.close()
    assert [(m["step"], m["reward_mean"]) for m in read_metrics(tmp_path / "metrics.jsonl")] == [
        (0, 0.0), (1, 0.1), (2, 0.2), (3, 1.3), (4, 1.4), (5, 1.5)]
    assert read_tensorboard(tmp_path / "tensorboard")["train/reward_mean"] == pytest.approx(
        {0: 0.0, 1: 0.1, 2: 0.2, 3: 1.3, 4: 1.4, 5: 1.5})
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and len({f.name.rsplit("-", 1)[1] for f in folders}) == 1  # one wandb run id
    steps = [step for folder in folders for step, _ in wandb_run(folder)[1]]
    assert steps == [0, 1, 2, 3, 4, 5]  # in order, none twice
    assert wandb_run(folders[1])[1] == [(5, {"train/reward_mean": 1.5})]
    assert "steps 3-4 were logged before this resume" in caplog.text


# ---- one real run, three sinks ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked_run(ray_cluster, base_model_path, model_cache, tmp_path_factory):
    """Two steps of the small config with wandb (no API key: offline), TensorBoard and Ray metrics."""
    from conftest import SMALL, merge

    from rayrl.driver import train

    tmp = tmp_path_factory.mktemp("tracking")
    out = tmp / f"tracked-{uuid.uuid4().hex[:6]}"
    cfg = Config.model_validate(merge(SMALL, {
        "output_dir": str(out), "max_steps": 2, "model": {"cache_dir": str(model_cache)},
        "ckpt": {"interval": 0, "at_end": False}, "wandb": {"project": "rayrl-test", "name": "tracked"},
    }))
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("rayrl")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
                mp.delenv(name, raising=False)
            mp.setenv("NETRC", str(tmp / "no-netrc"))
            for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
                mp.setenv(name, str(tmp / "wandb-home" / name.lower()))
            train(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, cfg, read_metrics(out / "metrics.jsonl"), records


def test_wandb_offline_run_holds_the_config_and_every_steps_metrics(tracked_run):
    out, cfg, metrics, logs = tracked_run
    (folder,) = (out / "wandb").glob("offline-run-*")
    assert any("wandb: no API key" in line and f"wandb sync {folder}" in line for line in logs), logs
    config, history = wandb_run(folder)
    assert config["max_steps"] == 2 and config["optim"]["lr"] == cfg.optim.lr
    assert config["env"][0]["id"] == "arithmetic" and config["wandb"]["project"] == "rayrl-test"
    assert [step for step, _ in history] == [m["step"] for m in metrics] == [0, 1, 2]
    for (step, row), record in zip(history, metrics):
        assert row == pytest.approx(tracked_scalars(record)), step
    assert {"train/reward_mean", "time/step_s", "train/tokens_per_s", "staleness/mean", "reward/arithmetic/reward_mean",
            "eval/reward_mean", "eval/arithmetic/reward_mean", "fault/restarts"} <= history[2][1].keys()


def test_tensorboard_has_every_numeric_metric_at_its_step(tracked_run):
    out, _, metrics, _ = tracked_run
    scalars = read_tensorboard(out / "tensorboard")
    for record in metrics:
        for name, value in tracked_scalars(record).items():
            assert close_to(scalars[name][record["step"]], value), (name, record["step"])
    assert set(scalars["train/reward_mean"]) == {1, 2} and set(scalars["eval/reward_mean"]) == {0, 2}


def ray_metric_problems(seen: dict[str, tuple[dict, float]], metrics: list[dict]) -> list[str]:
    """What the scraped rayrl metrics of one run get wrong against metrics.jsonl at the step they show."""
    want = {"step", "train_reward_mean", "eval_reward_mean", "time_step_s", "train_tokens_per_s", "time_publish_s",
            "staleness_mean", "staleness_max", "train_policy_version", "fault_restarts", "weights_version",
            "env_reward_mean", "env_eval_reward_mean", "steps_total"}
    if not want <= seen.keys():
        return [f"missing {sorted(want - seen.keys())}"]
    value = {name: v for name, (_, v) in seen.items()}
    step = int(value["step"])
    record = metrics[step]
    last_eval = next(m for m in reversed(metrics[: step + 1]) if "eval_reward_mean" in m)
    checks = {
        "a trained step": step >= 1,
        "train reward": 0 <= value["train_reward_mean"] <= 1 and close_to(value["train_reward_mean"], record["reward_mean"]),
        "eval reward": close_to(value["eval_reward_mean"], last_eval["eval_reward_mean"]),
        "env rewards": close_to(value["env_reward_mean"], record["reward/arithmetic/reward_mean"])
        and close_to(value["env_eval_reward_mean"], last_eval["eval/arithmetic/reward_mean"]),
        "times": close_to(value["time_step_s"], record["step_time_s"]) and value["train_tokens_per_s"] > 0
        and value["time_publish_s"] >= 0,
        "staleness, restarts": value["staleness_max"] == 0 and value["fault_restarts"] == 0,
        "steps counted": value["steps_total"] == step,
        "versions": value["train_policy_version"] == record["policy_version"] == value["weights_version"],
        "tags": seen["weights_version"][0]["replica"] == "0" and seen["env_reward_mean"][0]["env"] == "arithmetic",
    }
    return [f"step {step}: {name}" for name, ok in checks.items() if not ok]


def test_ray_metrics_reach_the_nodes_prometheus_endpoint(tracked_run, ray_cluster):
    """The driver's gauges, tagged with the run, on the metrics agent of a cluster started without the
    dashboard. The exporter publishes every few seconds: polled until a trained step is there."""
    out, _, metrics, _ = tracked_run
    node_ip = ray_cluster.util.get_node_ip_address()
    port = next(n["MetricsExportPort"] for n in ray_cluster.nodes() if n["NodeManagerAddress"] == node_ip and n["Alive"])
    deadline, problems = time.monotonic() + 30, ["not scraped"]
    while problems and time.monotonic() < deadline:
        seen = {name.removeprefix("ray_rayrl_"): (labels, value) for name, labels, value in scrape(port)
                if name.startswith("ray_rayrl_") and labels.get("run") == out.name}
        problems = ray_metric_problems(seen, metrics)
        if problems:
            time.sleep(0.5)
    assert not problems, problems
