"""The transformers engine: batched, KV-cached sampling with a Hugging Face causal LM (CPU or one GPU).

The lightest engine and the CPU default. Log-probs are those of the distribution sampled from
(``rayrl.algorithms.sampling``, the same function the learner scores with).
"""

from __future__ import annotations

import torch

from rayrl.algorithms.sampling import sample_tokens
from rayrl.engines.base import Completion, Engine, SamplingParams
from rayrl.engines.weights import WeightBundle, adapted_weight_names, alias_into, load_into, merge_adapter


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
        generator = torch.Generator(device=self.device)
        out: list[Completion] = []
        for start in range(0, len(prompts), self.max_batch_size):
            # each batch from its own seed: how many steps one batch ran (it stops when every row has ended)
            # never shifts the noise of the next, so two close policies given the same prompts and seed draw
            # the same noise batch by batch (common random numbers: the promotion gate pairs on them)
            generator.manual_seed(params.seed + start)
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
        """On CPU, alias the shared buffer (zero-copy, one copy per node); else copy into the model. A LoRA
        adapter is merged into the base weights, kept aside at the first adapter this replica loads."""
        if bundle.adapter_scaling is not None:
            params = dict(self.model.named_parameters())
            if not hasattr(self, "_base_weights"):
                self._base_weights = {n: params[n].detach().clone() for n in adapted_weight_names(bundle)}
            with torch.no_grad():
                for name, weight in merge_adapter(self._base_weights, bundle).items():
                    params[name].data = weight  # a fresh tensor: never write into shared read-only memory
            return
        if alias_into(self.model, bundle):
            self._shared_bundle = bundle  # keeps the object-store memory pinned while in use
        else:
            load_into(self.model, bundle)

    def held_weights(self, names: list[str]) -> dict[str, torch.Tensor] | None:
        """The tensors the model now holds under ``names`` (its state dict's names are the learner's)."""
        own = self.model.state_dict()
        return {n: own[n] for n in names} if all(n in own for n in names) else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
