"""Supervised fine-tuning's maths, Ray-free: prompt/response token rows as learner samples, and the loss.

A row trains on its response tokens only (the prompt is context). The samples reuse the RL step's
``TrainSample``/``collate``/``shard_evenly``: each sample's per-token weight is 1 / (the batch's response
tokens), so the learner ranks' weighted token sums add up to the batch's mean negative log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rayrl.algorithms.grpo import TrainSample, sequence_logits
from rayrl.algorithms.sampling import token_logprobs


@dataclass
class TokenizedRows:
    """Rows as token ids, and what had to be cut to fit ``seq_len``."""

    rows: list[tuple[list[int], int]]  # (prompt + response ids, index of the first response token)
    truncated: int = 0  # rows whose response was cut at seq_len
    dropped: int = 0  # rows whose prompt alone filled seq_len


def tokenize_pairs(tokenizer, pairs: list[tuple[str, str]], seq_len: int) -> TokenizedRows:
    """Prompt ids (as rollouts tokenize prompts) followed by the response's ids and end-of-sequence, cut at
    ``seq_len`` tokens."""
    out = TokenizedRows([])
    for prompt, response in pairs:
        prompt_ids = tokenizer(prompt).input_ids
        response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(prompt_ids) >= seq_len:
            out.dropped += 1
            continue
        ids = prompt_ids + response_ids
        if len(ids) > seq_len:
            out.truncated += 1
            ids = ids[:seq_len]
        out.rows.append((ids, len(prompt_ids)))
    return out


def supervised_samples(rows: list[tuple[list[int], int]]) -> list[TrainSample]:
    """One sample per row, weighted so the batch's loss is the mean over its response tokens."""
    total = max(1, sum(len(ids) - start for ids, start in rows))
    return [
        TrainSample(np.asarray(ids, dtype=np.int64), start, np.zeros(len(ids) - start, np.float32), 0.0, 1.0 / total)
        for ids, start in rows
    ]


def supervised_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum over response tokens of weight x (-log p(token))`` for a ``collate``d batch (temperature 1)."""
    ids = batch["input_ids"]
    logprobs = token_logprobs(sequence_logits(model, ids), ids[:, 1:])
    weights = batch["loss_mask"] * batch["weights"].to(logprobs.dtype).unsqueeze(-1)
    return -(logprobs * weights).sum()
