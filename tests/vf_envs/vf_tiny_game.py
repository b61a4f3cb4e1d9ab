"""A tiny verifiers MultiTurnEnv for rayrl's tests: guess a digit; the environment answers higher/lower."""

from __future__ import annotations

import verifiers as vf
from datasets import Dataset


def last_guess(state: vf.State) -> str:
    """The first character of the model's latest reply."""
    if not state["trajectory"]:
        return ""
    return (state["trajectory"][-1]["completion"][-1].content or "").strip()[:1]


class GuessEnv(vf.MultiTurnEnv):
    """Each turn the model guesses a digit; the env replies ``higher`` or ``lower`` until it is right."""

    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs) -> vf.Messages:
        guess = last_guess(state)
        hint = ("higher" if guess < state["answer"] else "lower") if guess.isdigit() else "a digit"
        return [vf.UserMessage(content=hint)]

    @vf.stop
    async def solved(self, state: vf.State) -> bool:
        return last_guess(state) == state["answer"]


def load_environment(max_turns: int = 3, num_examples: int = 10) -> vf.Environment:
    data = Dataset.from_list([{"question": "guess", "answer": str(n % 10)} for n in range(num_examples)])

    def solved(state) -> float:
        return 1.0 if last_guess(state) == state["answer"] else 0.0

    def guesses(state) -> float:
        return float(len(state["trajectory"]))

    rubric = vf.Rubric(funcs=[solved, guesses], weights=[1.0, 0.0])
    return GuessEnv(dataset=data, rubric=rubric, max_turns=max_turns)
