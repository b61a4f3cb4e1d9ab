"""Playing episodes: the turn loop shared by every environment that does not drive generation itself.

Token accounting: the engine's token ids are kept exactly as generated (never re-tokenised from the
decoded text); the environment's replies are tokenised on their own and appended with loss mask 0 and
log-prob 0. A sequence never exceeds ``seq_len``: a model turn is cut to the room left, and an
episode whose next observation would not fit ends with finish reason ``length``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayrl.envs.base import EpisodeRequest, EpisodeResult, Generator, Sampled

if TYPE_CHECKING:
    from rayrl.engines.base import Completion, SamplingParams
    from rayrl.envs.base import Episode


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
