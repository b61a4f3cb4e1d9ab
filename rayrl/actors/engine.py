"""Inference engines behind an InferenceActor: the interface, and the transformers engine for CPU.

The interface is what a vLLM engine fills on GPUs: token ids in, sampled token ids and the log-prob
of each sampled token under the sampling distribution out, weights replaced between calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from rayrl.actors.weights import WeightBundle, alias_into, load_into


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the sampling distribution
    finish_reason: str  # "stop" (end-of-sequence sampled) or "length"


class Engine(ABC):
    @abstractmethod
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """One completion per prompt (repeat a prompt to sample it several times)."""

    @abstractmethod
    def load_weights(self, bundle: WeightBundle) -> None:
        """Replace the weights; called between generate calls, never during one."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The engine's current weights (for checks)."""


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` [B, V]; return (tokens [B], log-probs [B]).

    Log-probs are under the distribution actually sampled from: temperature-scaled and, with
    ``top_p < 1``, renormalised over the nucleus. Greedy (temperature 0) reports the unscaled log-prob.
    """
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(-1, descending=True)
        outside = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() >= top_p
        sorted_logp = sorted_logp.masked_fill(outside, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp)
        logp = torch.log_softmax(logp, -1)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


class TransformersEngine(Engine):
    """Batched KV-cached sampling with a Hugging Face causal LM (CPU or one GPU)."""

    def __init__(self, model, eos_id: int, pad_id: int | None, max_batch_size: int = 512):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.eos_id = eos_id
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.max_batch_size = max_batch_size

    @classmethod
    def from_pretrained(
        cls, model_path: str, dtype: str = "float32", device: str = "cpu", max_batch_size: int = 512
    ) -> TransformersEngine:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        return cls(model, tokenizer.eos_token_id, tokenizer.pad_token_id, max_batch_size)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        out: list[Completion] = []
        for start in range(0, len(prompts), self.max_batch_size):
            out.extend(self._generate_batch(prompts[start : start + self.max_batch_size], params, generator))
        return out

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator
    ) -> list[Completion]:
        from transformers import DynamicCache

        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        tokens = torch.empty((batch, params.max_tokens), dtype=torch.long, device=self.device)
        logprobs = torch.empty((batch, params.max_tokens), dtype=torch.float32, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        steps = 0
        for step in range(params.max_tokens):
            logits = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
            ).logits[:, -1]
            next_tokens, next_logprobs = sample_tokens(logits, params.temperature, params.top_p, generator)
            tokens[:, step], logprobs[:, step] = next_tokens, next_logprobs
            steps = step + 1
            done |= next_tokens == self.eos_id
            if bool(done.all()):
                break
            input_ids = next_tokens[:, None]
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        return [self._completion(tokens[row, :steps].tolist(), logprobs[row, :steps].tolist()) for row in range(batch)]

    def _completion(self, token_ids: list[int], logprobs: list[float]) -> Completion:
        if self.eos_id in token_ids:
            end = token_ids.index(self.eos_id) + 1
            return Completion(token_ids[:end], logprobs[:end], "stop")
        return Completion(token_ids, logprobs, "length")

    def load_weights(self, bundle: WeightBundle) -> None:
        """On CPU, alias the shared buffer (zero-copy, one copy per node); else copy into the model."""
        if alias_into(self.model, bundle):
            self._shared_bundle = bundle  # keeps the object-store memory pinned while in use
        else:
            load_into(self.model, bundle)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
