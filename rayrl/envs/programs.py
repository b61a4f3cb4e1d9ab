"""Seed 004's program tasks: ``affine:abd`` (abduction: given a Python program and what it printed, answer an
input that makes it print exactly that) and ``affine:ded`` (deduction: given a problem statement, answer a
program that passes its tests). Every answer runs in :mod:`rayrl.envs.sandbox`.

Examples come from a generator of small programs and problems (the seed's dataset, satpalsr/rl-python, lives
on a model hub unreachable here), or from a local JSONL/Parquet file in the seed's format (``path``):

- ABD rows: ``program`` (source), ``inputs`` (the stdin that produced the output), ``output``;
- DED rows: ``prompt`` (the statement), and ``verification_info`` or ``test_cases``: JSON (or a Python
  literal) ``{"test_cases": [{"type": "stdin_stdout", "input": "...", "output": "..."}, ...]}``.

Prompts: ``format = "compact"`` (default: short, for the embedded tiny character-level model) or
``"affine"`` (the seed's wording: ABD answers in ``<INPUT></INPUT>`` tags, DED in a fenced python block).
Answers are parsed leniently in both: the last tagged or fenced block if there is one, else the whole text.

Reward: ABD 1 when the program prints the expected output on the answer; DED 1 when every test passes
(``reward = "partial"``: the share of tests passed). Metrics: ``parsed`` and, per sample, one of
``sandbox_{ok,error,timeout,memory,output_limit,blocked}`` (their means are the rates), so hostile or
runaway answers are counted.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import string
from typing import Callable

import numpy as np

from rayrl.envs.base import Environment, Example, Split
from rayrl.envs.sandbox import SEVERITY, Limits, run_program

INPUT_TAG = re.compile(r"<INPUT>(.*?)</INPUT>", re.IGNORECASE | re.DOTALL)
FENCE = re.compile(r"```(?:python|py)?[ \t]*\n?(.*?)```", re.DOTALL)
FORMATS = ("compact", "affine")


# ---- the generators -------------------------------------------------------------------------------
def word(rng: np.random.Generator, low: int = 3, high: int = 5) -> str:
    return "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(low, high + 1))))


# abduction: (program template, a random input for given constants, the program's own function)
ABD_FAMILIES: list[tuple[str, Callable, Callable]] = [
    ("x=int(input())\nprint(x*{a}+{b})", lambda r, c: str(int(r.integers(0, 100))), lambda s, c: str(int(s) * c["a"] + c["b"])),
    ("x=int(input())\nprint(x-{b})", lambda r, c: str(int(r.integers(0, 100))), lambda s, c: str(int(s) - c["b"])),
    ("x=int(input())\nprint(x%{m})", lambda r, c: str(int(r.integers(0, 100))), lambda s, c: str(int(s) % c["m"])),
    ("s=input()\nprint(s[::-1])", lambda r, c: word(r), lambda s, c: s[::-1]),
    ("s=input()\nprint(s.upper())", lambda r, c: word(r), lambda s, c: s.upper()),
    ("s=input()\nprint(s*2)", lambda r, c: word(r, 2, 4), lambda s, c: s * 2),
    ("a,b=map(int,input().split())\nprint(a+b)", lambda r, c: f"{int(r.integers(0, 50))} {int(r.integers(0, 50))}",
     lambda s, c: str(sum(map(int, s.split())))),
    ("s=input()\nprint(len(s))", lambda r, c: word(r, 2, 8), lambda s, c: str(len(s))),
]
ABD_CONSTANTS = lambda r: {"a": int(r.integers(2, 10)), "b": int(r.integers(1, 50)), "m": int(r.integers(3, 10))}  # noqa: E731

# deduction: (statement template, reference program template, input generator, the function it computes)
DED_FAMILIES: list[tuple[str, str, Callable, Callable]] = [
    ("read n, print n*{k}", "print(int(input())*{k})", lambda r: str(int(r.integers(0, 100))), lambda s, c: str(int(s) * c["k"])),
    ("read n, print n+{k}", "print(int(input())+{k})", lambda r: str(int(r.integers(0, 100))), lambda s, c: str(int(s) + c["k"])),
    ("read n, print n-{k}", "print(int(input())-{k})", lambda r: str(int(r.integers(0, 100))), lambda s, c: str(int(s) - c["k"])),
    ("read a b, print a+b", "a,b=map(int,input().split())\nprint(a+b)",
     lambda r: f"{int(r.integers(0, 50))} {int(r.integers(0, 50))}", lambda s, c: str(sum(map(int, s.split())))),
    ("read a b, print a*b", "a,b=map(int,input().split())\nprint(a*b)",
     lambda r: f"{int(r.integers(0, 20))} {int(r.integers(0, 20))}", lambda s, c: str(np.prod([int(v) for v in s.split()]))),
    ("read s, print it reversed", "print(input()[::-1])", word, lambda s, c: s[::-1]),
    ("read s, print its length", "print(len(input()))", lambda r: word(r, 1, 9), lambda s, c: str(len(s))),
    ("read s, print it in upper case", "print(input().upper())", word, lambda s, c: s.upper()),
    ("read n, print n squared", "n=int(input())\nprint(n*n)", lambda r: str(int(r.integers(0, 30))), lambda s, c: str(int(s) ** 2)),
]


def digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def held_out(key: str, eval_share: float) -> bool:
    """Whether the task instance ``key`` belongs to the eval split, by its hash: train and eval never share
    an instance (a program with its output, a statement with its tests); a program or statement may recur
    with other constants, outputs or tests."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < eval_share


