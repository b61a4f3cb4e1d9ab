"""Ray clusters of a test's own, started with ``ray start`` as users do: own temp dir, own free ports, token
authentication on (Ray 2.60's default). Each node runs in a process session of its own and is stopped by
signalling that session, never with ``ray stop`` (which kills every Ray process on the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import shlex
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


@contextlib.contextmanager
def started_head(num_cpus: float):
    """Start a head node with ``num_cpus`` CPUs; yields (dashboard URL, client env, GCS address); stops it."""
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
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", str(num_cpus), "--include-dashboard", "true",
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
        yield address, env, f"127.0.0.1:{ports['--port']}"
    finally:
        stop_session(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_session(process: subprocess.Popen) -> None:
    """SIGTERM a `ray start --block` (it shuts its processes down), then SIGKILL whatever of its session is left."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    deadline = time.monotonic() + 15
    while session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in session_processes(process.pid):  # stragglers: only this node's, by session id
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    assert not session_processes(process.pid), "processes of the test's Ray node outlived SIGKILL"




def can_hide_folders() -> bool:
    """Whether this machine lets a process see an empty tmpfs over a folder (a mount namespace of its own)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@contextlib.contextmanager
def started_worker_node(gcs_address: str, env: dict[str, str], num_cpus: float, hidden: list[Path]):
    """Join a worker node to the cluster at ``gcs_address``. It runs in a mount namespace of its own in which
    every folder of ``hidden`` is an empty tmpfs: a second machine, as far as files go, that does not see
    what the driver's machine keeps there. Yields its process; stops it."""
    if not can_hide_folders():
        pytest.skip("needs a mount namespace of its own (unshare -m with tmpfs) to play a second machine")
    temp_dir = Path(tempfile.mkdtemp(prefix="rayrl-node-", dir="/tmp"))
    ports = ["--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"]
    command = [str(BIN / "ray"), "start", "--address", gcs_address, "--block", "--num-cpus", str(num_cpus),
               "--disable-usage-stats"]  # fmt: skip
    for flag in ports:
        command += [flag, str(free_port())]
    mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(folder))}" for folder in hidden)
    shell = f"{mounts} && exec {' '.join(shlex.quote(c) for c in command)}" if hidden else shlex.join(command)
    log = temp_dir / "ray-node.log"
    with open(log, "w") as out:
        node = subprocess.Popen(["unshare", "-m", "sh", "-c", shell], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield node, log
    finally:
        stop_session(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_nodes(env: dict[str, str], gcs_address: str, count: int, node: subprocess.Popen, log: Path,
                   timeout: float = 60.0) -> None:  # fmt: skip
    """Block until the cluster has ``count`` alive nodes."""
    script = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
              "print(sum(1 for n in ray.nodes() if n['Alive']))")  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            pytest.fail(f"the worker node exited with {node.returncode}:\n{log.read_text()[-3000:]}")
        out = subprocess.run([sys.executable, "-c", script, gcs_address], env=env, capture_output=True, text=True,
                             timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1.0)
    pytest.fail(f"the cluster did not reach {count} nodes within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
