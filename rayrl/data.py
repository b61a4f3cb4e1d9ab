"""Deterministic example order: which examples each step sees, resumable from a small state."""

from __future__ import annotations

import numpy as np


class ExampleSampler:
    """Endless shuffled passes over ``size`` examples; epoch e uses the permutation seeded by (seed, e)."""

    def __init__(self, size: int, seed: int):
        if size <= 0:
            raise ValueError("an environment's train split is empty")
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            n = min(count - len(out), self.size - self.position)
            out.extend(int(i) for i in self._order[self.position : self.position + n])
            self.position += n
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def allocate(total: int, weights: list[float]) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder, ties to the first)."""
    raw = np.asarray(weights, dtype=float) / float(sum(weights)) * total
    parts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - parts), kind="stable")[: total - parts.sum()]:
        parts[i] += 1
    return parts.tolist()
