"""Custom reward for experiments/custom_reward.toml: partial credit for numbers close to the answer.

Signature of every rayrl reward function: fn(prompt, completion, answer, info) -> float or dict of floats.
"""

import math
import re

LEADING_NUMBER = re.compile(r"\s*(\d+)")


def closeness(prompt: str, completion: str, answer: str, info: dict) -> dict[str, float]:
    """1 for exactly the answer; else up to 0.5 for a completion that starts with a number, shrinking
    with its relative distance to the answer; 0 for anything else.

    Exact answers stay clearly ahead of near misses, which beat garbage: a denser signal than exact
    match for a model that has not learnt the task yet. Metrics: ``exact`` (the exact-match rate) and
    ``number`` (the share of completions that start with a number).
    """
    match = LEADING_NUMBER.match(completion)
    if match is None:
        return {"reward": 0.0, "exact": 0.0, "number": 0.0}
    if completion.strip() == answer:
        return {"reward": 1.0, "exact": 1.0, "number": 1.0}
    target = int(answer)
    distance = abs(int(match[1]) - target) / max(target, 1)
    return {"reward": 0.5 * math.exp(-distance), "exact": 0.0, "number": 1.0}
