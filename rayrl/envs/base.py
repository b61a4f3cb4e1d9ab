"""The environment protocol: examples with train/eval splits, prompts, single- and multi-turn stepping,
scoring with named metrics.

Every environment is played as *episodes*. The rollout worker (``rayrl.envs.episodes.play_turns``) asks
``env.start(example)`` for an :class:`Episode`, generates the model's turn from the token ids so far,
hands the decoded text to ``episode.step(text)`` and, while the episode is not done, appends the
environment's reply (``Turn.observation``) as tokens that are masked out of the loss. A single-turn
environment only implements ``score``: its default episode ends after the first turn with that score.

Environments that drive generation themselves (verifiers runs its own rollout loop) override
``play`` instead; see ``rayrl.envs.verifiers_env``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:
    from rayrl.engines.base import Completion

Split = Literal["train", "eval"]
# What a scoring function returns: a reward, or named floats of which "reward" is the reward
# (without a "reward" key the reward is the sum of the values, like a rubric with unit weights).
Score = Union[float, Mapping[str, float]]


@dataclass(frozen=True)
class Example:
    """One task instance. ``id`` is stable across runs: the same id always means the same task."""

    id: str
    prompt: str
    answer: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Turn:
    """The environment's answer to one model turn."""

    done: bool
    observation: str = ""  # text the environment writes before the model's next turn (not trained on)
    reward: float = 0.0  # reward of this turn; an episode's reward is the sum over its turns
    metrics: dict[str, float] = field(default_factory=dict)  # merged over turns, later turns win


class Episode(ABC):
    """One interaction with an example; holds whatever state the environment needs between turns."""

    @abstractmethod
    def step(self, completion: str) -> Turn:
        """React to the model's turn (decoded text, special tokens removed)."""


class SingleTurnEpisode(Episode):
    """The default episode: one model turn, scored by ``env.score``."""

    def __init__(self, env: "Environment", example: Example):
        self.env, self.example = env, example

    def step(self, completion: str) -> Turn:
        reward, metrics = split_score(self.env.score(self.example, completion))
        return Turn(done=True, reward=reward, metrics=metrics)


class Environment(ABC):
    """A task family. Subclasses are deterministic given their args: same args, same splits."""

    id: str = ""
    #: Most model turns an episode may take; the worker ends longer episodes ("max_turns").
    max_turns: int = 1

    @abstractmethod
    def examples(self, split: Split) -> list[Example]:
        """All examples of a split; ``train`` and ``eval`` never share an example."""

    def score(self, example: Example, completion: str) -> Score:
        """Reward of one single-turn completion (text after the prompt, special tokens removed)."""
        raise NotImplementedError(f"environment '{self.id}' implements neither score() nor start()")

    def start(self, example: Example) -> Episode:
        """A new episode of ``example``; multi-turn environments return their own Episode."""
        return SingleTurnEpisode(self, example)

    def sft_completion(self, example: Example) -> str:
        """A correct completion, for the supervised warm-start."""
        return example.answer

    def play(self, requests: "list[EpisodeRequest]", generator: "Generator") -> "list[EpisodeResult]":
        """Play every request's episode with your own rollout loop, generating through ``generator``.

        Only environments that drive generation themselves (verifiers) override this; the others are
        played turn by turn by ``rayrl.envs.episodes.play_turns`` through ``start`` and ``Episode.step``.
        """
        raise NotImplementedError(
            f"environment '{self.id}' does not drive generation: rayrl plays its episodes turn by turn "
            "(rayrl.envs.episodes.play_turns)"
        )


def drives_generation(env: Environment) -> bool:
    """True for environments that override ``play`` (they run their own rollout loop)."""
    return type(env).play is not Environment.play


# ---- what environments see of generation, and what a played episode is --------------------------
@dataclass
class EpisodeRequest:
    """Play ``example`` of ``env`` once, starting from the tokenised prompt."""

    env: Environment
    example: Example
    prompt_ids: list[int]


@dataclass
class Sampled:
    """One model turn as the engine produced it, with the policy version that produced it."""

    completion: "Completion"
    version: int


@dataclass
class EpisodeResult:
    """A finished episode: the whole token sequence after the prompt and what it earned."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)  # model and environment tokens after the prompt
    completion_mask: list[int] = field(default_factory=list)  # 1 = the model's token (trained on), 0 = env's
    logprobs: list[float] = field(default_factory=list)  # behaviour log-probs; 0.0 at environment tokens
    reward: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    version: int = -1  # oldest policy version among the episode's model turns
    finish_reason: str = ""  # "stop", "length" (out of tokens) or "max_turns"
    turns: int = 0
    completion: str = ""  # the text after the prompt, for logs
    reward_error: str = ""  # why the reward function failed (the reward is then 0), else ""

    def add_model_turn(self, sampled: Sampled, text: str) -> None:
        c = sampled.completion
        self.completion_ids += c.token_ids
        self.completion_mask += [1] * len(c.token_ids)
        self.logprobs += c.logprobs
        self.version = sampled.version if self.version < 0 else min(self.version, sampled.version)
        self.turns += 1
        self.completion += text

    def add_environment_turn(self, token_ids: list[int], text: str) -> None:
        self.completion_ids += token_ids
        self.completion_mask += [0] * len(token_ids)
        self.logprobs += [0.0] * len(token_ids)
        self.completion += text

    def add_reward(self, turn: Turn) -> None:
        self.reward += turn.reward
        metrics = dict(turn.metrics)
        if "reward_error" in metrics:  # set by rayrl.envs.custom_reward when a reward function fails
            self.reward_error = str(metrics.pop("reward_error"))
        self.metrics.update(metrics)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


class Generator(ABC):
    """Samples model turns: what environments see of the inference replicas."""

    tokenizer: object
    seq_len: int
    max_tokens: int  # per model turn

    @abstractmethod
    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[Sampled]:
        """One model turn per prompt, at most ``max_tokens`` tokens each."""

    def encode(self, text: str) -> list[int]:
        """Token ids of environment text (no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)



def split_score(score: Score) -> tuple[float, dict[str, float]]:
    """(reward, named metrics) of what a scoring function returned; raises TypeError on anything else."""
    if isinstance(score, Mapping):
        metrics = {str(k): as_number(v, f"value of '{k}'") for k, v in score.items()}
        reward = metrics["reward"] if "reward" in metrics else math.fsum(metrics.values())
        return reward, {k: v for k, v in metrics.items() if k != "reward"}
    return as_number(score, "reward"), {}


def as_number(value: Any, what: str) -> float:
    if not isinstance(value, (int, float)) and not hasattr(value, "__float__"):  # bool, numpy and torch scalars pass
        raise TypeError(f"{what} must be a number, got {type(value).__name__}: {value!r:.80}")
    number = float(value)
    if not math.isfinite(number):
        raise TypeError(f"{what} must be finite, got {number}")
    return number
