"""Built-in verifiable task: multi-digit addition, ``"12+34="`` -> ``"46"``."""

from __future__ import annotations

import numpy as np

from rayrl.envs.base import Environment, Example, Split

MAX_ENUMERATED_PAIRS = 2_000_000


class ArithmeticEnv(Environment):
    """Addition of two non-negative integers with up to ``digits`` digits each.

    The held-out ``eval`` split is ``eval_size`` pairs drawn with ``seed``; ``train`` is every other
    pair (or ``train_size`` random others when the space is too large to enumerate).
    ``reward = "exact"``: 1.0 for the exact sum, else 0.0. ``reward = "digits"``: partial credit,
    the share of answer positions whose character is right (also the completion's extra length counts
    against it), which gives a learning signal even to a random model.
    """

    id = "arithmetic"

    def __init__(
        self, digits: int = 2, eval_size: int = 1000, train_size: int = 100_000, seed: int = 0, reward: str = "exact"
    ):
        if not 1 <= digits <= 9:
            raise ValueError(f"arithmetic: digits must be between 1 and 9, got {digits}")
        if reward not in ("exact", "digits"):
            raise ValueError(f"arithmetic: reward must be 'exact' or 'digits', got '{reward}'")
        self.reward = reward
        self.digits, self.seed = digits, seed
        space = 10 ** (2 * digits)
        if eval_size >= space:
            raise ValueError(f"arithmetic: eval_size ({eval_size}) must be below the {space} possible pairs")
        rng = np.random.default_rng(seed)
        if space <= MAX_ENUMERATED_PAIRS:
            order = rng.permutation(space)
            self._eval, self._train = order[:eval_size], order[eval_size:]
        else:
            drawn = np.unique(rng.integers(0, space, size=eval_size + train_size + eval_size // 10))
            drawn = rng.permutation(drawn)
            self._eval, self._train = drawn[:eval_size], drawn[eval_size : eval_size + train_size]

    def _example(self, code: int) -> Example:
        a, b = divmod(int(code), 10**self.digits)
        return Example(id=f"add-{a}-{b}", prompt=f"{a}+{b}=", answer=str(a + b))

    def examples(self, split: Split) -> list[Example]:
        codes = {"train": self._train, "eval": self._eval}[split]
        return [self._example(c) for c in codes]

    def score(self, example: Example, completion: str) -> float:
        if self.reward == "digits":
            return digit_credit(completion.strip(), example.answer)
        return 1.0 if completion.strip() == example.answer else 0.0


def digit_credit(completion: str, answer: str) -> float:
    """Share of positions (over the longer string) where ``completion`` and ``answer`` agree."""
    same = sum(a == b for a, b in zip(completion, answer))
    return same / max(len(completion), len(answer), 1)
