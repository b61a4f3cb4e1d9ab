"""Playing episodes: the turn loop shared by every environment that does not drive generation itself.

Token accounting: the engine's token ids are kept exactly as generated (never re-tokenised from the
decoded text); the environment's replies are tokenised on their own and appended with loss mask 0 and
log-prob 0. A sequence never exceeds ``seq_len``: a model turn is cut to the room left, and an
episode whose next observation would not fit ends with finish reason ``length``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rayrl.envs.base import Example, Turn

if TYPE_CHECKING:
    from rayrl.actors.engine import Completion, SamplingParams
    from rayrl.envs.base import Environment, Episode


@dataclass
class EpisodeRequest:
    """Play ``example`` of ``env`` once, starting from the tokenised prompt."""

    env: "Environment"
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


def play_turns(requests: list[EpisodeRequest], generator: Generator) -> list[EpisodeResult]:
    """Play every request's episode turn by turn, generating all live episodes' turns in one call.

    Requests may belong to different environments: a mixed batch still makes one generate call a turn.
    """
    episodes: list["Episode"] = [r.env.start(r.example) for r in requests]
    results = [EpisodeResult(prompt_ids=list(r.prompt_ids)) for r in requests]
    live = list(range(len(requests)))
    while live:
        limits = [min(generator.max_tokens, generator.seq_len - results[i].length) for i in live]
        sampled = generator.generate(
            [results[i].prompt_ids + results[i].completion_ids for i in live], max(limits)
        )
        still_live = []
        for i, limit, s in zip(live, limits, sampled):
            s = Sampled(cut(s.completion, limit), s.version)
            text = generator.decode(s.completion.token_ids)
            result = results[i]
            result.add_model_turn(s, text)
            turn = episodes[i].step(text)
            result.add_reward(turn)
            if turn.done:
                result.finish_reason = s.completion.finish_reason
            elif result.turns >= requests[i].env.max_turns:
                result.finish_reason = "max_turns"
            else:
                observation = generator.encode(turn.observation)
                if result.length + len(observation) >= generator.seq_len:  # no room for another model token
                    result.finish_reason = "length"
                else:
                    result.add_environment_turn(observation, turn.observation)
                    still_live.append(i)
        live = still_live
    return results


def cut(completion: "Completion", limit: int) -> "Completion":
    """``completion`` with at most ``limit`` tokens (finish reason ``length`` when cut before its end)."""
    if len(completion.token_ids) <= limit:
        return completion
    return type(completion)(completion.token_ids[:limit], completion.logprobs[:limit], "length")


class EngineGenerator(Generator):
    """A Generator over an engine in this process (no Ray): for unit tests and quick measurements."""

    def __init__(self, engine, tokenizer, seq_len: int, params: "SamplingParams", version: int = 0):
        self.engine, self.tokenizer, self.seq_len, self.params = engine, tokenizer, seq_len, params
        self.max_tokens, self.version, self.calls = params.max_tokens, version, 0

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[Sampled]:
        from dataclasses import replace

        params = replace(self.params, max_tokens=max_tokens, seed=self.params.seed + CALL_SEED_STRIDE * self.calls)
        self.calls += 1
        return [Sampled(c, self.version) for c in self.engine.generate(prompts, params)]


CALL_SEED_STRIDE = 7919  # seed of a worker's n-th generate call = base seed + n * stride (+ replica offset)
