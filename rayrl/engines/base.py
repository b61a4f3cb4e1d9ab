"""The engine interface: token ids in, sampled token ids and their log-probs out, weights replaced
between calls. Replicas (``rayrl.actors.inference``) serve it; environments see it through a
``Generator``; the warm-start uses it in process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from rayrl.engines.weights import WeightBundle


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs to start (``inference.*`` plus the model folder on this node)."""

    engine: str  # "transformers" or "vllm"
    model_path: str
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 2
    max_batch_size: int = 512  # sequences decoded together (vLLM's max_num_seqs)
    max_model_len: int = 256  # longest prompt plus completion (seq_len)
    seed: int = 0
    kv_cache_mib: int | None = None  # vLLM's KV-cache budget; None: 512 MiB on CPU, vLLM's default on GPU


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
    def load_weights(self, bundle: "WeightBundle") -> None:
        """Replace the weights; called between generate calls, never during one."""

    @abstractmethod
    def state_dict(self) -> "dict[str, torch.Tensor]":
        """The engine's current weights (for checks)."""
