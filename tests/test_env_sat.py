"""The built-in k-SAT environment: deterministic disjoint splits, satisfiable formulas, scoring, errors."""

from __future__ import annotations

import itertools

import pytest
from transformers import AutoTokenizer

from rayrl.envs import make_env
from rayrl.envs.base import EpisodeRequest, split_score
from rayrl.envs.episodes import play_turns
from rayrl.envs.sat import BitmaskSolver, random_formulas, solve
from rayrl.errors import EnvError
from rayrl.models.tiny import CHARACTERS

SMALL = {"n_vars": 5, "num_train": 300, "num_eval": 50}


def satisfied_counts(clauses: list[list[int]], n_vars: int) -> list[int]:
    """Satisfied clauses of every assignment, by plain enumeration (independent of the env's solvers)."""
    return [
        sum(any(bits[abs(lit) - 1] == (lit > 0) for lit in c) for c in clauses)
        for bits in itertools.product([False, True], repeat=n_vars)
    ]


def decode_prompt(prompt: str) -> tuple[int, list[list[int]]]:
    """The variables and clauses written in a prompt: ``"sat 5\\nabC ...\\n"``."""
    header, body = prompt.rstrip("\n").split("\n")
    letters = "abcdefghijklmnopqrstuvwxyz"
    clauses = [[letters.index(ch) + 1 if ch.islower() else -(letters.index(ch.lower()) + 1) for ch in word]
               for word in body.split(" ")]
    return int(header.split()[1]), clauses


def test_splits_are_deterministic_disjoint_and_stable():
    env = make_env("sat", SMALL)
    train, held_out = env.examples("train"), env.examples("eval")
    assert len(train) == 300 and len(held_out) == 50
    assert len({e.id for e in train + held_out}) == 350  # distinct ids...
    assert len({e.prompt for e in train + held_out}) == 350  # ...because the formulas are distinct
    again = make_env("sat", SMALL)
    for split in ("train", "eval"):
        assert [(e.id, e.prompt, e.answer) for e in again.examples(split)] == [
            (e.id, e.prompt, e.answer) for e in env.examples(split)
        ]
    # eval does not move when num_train changes, and an id always names the same formula
    bigger = make_env("sat", {**SMALL, "num_train": 600})
    assert [e.id for e in bigger.examples("eval")] == [e.id for e in held_out]
    by_id = {e.id: e.prompt for e in bigger.examples("train")}
    assert all(by_id[e.id] == e.prompt for e in train if e.id in by_id)
    other_seed = make_env("sat", {**SMALL, "seed": 1})
    assert {e.id for e in other_seed.examples("eval")} != {e.id for e in held_out}


def test_every_formula_is_satisfiable_and_its_answer_satisfies_it():
    env = make_env("sat", SMALL)
    for e in env.examples("eval") + env.examples("train")[:100]:
        n_vars, clauses = decode_prompt(e.prompt)
        assert n_vars == 5 and clauses == e.info["clauses"] and len(clauses) == 21  # round(4.2 * 5)
        assert all(len(c) == 3 and len({abs(lit) for lit in c}) == 3 for c in clauses)
        assert max(satisfied_counts(clauses, n_vars)) == len(clauses)  # satisfiable by brute force
        assert env.sft_completion(e) == e.answer and len(e.answer) == 5
        assert env.score(e, e.answer) == {"reward": 1.0, "satisfied_fraction": 1.0, "parsed": 1.0}


def test_without_satisfiable_only_answers_satisfy_the_most_clauses():
    env = make_env("sat", {"n_vars": 4, "clause_ratio": 6.0, "num_train": 200, "num_eval": 20,
                           "satisfiable_only": False, "reward": "partial"})
    examples = env.examples("train")
    kinds = {e.info["satisfiable"] for e in examples}
    assert kinds == {True, False}  # 24 clauses on 4 variables: both kinds occur
    for e in examples:
        counts = satisfied_counts(e.info["clauses"], 4)
        assert e.info["satisfiable"] == (max(counts) == len(e.info["clauses"]))
        assert env.score(e, e.answer)["satisfied_fraction"] == max(counts) / len(e.info["clauses"])


def test_dpll_and_brute_force_agree():
    import numpy as np

    rng = np.random.default_rng(7)
    solver = BitmaskSolver(8)
    formulas = random_formulas(rng, n_vars=8, k=3, n_clauses=36, count=300)
    outcomes = []
    for f in formulas:
        by_dpll, by_bits = solve(f, 8), solver.solve(f)
        assert (by_dpll is None) == (by_bits is None)
        for model in (by_dpll, by_bits):
            if model is not None:
                assert all(any(model[abs(lit) - 1] == (lit > 0) for lit in c) for c in f)
        outcomes.append(by_dpll is not None)
    assert 0 < sum(outcomes) < len(outcomes)  # near the threshold: both outcomes exercised
    big = make_env("sat", {"n_vars": 20, "num_train": 20, "num_eval": 5})  # DPLL path
    for e in big.examples("train"):
        assert split_score(big.score(e, e.answer))[0] == 1.0


