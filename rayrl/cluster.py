"""The Ray cluster: join an existing one (``RAY_ADDRESS``, ``ray job submit``) or start a local one; check that
a folder is visible from every node."""

from __future__ import annotations

import logging
import os

from rayrl.config import RayConfig

log = logging.getLogger(__name__)


def connect(cfg: RayConfig) -> bool:
    """Initialise Ray unless already initialised; return True if this call did it (and owns shutdown)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        if os.environ.get("RAY_AUTH_MODE") is None:
            log.info(
                "joining the Ray cluster at %s; if it uses token authentication (Ray's default), set "
                "RAY_AUTH_MODE=token and the token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)",
                address,
            )
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=cfg.dashboard, log_to_driver=True)
    return True


def check_shared_folder(folder: str, setting: str, timeout_s: float = 120.0) -> None:
    """On a multi-node cluster, refuse a local ``folder`` that some node cannot see.

    Learners on any node write checkpoints there and replicas read them back: a folder of the driver's
    machine only would lose them. A marker file written here must be visible from every alive node (a
    zero-CPU task pinned to each); a storage URI passes as it is. Raises CheckpointError naming the nodes
    and the ``setting`` to change.
    """
    import uuid
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rayrl.errors import CheckpointError
    from rayrl.storage.location import is_local, open_location

    if not is_local(folder):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    path = Path(open_location(folder).path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / f".rayrl-visible-{uuid.uuid4().hex[:8]}"
        marker.write_text("written by the driver: are all nodes seeing this folder?\n")
    except OSError as e:
        raise CheckpointError(f"{setting}: cannot write into {path}: {e}") from None
    try:
        probe = ray.remote(num_cpus=0)(_sees)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker)) for n in nodes]  # fmt: skip
        seen = ray.get(refs, timeout=timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise CheckpointError(
            f"{path} is not visible from {len(blind)} of the cluster's {len(nodes)} nodes ({', '.join(blind)}): "
            "learners there could not write checkpoints into it, nor replicas read them back. Set "
            f"{setting} to a storage URI (s3://bucket/runs/NAME, gs://bucket/runs/NAME) or to a folder every node "
            "mounts (NFS, a shared volume)"
        )


def _sees(marker: str) -> bool:
    import os

    return os.path.exists(marker)
