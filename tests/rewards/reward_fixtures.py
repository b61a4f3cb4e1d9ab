"""Reward functions for tests/test_custom_reward.py: loaded by file path and as module ``reward_fixtures``."""

import math
import time

CALLS = []  # (prompt, completion, answer, info) of every exact() call, to check what was passed


def exact(prompt, completion, answer, info):
    CALLS.append((prompt, completion, answer, info))
    return 1.0 if completion.strip() == answer else 0.0


def with_metrics(prompt, completion, answer, info):
    """A reward plus named metrics."""
    return {"reward": 0.5, "length": float(len(completion)), "has_digit": float(any(c.isdigit() for c in completion))}


def rubric(prompt, completion, answer, info):
    """No "reward" key: the reward is the sum of the values."""
    return {"format": 0.25, "correct": 0.5}


def by_keyword(completion, answer, **kwargs):
    """Takes the arguments it needs by name."""
    return float(completion.strip() == answer) + 0.1 * ("info" in kwargs)


def swapped_names(completion, prompt, answer, info):
    """Names in another order: called by name, so each gets its own argument."""
    return 1.0 if prompt.endswith("=") and not completion.endswith("=") else 0.0


def positional_only(a, b, c, d, /):
    return 0.75


def fails_on_first_digit_one(prompt, completion, answer, info):
    """Raises for some samples only."""
    if prompt.startswith("1"):
        raise ValueError("no prompts starting with 1")
    return 1.0


def hangs_on_first_digit_one(prompt, completion, answer, info):
    if prompt.startswith("1"):
        time.sleep(3)
    return 1.0


def returns_string(prompt, completion, answer, info):
    return "1.0"


def returns_none(prompt, completion, answer, info):
    return None


def returns_nan(prompt, completion, answer, info):
    return math.nan


def returns_bad_dict(prompt, completion, answer, info):
    return {"reward": 1.0, "note": "text"}


def too_few_arguments(completion, answer):
    return 1.0


NOT_CALLABLE = 3.0


def first_digit_seven(prompt, completion, answer, info):
    """A task RL learns in a few steps whatever the machine: answer with a leading 7 (tests/test_tune.py)."""
    return 1.0 if completion.strip()[:1] == "7" else 0.0


def no_seven(prompt, completion, answer, info):
    """The opposite task: training on it makes a policy worse at first_digit_seven by construction."""
    return 0.0 if completion.strip()[:1] == "7" else 1.0


def astronomical(completion, answer, **kwargs):
    """Correct answers score 1e39: finite in float64, beyond float32 (the advantages must not overflow)."""
    return 1e39 if completion.strip() == answer else 0.0
