"""A small verifiers environment for ``experiments/verifiers.toml``: one-digit addition, ``3+4=`` -> ``7``.

A classic verifiers ``SingleTurnEnv`` (chat prompts, a rubric of two named reward functions), so the
experiment runs without network or downloaded data. Load it through rayrl with
``[[env]] id = "vf-addition"`` and this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import verifiers as vf
from datasets import Dataset


def load_environment(max_operand: int = 9, eval_examples: int = 20, seed: int = 0) -> vf.Environment:
    """Every pair ``a+b`` with ``0 <= a, b <= max_operand``; ``eval_examples`` of them held out (seeded)."""
    operands = range(max_operand + 1)
    pairs = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in operands for b in operands]
    if not 0 < eval_examples < len(pairs):
        raise ValueError(f"eval_examples must be between 1 and {len(pairs) - 1}, got {eval_examples}")
    data = Dataset.from_list(pairs).shuffle(seed=seed)
    parser = vf.Parser()

    def exact_answer(completion, answer) -> float:
        """1 for the exact sum."""
        return 1.0 if (parser.parse_answer(completion) or "").strip() == answer else 0.0

    def starts_with_digit(completion) -> float:
        """1 for an answer that starts with a digit: partial credit a random model finds."""
        return 1.0 if (parser.parse_answer(completion) or "")[:1].isdigit() else 0.0

    rubric = vf.Rubric(funcs=[exact_answer, starts_with_digit], weights=[1.0, 0.2], parser=parser)
    return vf.SingleTurnEnv(
        dataset=data.select(range(eval_examples, len(pairs))),
        eval_dataset=data.select(range(eval_examples)),
        parser=parser,
        rubric=rubric,
    )
