"""The environment protocol: examples with train/eval splits, prompt text, scoring."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class Example:
    """One task instance. ``id`` is stable across runs: the same id always means the same task."""

    id: str
    prompt: str
    answer: str
    info: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """A task family. Subclasses are deterministic given their args: same args, same splits."""

    id: str = ""

    @abstractmethod
    def examples(self, split: Split) -> list[Example]:
        """All examples of a split; ``train`` and ``eval`` never share an example."""

    @abstractmethod
    def score(self, example: Example, completion: str) -> float:
        """Reward of one completion (text after the prompt, special tokens removed)."""

    def sft_completion(self, example: Example) -> str:
        """A correct completion, for the supervised warm-start."""
        return example.answer
