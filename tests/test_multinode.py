"""A two-node cluster on one machine, the second node a "second machine" as far as files go: it runs in a
mount namespace of its own where the driver's run folder and model cache are empty tmpfs mounts.

The head node (the driver's) has no CPUs, so every replica, learner and rollout worker runs on the other
node. A local output folder is then refused before anything runs; with the run folder on S3 (moto on
loopback) the base model reaches the actors through the object store, the learner writes checkpoints to
S3, the driver commits them, and a second invocation resumes from there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import SMALL, merge
from ray_processes import BIN, REPO, started_head, started_worker_node, wait_for_nodes

from rayrl.storage.checkpoints import INFO_FILE as INFO


def toml(table: dict, prefix: str = "") -> str:
    """A config dict as TOML (tables, one [[env]] array of tables, scalars, inline dicts)."""
    scalars, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict) and key != "args":
            tables.append(f"\n[{prefix}{key}]\n" + toml(value, f"{prefix}{key}."))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            tables += [f"\n[[{prefix}{key}]]\n" + toml(item, f"{prefix}{key}.") for item in value]
        elif isinstance(value, dict):  # [[env]] args: an inline table
            scalars.append(f"{key} = {{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }")
        else:
            scalars.append(f"{key} = {json.dumps(value)}")
    return "\n".join(scalars) + "".join(tables) + "\n"


def actor_nodes(dashboard: str, env: dict) -> list[tuple[str, str]]:
    """(class name, "head" or "worker") of every actor the cluster has run, from Ray's state API."""
    script = (
        "import json, sys, ray\n"
        "from ray.util.state import list_actors, list_nodes\n"
        "heads = {n.node_id for n in list_nodes(address=sys.argv[1]) if n.is_head_node}\n"
        "print(json.dumps([(a.class_name, 'head' if a.node_id in heads else 'worker')\n"
        "                  for a in list_actors(address=sys.argv[1], detail=True, limit=10000)]))\n"
    )
    out = subprocess.run([str(BIN / "python"), "-c", script, dashboard], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return [tuple(pair) for pair in json.loads(out.stdout.strip().splitlines()[-1])]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_second_machine_gets_the_model_and_the_checkpoints_through_ray_and_s3(
    base_model_path, model_cache, s3_server, tmp_path
):
    driver_only = tmp_path / "driver-only"  # the second node sees an empty folder here
    cache = driver_only / "cache"
    shutil.copytree(Path(base_model_path), cache / "base" / Path(base_model_path).name)  # the driver's cached base
    node_cache = tmp_path / "node-cache"  # where the second node keeps its copies (RAYRL_CACHE_DIR)
    raw = merge(SMALL, {"max_steps": 2, "model": {"cache_dir": str(cache)}, "eval": {"interval": 2},
                        "ckpt": {"interval": 1, "keep": 0}, "inference": {"cpus_per_replica": 1},
                        "learner": {"cpus_per_worker": 1}})  # fmt: skip
    experiment = driver_only / "small.toml"
    experiment.write_text(toml(raw))

    with started_head(num_cpus=0) as (dashboard, head_env, gcs):
        node_env = {**head_env, "RAYRL_CACHE_DIR": str(node_cache)}
        with started_worker_node(gcs, node_env, num_cpus=4, hidden=[driver_only]) as (node, log):
            wait_for_nodes(head_env, gcs, 2, node, log)
            env = {**head_env, "RAY_ADDRESS": gcs, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                   "RAYRL_CACHE_DIR": str(driver_only / "driver-cache")}

            def rayrl(*args: str) -> subprocess.CompletedProcess:
                return subprocess.run([str(BIN / "rayrl"), "train", str(experiment), *args], env=env, cwd=REPO,
                                      capture_output=True, text=True, timeout=300)

            local = rayrl("--output-dir", str(driver_only / "run"))
            assert local.returncode == 2, local.stderr[-3000:]
            assert "is not visible from 1 of the cluster's 2 nodes" in local.stderr, local.stderr[-3000:]
            assert "Set ckpt.dir (or --output-dir) to a storage URI (s3://" in local.stderr
            assert "Traceback" not in local.stderr and not (driver_only / "run" / "checkpoints" / "step_1").exists()

            output = f"s3://rayrl/multinode-{uuid.uuid4().hex[:6]}?{s3_server}"
            first = rayrl("--output-dir", output)
            assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-4000:]
            resumed = rayrl("--output-dir", output, "--max_steps", "3", "--ckpt.resume_step", "-1")
            assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
            placed = actor_nodes(dashboard, head_env)

    # the driver ran on the head; every actor of both runs (replicas, learners, rollout workers, the policy
    # board) on the other node, the head holding no resources for actors
    assert {cls for cls, _ in placed} >= {"InferenceActor", "Learner", "RolloutWorker", "PolicyBoard"}, placed
    assert {node for _, node in placed} == {"worker"}, placed

    out = first.stdout + first.stderr + resumed.stdout + resumed.stderr
    assert "Step 2 |" in out and "resuming from s3://" in out and "Step 3 |" in out
    # what the second node holds: the base model (shipped through the object store; the same copy serves
    # both runs) and the checkpoint it resumed from (downloaded from S3, checked against its manifest)
    copies = sorted(p for p in (node_cache / "models").iterdir() if (p / "config.json").is_file())
    kinds = sorted("base" if (p / "rayrl_base.json").exists() else f"step {json.loads((p / INFO).read_text())['step']}"
                   for p in copies)  # fmt: skip
    assert kinds == ["base", "step 2"], kinds
