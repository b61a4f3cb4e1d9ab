"""PolicyBoard: where a restarted actor finds what it missed.

The driver posts each published weights version here (the object ref, wrapped in a list so Ray hands it on
unresolved). A replica that Ray restarts after a crash or a kill starts from the model it was first given;
before it serves it asks the board for the newest version and loads it. Every replica and rollout worker
reports its (re)starts here, which is how the driver counts restarts.
"""

from __future__ import annotations

BOARD_NAME = "policy-board"


class PolicyBoard:
    def __init__(self) -> None:
        self.version = -1
        self.bundle: list = []  # [ObjectRef of the newest WeightBundle], or [] before the first publication
        self.restarts: dict[str, int] = {}

    def publish(self, version: int, bundle: list) -> None:
        self.version, self.bundle = version, bundle

    def newest(self) -> tuple[int, list]:
        return self.version, self.bundle

    def started(self, name: str, restarted: bool) -> None:
        self.restarts.setdefault(name, 0)
        if restarted:
            self.restarts[name] += 1

    def restart_counts(self) -> dict[str, int]:
        return dict(self.restarts)


def find_board(namespace: str):
    """The PolicyBoard of the run whose actors live in ``namespace``."""
    import ray

    return ray.get_actor(BOARD_NAME, namespace=namespace)


def report_start(board, name: str) -> bool:
    """Tell ``board`` (if any) that the calling actor started; returns whether Ray restarted it."""
    import warnings

    import ray

    with warnings.catch_warnings():  # Ray's own property calls a deprecated one of its API
        warnings.simplefilter("ignore")
        restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    if board is not None:
        ray.get(board.started.remote(name, restarted))
    return restarted
