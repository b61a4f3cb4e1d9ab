"""Supervised warm-start: teach the task format before RL, stopping while RL still has work to do.

RL from random weights never samples a correct answer on the default task, so the seeds' recipe
(SFT, then RL) is followed: a short supervised pass on the first ``[[env]]``'s train-split reference
answers, checked every few steps by the greedy validation score (the mean reward of greedy completions:
the accuracy for 0/1 rewards) on examples taken from the train split (never the held-out eval split),
stopping at the first check within [target_accuracy, max_accuracy]. A check that overshoots rolls back
to the previous check's weights and continues at half the learning rate.

Any single-turn environment whose examples carry a reference answer can be warm-started: the built-in
tasks, and verifiers environments (their ``answer`` column; the episode is played through the
environment's own loop on the model in process). Others are refused before any actor starts.
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
from rayrl.envs.base import Environment, EpisodeRequest, Example, drives_generation
from rayrl.envs.episodes import EngineGenerator, play_turns
from rayrl.errors import WarmstartError

log = logging.getLogger(__name__)
CHECKED_EXAMPLES = 20  # train examples looked at for a reference answer before any actor starts


@dataclass
class WarmstartReport:
    steps: int = 0
    accuracy: float = 0.0  # greedy validation score: mean reward (the accuracy for 0/1 rewards)
    reached_target: bool = False
    history: list[tuple[int, float]] = field(default_factory=list)


def check_warm_start(env: Environment, env_id: str) -> None:
    """Raise WarmstartError unless ``env`` is single-turn and its train examples carry reference answers."""
    fix = ("set warmstart.enabled = false (in [warmstart] or --warmstart.enabled false), or list a single-turn "
           "environment with reference answers first in [[env]]")  # fmt: skip
    if env.max_turns > 1:
        raise WarmstartError(
            f"[[env]] entry 1 (id '{env_id}') is a multi-turn environment: the supervised warm-start trains on "
            f"single-turn reference answers; {fix}"
        )
    examples = env.examples("train")[:CHECKED_EXAMPLES]
    if not examples or not all(env.sft_completion(e) for e in examples):
        raise WarmstartError(
            f"[[env]] entry 1 (id '{env_id}'): its train examples carry no reference answer to warm-start on "
            f"(Example.answer is empty); {fix}"
        )


def greedy_score(engine: TransformersEngine, tokenizer, env: Environment, examples: list[Example], max_tokens: int,
                 seq_len: int) -> float:  # fmt: skip
    """Mean reward of greedy completions of ``examples``, played as the rollout workers play them."""
    generator = EngineGenerator(engine, tokenizer, seq_len, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    requests = [EpisodeRequest(env, e, tokenizer(e.prompt).input_ids) for e in examples]
    played = env.play(requests, generator) if drives_generation(env) else play_turns(requests, generator)
    return float(np.mean([episode.reward for episode in played]))


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


def warm_start(model, tokenizer, env: Environment, cfg: WarmstartConfig, max_tokens: int,
               seq_len: int) -> WarmstartReport:  # fmt: skip
    """Train ``model`` in place on ``env``'s train answers until the greedy validation score is in range."""
    train = env.examples("train")
    if len(train) <= cfg.check_examples:
        raise WarmstartError(
            f"warm-start on '{env.id}': its train split has {len(train)} examples, not more than "
            f"warmstart.check_examples ({cfg.check_examples}) held out for validation; lower that key"
        )
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
        model.eval()
        score = greedy_score(engine, tokenizer, env, validation, max_tokens, seq_len)
        report.history.append((step, score))
        log.info("warm-start step %d: loss %.3f, greedy validation score %.3f", step, loss.item(), score)
        if score > cfg.max_accuracy:  # overshot: back to the last check, smaller steps
            model.load_state_dict(snapshot)
            lr /= 2
            for group in optimizer.param_groups:
                group["lr"] = lr
            continue
        report.accuracy = score
        if score >= cfg.target_accuracy:
            report.reached_target = True
            break
        snapshot = copy.deepcopy(model.state_dict())
    model.eval()
    return report
