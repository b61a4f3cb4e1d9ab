"""Raises while being imported: the loader must say so, with the line."""

def score(prompt, completion, answer, info):
    return 1.0


SCALE = 1 / 0
