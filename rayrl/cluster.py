"""Connecting to Ray: join an existing cluster (``RAY_ADDRESS``, ``ray job submit``) or start a local one."""

from __future__ import annotations

import os

from rayrl.config import RayConfig


def connect(cfg: RayConfig) -> bool:
    """Initialise Ray unless already initialised; return True if this call did it (and owns shutdown)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=cfg.dashboard, log_to_driver=True)
    return True
