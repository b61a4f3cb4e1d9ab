"""Actors that die or freeze mid-run: replicas and rollout workers are restarted by Ray (a restarted replica
loads the newest weights before it serves), their in-flight calls retried, a frozen replica is detected by
its timeout, killed and restarted, and the run completes every step exactly once, the restarts counted."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from rayrl.storage.checkpoints import CheckpointStore


def metric_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


class Saboteur(threading.Thread):
    """Once the run has logged ``after_step`` steps, sends ``signum`` to each named actor's process in turn."""

    def __init__(self, run: Path, namespace: str, targets: list[str], signum: int, after_step: int = 2):
        super().__init__(daemon=True)
        self.run_dir, self.namespace, self.targets, self.signum, self.after_step = run, namespace, targets, signum, after_step
        self.done: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        import ray

        try:
            deadline = time.monotonic() + 300
            for target in self.targets:
                while len(metric_steps(self.run_dir)) < self.after_step + len(self.done):
                    assert time.monotonic() < deadline, "the run did not get far enough"
                    time.sleep(0.05)
                pid = ray.get(ray.get_actor(target, namespace=self.namespace).pid.remote(), timeout=60)
                os.kill(pid, self.signum)
                self.done.append(target)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def run_with(small_config, run: Path, saboteur_targets: list[str], signum: int, **extra):
    from rayrl.driver import train

    cfg = small_config(run, max_steps=8, eval={"interval": 4, "num_examples": 10}, ckpt={"interval": 4, "keep": 0},
                       inference={"replicas": 2, "threads": 1, "cpus_per_replica": 0.25},
                       rollout={"workers": 2}, **extra)
    saboteur = Saboteur(run, run.name, saboteur_targets, signum)
    saboteur.start()
    result = train(cfg)
    saboteur.join(timeout=10)
    assert saboteur.error is None and saboteur.done == saboteur_targets, saboteur.error
    return cfg, result


def check_complete(cfg, run: Path, result) -> None:
    assert result.final_step == cfg.max_steps
    assert [s for s in metric_steps(run) if s] == list(range(1, cfg.max_steps + 1))  # every step exactly once
    store = CheckpointStore(run / "checkpoints")
    assert store.latest_step() == cfg.max_steps and store.problem(cfg.max_steps) is None


@pytest.mark.slow
def test_killed_replica_and_rollout_worker_are_restarted_and_the_run_completes(
    ray_cluster, small_config, base_model_path, tmp_path
):
    run = tmp_path / "killed"
    cfg, result = run_with(small_config, run, ["replica-1", "rollout-0"], signal.SIGKILL)
    check_complete(cfg, run, result)
    assert result.metrics[-1]["fault/restarts"] == 2
    # the restarted replica serves the newest weights: every step's samples were on-policy
    assert all(m.get("staleness/max", 0) == 0 for m in result.metrics if "staleness/max" in m)


@pytest.mark.slow
def test_a_frozen_replica_is_timed_out_killed_restarted_and_the_run_completes(
    ray_cluster, small_config, base_model_path, tmp_path
):
    run = tmp_path / "frozen"
    start = time.monotonic()
    cfg, result = run_with(small_config, run, ["replica-0"], signal.SIGSTOP, fault={"generate_timeout_s": 5})
    check_complete(cfg, run, result)
    assert result.metrics[-1]["fault/restarts"] == 1
    assert time.monotonic() - start < 200  # not gRPC's minutes-long keepalive
