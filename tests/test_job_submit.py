"""``ray job submit --working-dir . -- rayrl train ...`` against a separately started ``ray start --head``.

The cluster is this test's own: its own temp dir, its own free ports (so it never meets the session's
in-process cluster of ``conftest.ray_cluster`` nor another Ray on the machine), token authentication on
(Ray 2.60's default) with a token made here and handed to both the cluster and the client through
``RAY_AUTH_TOKEN``. It is stopped by signalling its own process session, never with ``ray stop``
(which kills every Ray process on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray and rayrl live beside python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any RAY_* setting (the session's cluster may have set some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def session_processes(sid: int) -> list[int]:
    """Pids of every process in process session ``sid`` (the head and everything it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def wait_until_up(url: str, token: str, head: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the dashboard at {url} did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def head_node():
    """A one-node Ray cluster (2 CPUs, dashboard with the job server) on free ports; yields (dashboard URL, env)."""
    if sys.platform != "linux":
        pytest.skip("stopping only this cluster relies on Linux process sessions")
    temp_dir = Path(tempfile.mkdtemp(prefix="rayrl-job-", dir="/tmp"))  # short: Unix socket paths are limited
    token = secrets.token_hex(32)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    dashboard_port = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard", "true",
        "--dashboard-host", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats",
    ]  # fmt: skip
    for flag, port in ports.items():
        command += [flag, str(port)]
    log = temp_dir / "ray-start.log"
    with open(log, "w") as out:
        # A new process session: everything the head starts (GCS, raylet, dashboard, workers) stays in it.
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_until_up(f"{address}/api/version", token, head, log)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` shuts its processes down on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.monotonic() + 15
        while session_processes(head.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in session_processes(head.pid):  # stragglers: only this cluster's, by session id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not session_processes(head.pid), "processes of the test's Ray cluster outlived SIGKILL"


def ray_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_job_submit_runs_rayrl_train_on_an_existing_cluster(head_node, tmp_path):
    address, cluster_env = head_node
    token = cluster_env["RAY_AUTH_TOKEN"]
    job_id = f"rayrl-test-{secrets.token_hex(4)}"
    run_dir = tmp_path / "run"
    entrypoint = [
        "rayrl", "train", "experiments/default.toml", "--output-dir", str(run_dir),
        "--max_steps", "2", "--batch_size", "16", "--rollouts_per_example", "4", "--seq_len", "16",
        "--warmstart.enabled", "false", "--model.cache_dir", str(tmp_path / "cache"),
        "--model.tiny.hidden_size", "32", "--model.tiny.num_layers", "1", "--model.tiny.intermediate_size", "64",
        "--env.0.args.eval_size", "100", "--eval.interval", "0", "--eval.at_start", "false",
        "--inference.threads", "1", "--learner.threads", "1", "--learner.micro_batch_size", "16",
        "--ckpt.interval", "0", "--log.progress", "false",
    ]  # fmt: skip

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
