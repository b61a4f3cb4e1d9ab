"""``ray job submit --working-dir . -- rayrl train ...`` against a separately started ``ray start --head``.

The cluster is this test's own: its own temp dir, its own free ports (so it never meets the session's
in-process cluster of ``conftest.ray_cluster`` nor another Ray on the machine), token authentication on
(Ray 2.60's default) with a token made here and handed to both the cluster and the client through
``RAY_AUTH_TOKEN``. It is stopped by signalling its own process session, never with ``ray stop``
(which kills every Ray process on the machine).
"""

from __future__ import annotations

import secrets
import subprocess

import pytest
from ray_processes import BIN, REPO, clean_env, started_head


def ray_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def tiny_train_command(run_dir, cache_dir, max_steps: int, ckpt_interval: int) -> list[str]:
    """``rayrl train`` of the default experiment shrunk to seconds a step: a 1-layer model, no warm-start."""
    return [
        "rayrl", "train", "experiments/default.toml", "--output-dir", str(run_dir),
        "--max_steps", str(max_steps), "--batch_size", "16", "--rollouts_per_example", "4", "--seq_len", "16",
        "--warmstart.enabled", "false", "--model.cache_dir", str(cache_dir),
        "--model.tiny.hidden_size", "32", "--model.tiny.num_layers", "1", "--model.tiny.intermediate_size", "64",
        "--env.0.args.eval_size", "100", "--eval.interval", "0", "--eval.at_start", "false",
        "--inference.threads", "1", "--learner.threads", "1", "--learner.micro_batch_size", "16",
        "--ckpt.interval", str(ckpt_interval), "--log.progress", "false",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def head_node():
    """A one-node Ray cluster (2 CPUs, dashboard with the job server) on free ports, shared by this module's
    jobs; yields (dashboard URL, env)."""
    with started_head(num_cpus=2) as (address, env, _):
        yield address, env


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_job_submit_runs_rayrl_train_on_an_existing_cluster(head_node, tmp_path):
    address, cluster_env = head_node
    token = cluster_env["RAY_AUTH_TOKEN"]
    job_id = f"rayrl-test-{secrets.token_hex(4)}"
    run_dir = tmp_path / "run"
    entrypoint = tiny_train_command(run_dir, tmp_path / "cache", max_steps=2, ckpt_interval=0)

    # What a user types, with the client settings Ray 2.60 needs against a token-authenticated cluster.
    client_env = clean_env(RAY_ADDRESS=address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    submitted = ray_cli(
        ["job", "submit", "--submission-id", job_id, "--working-dir", ".", "--", *entrypoint], client_env, 200
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]

    status = ray_cli(["job", "status", job_id], client_env, 60)
    assert "succeeded" in (status.stdout + status.stderr).lower(), status.stdout + status.stderr
    logs = ray_cli(["job", "logs", job_id], client_env, 60).stdout
    assert "Step 1 |" in logs and "Step 2 |" in logs, logs[-3000:]
    assert f"done: 2 steps, run folder {run_dir}" in logs, logs[-3000:]
    assert "Connecting to existing Ray cluster" in logs, "rayrl started its own cluster instead of joining"
    assert (run_dir / "checkpoints" / "step_2").is_dir()

    # Without the token the same cluster refuses the client: the setting the docs tell users about.
    no_token = ray_cli(["job", "status", job_id], clean_env(RAY_ADDRESS=address, HOME=str(tmp_path)), 60)
    assert no_token.returncode != 0
    assert "token" in (no_token.stdout + no_token.stderr).lower()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_job_stop_ends_a_submitted_run_with_a_final_checkpoint_and_the_resume_line(head_node, tmp_path):
    import json
    import time

    address, cluster_env = head_node
    job_id = f"rayrl-stop-{secrets.token_hex(4)}"
    run_dir = tmp_path / "run"
    entrypoint = tiny_train_command(run_dir, tmp_path / "cache", max_steps=500, ckpt_interval=1000)
    client_env = clean_env(RAY_ADDRESS=address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster_env["RAY_AUTH_TOKEN"])
    runtime_env = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "30"}})  # as docs/reliability.md says
    submitted = ray_cli(["job", "submit", "--no-wait", "--submission-id", job_id, "--working-dir", ".",
                         "--runtime-env-json", runtime_env, "--", *entrypoint], client_env, 120)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 200
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline, ray_cli(["job", "logs", job_id], client_env, 60).stdout[-3000:]
        time.sleep(0.2)

    stopped = ray_cli(["job", "stop", job_id], client_env, 90)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    logs = ray_cli(["job", "logs", job_id], client_env, 60).stdout
    reached = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert f"stopped by SIGTERM at step {reached} of 500" in logs and "--ckpt.resume_step -1" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{reached}"