def generate_abd(rng: np.random.Generator) -> dict:
    template, make_input, run = ABD_FAMILIES[int(rng.integers(len(ABD_FAMILIES)))]
    constants = ABD_CONSTANTS(rng)
    given = make_input(rng, constants)
    return {"program": template.format(**constants), "inputs": given + "\n", "output": run(given, constants) + "\n"}


def generate_ded(rng: np.random.Generator, tests: int) -> dict:
    statement, solution, make_input, run = DED_FAMILIES[int(rng.integers(len(DED_FAMILIES)))]
    constants = {"k": int(rng.integers(2, 100))}
    inputs = [make_input(rng) for _ in range(tests)]
    cases = [{"type": "stdin_stdout", "input": i + "\n", "output": run(i, constants) + "\n"} for i in inputs]
    return {"prompt": statement.format(**constants), "solution": solution.format(**constants),
            "verification_info": json.dumps({"test_cases": cases})}


# ---- rows of the seed's format -------------------------------------------------------------------
def read_rows(path: str) -> list[dict]:
    """The rows of a JSONL or Parquet file (pyarrow), as dicts."""
    from rayrl.storage.tables import read_table

    return read_table(path).to_pylist()


def test_cases(row: dict, where: str) -> list[dict]:
    """The stdin/stdout tests of a DED row (``verification_info`` or ``test_cases``, JSON or a literal)."""
    raw = row.get("verification_info") or row.get("test_cases")
    if raw is None:
        raise ValueError(f"{where}: no 'verification_info' or 'test_cases' column")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = ast.literal_eval(raw)
    cases = raw.get("test_cases", raw) if isinstance(raw, dict) else raw
    kept = [c for c in cases if c.get("type", "stdin_stdout") == "stdin_stdout"]
    if not kept:
        raise ValueError(f"{where}: no stdin_stdout test case (function_call cases are not supported)")
    return [{"input": as_text(c.get("input")), "output": as_text(c.get("output"))} for c in kept]


