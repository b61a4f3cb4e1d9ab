"""Waiting for actors without hanging: every wait can be given up on a stop request, and has a deadline
after which the actors that did not answer are taken for frozen, killed for Ray to restart (their calls are
retried there), or named in an ActorError.

A signal handler cannot interrupt ``ray.get``; these waits look up every ``POLL_S`` seconds.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from rayrl.errors import ActorError

POLL_S = 0.2

log = logging.getLogger("rayrl")


class WaitAbandoned(Exception):
    """A stop was requested while waiting: the caller drops what it waited for."""


def wait_for(
    refs: list, what: str, timeout_s: float | None = None, names: list[str] | None = None, owners: list | None = None,
    restarts: int = 0, should_stop: Callable[[], bool] | None = None, restart_grace_s: float = 0.0,
) -> list:
    """``ray.get(refs)``, where ``refs[i]`` is a call to the actor ``owners[i]`` named ``names[i]``.

    ``should_stop()`` true: raises WaitAbandoned. Calls still pending ``timeout_s`` seconds after the wait
    began: with ``owners``, each of their actors is killed so that Ray restarts it and retries the call, and
    the wait begins again (``restart_grace_s`` longer, the time a restart takes), at most ``restarts`` times;
    then (or without owners) ActorError naming ``what`` and the actors."""
    import ray

    names = names or [f"actor {i}" for i in range(len(refs))]
    index = {ref: i for i, ref in enumerate(refs)}
    pending, kills = list(refs), 0
    results: dict = {}  # ref -> value, fetched once
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        if should_stop is not None and should_stop():
            raise WaitAbandoned
        step = POLL_S if should_stop is not None else None
        if deadline is not None:
            left = max(deadline - time.monotonic(), 0.0)
            step = left if step is None else min(step, left)
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=step)
        if pending and ready:  # a call that failed (its actor died) raises now, not after the others
            results.update(zip(ready, ray.get(ready)))
        if not pending or deadline is None or time.monotonic() < deadline:
            continue
        stuck = sorted({names[index[ref]] for ref in pending})
        if owners is None or kills >= restarts:
            raise ActorError(
                f"{what}: {', '.join(stuck)} did not answer within {timeout_s:g} s"
                + (f" (after {kills} restart(s))" if kills else "") + "; see its log in the Ray dashboard or "
                "/tmp/ray/session_latest/logs, and raise the fault.*_timeout_s setting if it was only slow"
            )
        kills += 1
        for name, actor in {names[index[r]]: owners[index[r]] for r in pending}.items():
            log.warning("%s: %s did not answer within %g s (frozen?); killing it so that Ray restarts it and "
                        "retries the call", what, name, timeout_s)
            ray.kill(actor, no_restart=False)
        deadline = time.monotonic() + timeout_s + restart_grace_s
    rest = [ref for ref in refs if ref not in results]
    results.update(zip(rest, ray.get(rest)))
    return [results[ref] for ref in refs]
