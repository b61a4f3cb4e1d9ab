"""Supervised warm-start: teach the task format before RL, stopping while RL still has work to do.

RL from random weights never samples a correct answer on the default task, so the seeds' recipe
(SFT, then RL) is followed: a short supervised pass on train-split answers, checked every few steps
by greedy accuracy on validation examples taken from the train split (never the held-out eval
split), stopping at the first check within [target_accuracy, max_accuracy]. A check that overshoots
rolls back to the previous check's weights and continues at half the learning rate.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from rayrl.config import WarmstartConfig
from rayrl.engines.base import SamplingParams
from rayrl.engines.transformers_engine import TransformersEngine
from rayrl.envs import Environment, Example
from rayrl.envs.base import split_score

log = logging.getLogger(__name__)


@dataclass
class WarmstartReport:
    steps: int = 0
    accuracy: float = 0.0
    reached_target: bool = False
    history: list[tuple[int, float]] = field(default_factory=list)


def greedy_accuracy(engine: TransformersEngine, tokenizer, env: Environment, examples: list[Example], max_tokens: int) -> float:
    """Share of ``examples`` whose greedy completion scores > 0."""
    prompts = [tokenizer(e.prompt).input_ids for e in examples]
    completions = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
    return float(np.mean([split_score(env.score(e, t))[0] > 0 for e, t in zip(examples, texts)]))


def supervised_batch(tokenizer, env: Environment, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded prompt+answer+eos sequences with labels only on the answer tokens."""
    rows = []
    for e in examples:
        prompt = tokenizer(e.prompt).input_ids
        answer = tokenizer(env.sft_completion(e), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append((prompt + answer, len(prompt)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (ids, start) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, start : len(ids)] = torch.tensor(ids[start:])
    return {"input_ids": input_ids, "labels": labels}


def warm_start(model, tokenizer, env: Environment, cfg: WarmstartConfig, max_tokens: int) -> WarmstartReport:
    """Train ``model`` in place on ``env``'s train answers until greedy validation accuracy is in range."""
    train = env.examples("train")
    validation, pool = train[-cfg.check_examples :], train[: -cfg.check_examples]
    rng = np.random.default_rng(cfg.seed)
    lr = cfg.lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    engine = TransformersEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    report = WarmstartReport()
    snapshot = copy.deepcopy(model.state_dict())
    for step in range(1, cfg.max_steps + 1):
        model.train()
        batch = supervised_batch(tokenizer, env, [pool[i] for i in rng.integers(0, len(pool), cfg.batch_size)])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        report.steps = step
        if step % cfg.check_interval:
            continue
        accuracy = greedy_accuracy(engine, tokenizer, env, validation, max_tokens)
        report.history.append((step, accuracy))
        log.info("warm-start step %d: loss %.3f, greedy validation accuracy %.3f", step, loss.item(), accuracy)
        if accuracy > cfg.max_accuracy:  # overshot: back to the last check, smaller steps
            model.load_state_dict(snapshot)
            lr /= 2
            for group in optimizer.param_groups:
                group["lr"] = lr
            continue
        report.accuracy = accuracy
        if accuracy >= cfg.target_accuracy:
            report.reached_target = True
            break
        snapshot = copy.deepcopy(model.state_dict())
    model.eval()
    return report
