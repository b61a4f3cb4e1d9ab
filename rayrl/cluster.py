"""Connecting to Ray: join an existing cluster (``RAY_ADDRESS``, ``ray job submit``) or start a local one."""

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
