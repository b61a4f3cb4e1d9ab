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
    """Sends each (actor name, signal) of ``events`` in turn, the k-th once the run has logged
    ``after_step + k`` steps."""

    def __init__(self, run: Path, namespace: str, events: list[tuple[str, int]], after_step: int = 2):
        super().__init__(daemon=True)
        self.run_dir, self.namespace, self.events, self.after_step = run, namespace, events, after_step
        self.done: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        import ray

        try:
            deadline = time.monotonic() + 300
            for target, signum in self.events:
                while len(metric_steps(self.run_dir)) < self.after_step + len(self.done):
                    assert time.monotonic() < deadline, "the run did not get far enough"
                    time.sleep(0.05)
                pid = ray.get(ray.get_actor(target, namespace=self.namespace).pid.remote(), timeout=60)
                os.kill(pid, signum)
                self.done.append(target)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def run_with(small_config, run: Path, events: list[tuple[str, int]], after_step: int = 2, **extra):
    from rayrl.driver import train

    saboteur = Saboteur(run, run.name, events, after_step)
    saboteur.start()
    cfg = small_config(run, **extra)
    result = train(cfg)
    saboteur.join(timeout=10)
    assert saboteur.error is None and saboteur.done == [target for target, _ in events], saboteur.error
    return cfg, result


def check_complete(cfg, run: Path, result) -> None:
    assert result.final_step == cfg.max_steps
    assert [s for s in metric_steps(run) if s] == list(range(1, cfg.max_steps + 1))  # every step exactly once
    store = CheckpointStore(run / "checkpoints")
    assert store.latest_step() == cfg.max_steps and store.problem(cfg.max_steps) is None


@pytest.mark.slow
def test_killed_and_frozen_replicas_and_a_killed_worker_are_restarted_and_the_run_completes(
    ray_cluster, small_config, base_model_path, tmp_path
):
    run = tmp_path / "faults"
    start = time.monotonic()
    events = [("replica-1", signal.SIGKILL), ("rollout-0", signal.SIGKILL), ("replica-0", signal.SIGSTOP)]
    cfg, result = run_with(
        small_config, run, events, max_steps=8, eval={"interval": 4, "num_examples": 10},
        ckpt={"interval": 4, "keep": 0}, inference={"replicas": 2, "threads": 1, "cpus_per_replica": 0.25},
        rollout={"workers": 2}, fault={"generate_timeout_s": 5},
    )
    check_complete(cfg, run, result)
    assert result.metrics[-1]["fault/restarts"] == 3
    # restarted replicas serve the newest weights: every step's samples were on-policy
    assert all(m["staleness/max"] == 0 for m in result.metrics if "staleness/max" in m)
    assert time.monotonic() - start < 240  # the frozen one found by its deadline, not gRPC's minutes-long keepalive


@pytest.mark.slow
def test_a_dead_learner_is_rebuilt_from_the_newest_checkpoint_and_the_recovery_recorded(
    ray_cluster, small_config, base_model_path, tmp_path
):
    run = tmp_path / "learner"
    cfg, result = run_with(small_config, run, [("learner-0", signal.SIGKILL)], after_step=3, max_steps=8,
                           eval={"interval": 0}, ckpt={"interval": 2, "keep": 0})
    check_complete(cfg, run, result)
    info = json.loads((run / "checkpoints" / "step_8" / "training_info.json").read_text())
    [recovery] = info["recoveries"]
    assert recovery["resumed_from_step"] in (2, 4) and recovery["failed_at_step"] > recovery["resumed_from_step"]
    assert "learner-0" in recovery["what"]


@pytest.mark.slow
def test_recoveries_are_bounded_then_the_error_names_the_actor_and_step(
    ray_cluster, small_config, base_model_path, tmp_path
):
    from rayrl.errors import ActorError

    run = tmp_path / "bounded"
    with pytest.raises(ActorError, match=r"step \d: learner-0 \(.*\) died and was not restarted .* resume with"):
        run_with(small_config, run, [("learner-0", signal.SIGKILL)], after_step=2, max_steps=6,
                 eval={"interval": 0}, ckpt={"interval": 2, "keep": 0}, fault={"max_recoveries": 0})
