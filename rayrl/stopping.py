"""Stopping a run cleanly: SIGTERM (``ray job stop``, a scheduler's preemption, ``kill``) and SIGINT (Ctrl-C).

The first signal asks the loop to stop: it abandons the rollouts it is waiting for (they are drawn again
on resume), or lets an update, publication or checkpoint in progress finish, then writes a final
checkpoint and prints one line with the step reached and the command that resumes. A second signal
stops at once (the process's default action), with no checkpoint beyond the last one saved.

``ray job stop`` sends SIGTERM and, by default, SIGKILL 3 s later: set ``RAY_JOB_STOP_WAIT_TIME_S`` in
the job's runtime environment when a final checkpoint takes longer to write than that.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("rayrl")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGINT set :attr:`received` instead of killing the process.

    Handlers can only be installed from the main thread; elsewhere (a Ray Tune trial's thread) this does
    nothing and the run stops the way its host stops it."""

    def __init__(self) -> None:
        self.received: str | None = None  # "SIGTERM" or "SIGINT" once one arrived
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:  # the second one: the default action, now
            log.warning("%s again: stopping at once, without a final checkpoint", name)
            self._restore()
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = name
        log.warning("%s received: stopping after the current step with a final checkpoint (send it again to "
                    "stop at once)", name)
