"""Generators the environment tests play through: a real engine that records what it sampled, and a scripted
stand-in for a capable model (shared by the verifiers 0.3 and 0.4 tests)."""

from __future__ import annotations

from rayrl.engines.base import Completion
from rayrl.envs.base import Generator, Sampled


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