def as_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(as_text(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


# ---- the environments ----------------------------------------------------------------------------
class ProgramTaskEnv(Environment):
    """Shared by ABD and DED: splits, limits, the sandbox, metrics."""

    kind = ""

    def __init__(self, num_train: int = 5000, num_eval: int = 500, seed: int = 0, path: str | None = None,
                 format: str = "compact", reward: str = "exact", eval_share: float = 0.2, tests: int = 3,
                 cpu_s: float = 1.0, wall_s: float = 3.0, memory_mb: int = 256, output_kb: int = 16):  # fmt: skip
        if format not in FORMATS:
            raise ValueError(f"{self.id}: format must be one of {', '.join(FORMATS)}, got '{format}'")
        if reward not in ("exact", "partial"):
            raise ValueError(f"{self.id}: reward must be 'exact' or 'partial', got '{reward}'")
        if not 0 < eval_share < 1:
            raise ValueError(f"{self.id}: eval_share must be between 0 and 1, got {eval_share}")
        self.format, self.reward = format, reward
        self.limits = Limits(cpu_s=cpu_s, wall_s=wall_s, memory_mb=memory_mb, output_kb=output_kb)
        rows = self._rows(path, num_train + num_eval, seed, tests, eval_share)
        train, evals = [], []
        for n, row in enumerate(rows):
            example = self._example(row, f"{path or 'generated'} row {n + 1}")
            (evals if held_out(self._key(row), eval_share) else train).append(example)
        self._train, self._eval = train[:num_train], evals[:num_eval]
        if not self._train:
            raise ValueError(f"{self.id}: no training examples (path {path!r} has too few rows)")

    def _rows(self, path: str | None, wanted: int, seed: int, tests: int, eval_share: float) -> list[dict]:
        if path is not None:
            return read_rows(path)
        rng, rows, seen = np.random.default_rng(seed), [], set()
        counts = {True: 0, False: 0}
        limit = {True: int(wanted * eval_share) + 1, False: wanted}
        for _ in range(50 * wanted):
            row = self._generate(rng, tests)
            key = json.dumps(row, sort_keys=True)
            split = held_out(self._key(row), eval_share)
            if key in seen or counts[split] >= limit[split]:
                continue
            seen.add(key)
            counts[split] += 1
            rows.append(row)
            if counts[False] >= limit[False] and counts[True] >= limit[True]:
                break
        return rows

    def examples(self, split: Split) -> list[Example]:
        return list({"train": self._train, "eval": self._eval}[split])

    def _score_run(self, source: str, inputs: list[str], expected: list[str]) -> dict[str, float]:
        run = run_program(source, inputs, self.limits)
        passed = run.passed(expected)
        share = sum(passed) / len(passed)
        reward = share if self.reward == "partial" else float(all(passed))
        return {"reward": reward, "parsed": 1.0, "tests_passed": share,
                **{f"sandbox_{s}": float(run.status == s) for s in SEVERITY}}

    def unparsed(self) -> dict[str, float]:
        return {"reward": 0.0, "parsed": 0.0, "tests_passed": 0.0, **{f"sandbox_{s}": 0.0 for s in SEVERITY}}


class AbductionEnv(ProgramTaskEnv):
    """``affine:abd``: answer an input that makes the program print exactly the given output."""

    id = "affine:abd"

    def _generate(self, rng, tests):
        return generate_abd(rng)

    def _key(self, row: dict) -> str:
        return row["program"] + "\0" + as_text(row["output"])

    def _example(self, row: dict, where: str) -> Example:
        missing = [k for k in ("program", "output") if k not in row]
        if missing:
            raise ValueError(f"{where}: no '{missing[0]}' column (ABD rows need program, inputs, output)")
        program, output = row["program"].rstrip("\n"), as_text(row["output"])
        if self.format == "compact":
            prompt = f"abd\n{program}\nout:{output.rstrip()}\nin:"
        else:
            prompt = (f"You are given this Python program:\n```python\n{program}\n```\n\nAnd this expected output:\n"
                      f"```\n{output}```\n\nWhat input would produce this output? Give the exact stdin, one value "
                      "per line as the program reads it, inside <INPUT> </INPUT> tags.")
        answer = as_text(row.get("inputs", "")).rstrip("\n")
        return Example(id=f"abd-{digest(program + output)}", prompt=prompt, answer=answer,
                       info={"program": program, "output": output})

    def sft_completion(self, example: Example) -> str:
        return example.answer if self.format == "compact" else f"<INPUT>\n{example.answer}\n</INPUT>"

    def score(self, example: Example, completion: str) -> dict[str, float]:
        tagged = INPUT_TAG.findall(completion)
        answer = (tagged[-1].strip("\n") if tagged else completion).rstrip()
        if not answer.strip():
            return self.unparsed()
        return self._score_run(example.info["program"], [answer + "\n"], [example.info["output"]])


class DeductionEnv(ProgramTaskEnv):
    """``affine:ded``: answer a program that passes the statement's tests."""

    id = "affine:ded"

    def _generate(self, rng, tests):
        return generate_ded(rng, tests)

    def _key(self, row: dict) -> str:
        return row["prompt"] + "\0" + json.dumps(row.get("verification_info") or row.get("test_cases"), sort_keys=True)

    def _example(self, row: dict, where: str) -> Example:
        if "prompt" not in row:
            raise ValueError(f"{where}: no 'prompt' column (DED rows need prompt and verification_info)")
        cases = test_cases(row, where)
        statement = row["prompt"].rstrip()
        if self.format == "compact":
            prompt = f"ded\n{statement}\n"
        else:
            prompt = (f"{statement}\n\nWrite a complete Python 3 program that reads all input from STDIN, writes "
                      "only the answer to STDOUT with print, and is returned as a single ```python``` block.")
        return Example(id=f"ded-{digest(statement + json.dumps(cases))}", prompt=prompt,
                       answer=row.get("solution") or "", info={"tests": cases})

    def sft_completion(self, example: Example) -> str:
        return example.answer if self.format == "compact" else f"```python\n{example.answer}\n```"

    def score(self, example: Example, completion: str) -> dict[str, float]:
        fenced = FENCE.findall(completion)
        program = fenced[-1] if fenced else completion
        if not program.strip():
            return self.unparsed()
        tests = example.info["tests"]
        return self._score_run(program, [t["input"] for t in tests], [t["output"] for t in tests])