def test_scoring_exact_partial_and_garbage():
    exact = make_env("sat", SMALL)
    partial = make_env("sat", {**SMALL, "reward": "partial"})
    e = exact.examples("eval")[0]
    counts = satisfied_counts(e.info["clauses"], 5)
    worst = min(range(32), key=lambda i: counts[i])  # an assignment leaving clauses unsatisfied
    bits = "".join("1" if b else "0" for b in list(itertools.product([False, True], repeat=5))[worst])
    fraction = counts[worst] / 21
    assert fraction < 1
    assert exact.score(e, bits) == {"reward": 0.0, "satisfied_fraction": fraction, "parsed": 1.0}
    assert partial.score(e, bits) == {"reward": fraction, "satisfied_fraction": fraction, "parsed": 1.0}
    # lenient parsing: the first non-blank line, its 0/1 characters only
    spaced = f"\n {' '.join(e.answer)} \nsecond line 0000"
    assert exact.score(e, spaced) == {"reward": 1.0, "satisfied_fraction": 1.0, "parsed": 1.0}
    for garbage in ("", "hello", "2" * 5, "\n\nabc\n10110"):
        assert exact.score(e, garbage) == {"reward": 0.0, "satisfied_fraction": 0.0, "parsed": 0.0}
        assert partial.score(e, garbage) == {"reward": 0.0, "satisfied_fraction": 0.0, "parsed": 0.0}
    # a wrong length never parses; partial credit counts the clauses the bits given already satisfy
    for wrong, n_given in ((e.answer[:2], 2), (e.answer + "1", 5), ("x" + e.answer[0] + "y", 1)):
        given = [b == "1" for b in e.answer[:n_given]]
        share = sum(any(abs(lit) <= n_given and given[abs(lit) - 1] == (lit > 0) for lit in c)
                    for c in e.info["clauses"]) / 21
        assert exact.score(e, wrong) == {"reward": 0.0, "satisfied_fraction": share, "parsed": 0.0}
        assert partial.score(e, wrong) == {"reward": share / 2, "satisfied_fraction": share, "parsed": 0.0}
    assert 0 < partial.score(e, e.answer[0])["reward"] <= partial.score(e, e.answer[:3])["reward"] <= 1


def test_prompt_is_compact_and_in_the_tiny_vocabulary():
    env = make_env("sat", {"num_train": 50, "num_eval": 10})  # default n_vars, k, clause_ratio
    alphabet = set(CHARACTERS)
    for e in env.examples("train") + env.examples("eval"):
        assert len(e.prompt) <= 150 and set(e.prompt) <= alphabet
        assert e.prompt.startswith("sat 5\n") and e.prompt.endswith("\n")


@pytest.mark.parametrize(
    "args, message",
    [
        ({"n_vars": 3, "k": 4}, "k (literals per clause) must be between 1 and n_vars = 3"),
        ({"reward": "fuzzy"}, "reward must be 'exact' or 'partial'"),
        ({"n_vars": 27}, "n_vars must be between 1 and 26"),
        ({"n_vars": 3, "clause_ratio": 1.0, "num_train": 150, "num_eval": 50}, "only 120 distinct formulas exist"),
        ({"n_vars": 2, "k": 2, "clause_ratio": 5.0, "num_train": 200, "num_eval": 10}, "too few to reach"),
        ({"num_eval": -1}, "num_eval >= 0"),
        ({"clause_ratio": 0.0}, "at least 1 clause"),
        ({"n_vars": 20, "satisfiable_only": False}, "satisfiable_only = false needs n_vars <= 16"),
        ({"variables": 5}, "unknown argument(s) 'variables'"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(EnvError, match="environment 'sat'") as info:
        make_env("sat", args)
    assert message in str(info.value)


def test_episodes_through_the_turn_loop(local_generator, tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    env = make_env("sat", {**SMALL, "reward": "partial"})
    examples = env.examples("eval")[:6]
    requests = [EpisodeRequest(env, e, tok(e.prompt).input_ids) for e in examples]
    results = play_turns(requests, local_generator(seq_len=128, max_tokens=8))
    for e, r in zip(examples, results):
        assert r.turns == 1 and set(r.metrics) == {"satisfied_fraction", "parsed"} and r.reward_error == ""
        assert (r.reward, r.metrics) == split_score(env.score(e, r.completion))
