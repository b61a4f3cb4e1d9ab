"""A tiny verifiers SingleTurnEnv for rayrl's tests: one-digit addition, two named reward functions.

``style = "chat"`` gives chat prompts (a user message); ``style = "completion"`` gives plain string
prompts. With ``eval_examples > 0`` the env has its own eval_dataset; otherwise rayrl holds out a slice.
"""

from __future__ import annotations

import verifiers as vf
from datasets import Dataset


def rows(count: int, offset: int = 0) -> list[dict[str, str]]:
    """``count`` addition problems, ``a+b=`` -> ``a+b``, starting at problem ``offset``."""
    pairs = [(a, b) for a in range(10) for b in range(10)]
    return [{"question": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs[offset : offset + count]]


def load_environment(num_examples: int = 40, eval_examples: int = 0, style: str = "chat") -> vf.Environment:
    if style not in ("chat", "completion"):
        raise ValueError(f"style must be 'chat' or 'completion', got {style!r}")
    parser = vf.Parser()

    def exact_answer(completion, answer) -> float:
        return 1.0 if (parser.parse_answer(completion) or "").strip() == answer else 0.0

    def starts_with_digit(completion) -> float:
        return 1.0 if (parser.parse_answer(completion) or "")[:1].isdigit() else 0.0

    def dataset(items: list[dict[str, str]]) -> Dataset:
        if style == "completion":
            items = [{"prompt": r["question"], "answer": r["answer"]} for r in items]
        return Dataset.from_list(items)

    evaluation = dataset(rows(eval_examples, offset=num_examples)) if eval_examples else None
    rubric = vf.Rubric(funcs=[exact_answer, starts_with_digit], weights=[1.0, 0.5], parser=parser)
    return vf.SingleTurnEnv(dataset=dataset(rows(num_examples)), eval_dataset=evaluation, parser=parser, rubric=rubric)
