"""Generators the environment tests play through: a real engine that records what it sampled, and a scripted
stand-in for a capable model; and the check that an episode's tokens are that engine's (shared by the
verifiers 0.3 and 0.4 tests)."""

from __future__ import annotations

from rayrl.engines.base import Completion
from rayrl.envs.base import EpisodeResult, Generator, Sampled


class Recording(Generator):
    """A real generator that remembers what it was asked and what the engine sampled."""

    def __init__(self, inner: Generator):
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.seq_len, self.max_tokens = inner.seq_len, inner.max_tokens
        self.sampled: dict[tuple[int, ...], list[Completion]] = {}
        self.calls = 0

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[Sampled]:
        self.calls += 1
        out = self.inner.generate(prompts, max_tokens)
        for prompt, s in zip(prompts, out):
            self.sampled.setdefault(tuple(prompt), []).append(s.completion)
        return out


class Scripted(Generator):
    """A stand-in for a capable model: ``reply(prompt text) -> text``, then end-of-sequence."""

    def __init__(self, tokenizer, reply, seq_len: int = 1024, max_tokens: int = 128):
        self.tokenizer, self.reply, self.seq_len, self.max_tokens = tokenizer, reply, seq_len, max_tokens

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[Sampled]:
        out = []
        for prompt in prompts:
            ids = self.encode(self.reply(self.decode(prompt)))[: max_tokens - 1] + [self.tokenizer.eos_token_id]
            out.append(Sampled(Completion(ids, [-0.5] * len(ids), "stop"), version=3))
        return out


def segments(result: EpisodeResult) -> list[tuple[int, int, int]]:
    """(mask, start, end) runs of equal loss mask over the completion."""
    runs, start, mask = [], 0, result.completion_mask
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], start, i))
            start = i
    return runs


def check_engine_tokens(result: EpisodeResult, gen: Recording) -> None:
    """Model tokens are the engine's sampled ids and log-probs (for exactly the prompt it was given);
    environment tokens are masked with log-prob 0."""
    assert len(result.completion_mask) == len(result.logprobs) == len(result.completion_ids)
    assert result.length <= gen.seq_len
    for mask, start, end in segments(result):
        if mask == 0:
            assert result.logprobs[start:end] == [0.0] * (end - start)
            continue
        candidates = gen.sampled[tuple(result.prompt_ids + result.completion_ids[:start])]
        assert any(c.token_ids[: end - start] == result.completion_ids[start:end]
                   and c.logprobs[: end - start] == result.logprobs[start:end] for c in candidates)  # fmt: skip
