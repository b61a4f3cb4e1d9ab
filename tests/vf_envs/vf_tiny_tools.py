"""A tiny verifiers ToolEnv for rayrl's tests: add two digits with an ``add`` tool, then answer."""

from __future__ import annotations

import verifiers as vf
from datasets import Dataset


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def load_environment(max_turns: int = 3) -> vf.Environment:
    data = Dataset.from_list([{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(3)])
    parser = vf.Parser()

    def exact_answer(completion, answer) -> float:
        return 1.0 if (parser.parse_answer(completion) or "").strip() == answer else 0.0

    rubric = vf.Rubric(funcs=[exact_answer], parser=parser)
    return vf.ToolEnv(dataset=data, tools=[add], rubric=rubric, parser=parser, max_turns=max_turns)
