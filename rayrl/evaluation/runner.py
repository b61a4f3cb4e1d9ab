"""Evaluating one model directory on the connected Ray cluster: per-sample rewards of every environment.

:func:`evaluate_model` starts its own replicas and rollout workers (in a namespace of its own, so a
running training is never touched), plays the held-out examples and kills its actors again. The
same model, config, split, samples, seed and temperature give the same numbers every time.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rayrl.config import Config
from rayrl.envs import Example
from rayrl.errors import EvalSplitError

log = logging.getLogger(__name__)

Split = Literal["eval", "confirm"]


@dataclass
class EnvEval:
    """One environment's evaluation: row i is example ``example_ids[i]``, column j its j-th sample."""

    example_ids: list[str]
    scores: np.ndarray  # [n_examples, samples] rewards
    completions: list[list[str]]  # [n_examples][samples]
    metrics: dict[str, np.ndarray]  # named env metrics, [n_examples, samples] (missing -> nan)


@dataclass
class EvalResult:
    envs: dict[str, EnvEval]  # key = cfg.env_names()[i]


def split_examples(cfg: Config, examples_by_env: list[list[Example]], split: Split) -> list[list[Example]]:
    """The examples of ``split`` for every environment, from each environment's ``eval`` examples.

    ``eval``: the first ``eval.num_examples`` (capped by the split, as during training).
    ``confirm``: the next ``eval.confirm_examples``, reserved for the promotion gate's confirmation;
    an environment with fewer held-out examples than both together is an error.
    """

    n_eval, n_confirm = cfg.eval.num_examples, cfg.eval.confirm_examples
    if split == "eval":
        for name, examples in zip(cfg.env_names(), examples_by_env):
            if not examples:
                raise EvalSplitError(f"environment '{name}' has no held-out (eval) examples to evaluate on")
        return [examples[:n_eval] for examples in examples_by_env]
    if split != "confirm":
        raise ValueError(f"split must be 'eval' or 'confirm', got {split!r}")
    if n_confirm == 0:
        raise EvalSplitError("the confirm split is empty: eval.confirm_examples = 0; set it above 0")
    out = []
    for name, examples in zip(cfg.env_names(), examples_by_env):
        if len(examples) < n_eval + n_confirm:
            raise EvalSplitError(
                f"environment '{name}' has {len(examples)} held-out (eval) examples, fewer than eval.num_examples "
                f"({n_eval}) + eval.confirm_examples ({n_confirm}) = {n_eval + n_confirm} that the confirm split "
                f"needs (it takes the {n_confirm} examples after the first {n_eval}); raise the environment's "
                "held-out size (e.g. --env.0.args.eval_size for arithmetic) or lower those keys"
            )
        out.append(examples[n_eval : n_eval + n_confirm])
    return out


def evaluate_model(
    cfg: Config, model_dir: str, *, split: Split = "eval", samples: int | Sequence[Sequence[int]] = 1, seed: int = 0,
    temperature: float | None = None,
) -> EvalResult:
    """Evaluate the Hugging Face model directory ``model_dir`` (e.g. a checkpoint) on every ``[[env]]``
    of ``cfg``: ``samples`` completions per example of ``split``, sampled at ``temperature``
    (default ``eval.temperature``) with seeds derived from ``seed``.

    ``samples`` may also give a count per example: one sequence per environment, in the split's example
    order (the sequential gate's allocation); rows of examples with fewer samples than the most are padded
    with NaN in ``scores`` and ``metrics``. The same counts and seed give the same samples.

    Ray must already be initialised (``rayrl.cluster.connect``). Starts ``inference.replicas``
    replicas and ``rollout.workers`` workers on ``model_dir`` and kills them before returning.
    """
    import ray

    from rayrl.actors.fleet import (
        collect_rollouts, kill_actors, start_replicas, start_rollout_workers, submit_rollouts, wait_ready,
    )
    from rayrl.actors.rollout import Task
    from rayrl.engines.base import SamplingParams
    from rayrl.envs.registry import build_envs

    if not ray.is_initialized():
        raise RuntimeError("evaluate_model: Ray is not initialised; call rayrl.cluster.connect(cfg.ray) first")
    if not any(Path(model_dir, name).is_file() for name in ("config.json", "adapter_config.json")):
        raise FileNotFoundError(f"{model_dir} is not a model or LoRA adapter directory (no config.json)")
    temperature = cfg.eval.temperature if temperature is None else temperature
    envs = build_envs(cfg)
    examples = split_examples(cfg, [env.examples("eval") for env in envs], split)
    counts = _sample_counts(samples, examples, cfg.env_names())
    if temperature == 0 and max(max(c, default=1) for c in counts) > 1:
        log.warning("temperature 0 (greedy) with several samples per example: the samples are identical")
    tasks = [Task(i, ex, k) for i, env_examples in enumerate(examples) for ex, k in zip(env_examples, counts[i])]
    params = SamplingParams(cfg.sampling.max_tokens, temperature, 1.0, seed)

    namespace = f"eval-{Path(model_dir).name}-{uuid.uuid4().hex[:8]}"
    replicas: list = []
    workers: list = []
    try:
        replicas = start_replicas(cfg, str(model_dir), 0, namespace)
        workers = start_rollout_workers(cfg, str(model_dir), replicas, namespace)
        wait_ready(replicas, timeout_s=cfg.fault.ready_timeout_s)
        rollouts_by_task, _ = collect_rollouts(submit_rollouts(workers, tasks, params, step=0), cfg.fault)
    finally:
        kill_actors(workers + replicas)

    if len(rollouts_by_task) != len(tasks):
        raise RuntimeError(f"evaluation returned {len(rollouts_by_task)} groups for {len(tasks)} examples")
    names = cfg.env_names()
    result: dict[str, EnvEval] = {}
    start = 0
    for i, env_examples in enumerate(examples):
        groups = rollouts_by_task[start : start + len(env_examples)]
        start += len(env_examples)
        result[names[i]] = _env_eval(env_examples, groups, counts[i])
    return EvalResult(result)


def _sample_counts(samples: int | Sequence[Sequence[int]], examples: list[list[Example]], names: list[str]) -> list[list[int]]:
    """Samples per example of every environment, checked against the split."""
    if isinstance(samples, int):
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        return [[samples] * len(env_examples) for env_examples in examples]
    counts = [[int(k) for k in env_counts] for env_counts in samples]
    if len(counts) != len(examples):
        raise ValueError(f"samples: {len(counts)} per-example count lists for {len(examples)} environments")
    for name, env_counts, env_examples in zip(names, counts, examples):
        if len(env_counts) != len(env_examples):
            raise ValueError(f"samples: environment '{name}' has {len(env_examples)} examples in the split but "
                             f"{len(env_counts)} counts")
        if min(env_counts, default=1) < 1:
            raise ValueError(f"samples: environment '{name}' has a count below 1")
    return counts


def _unplayed(example: Example):
    """The stand-in rollout of an example that could not be played: reward 0, no completion."""
    from rayrl.algorithms.grpo import Rollout

    return Rollout(0, example.id, 0, [], [], [], 0.0, 0, "prompt_too_long")


def _env_eval(examples: list[Example], groups: list[list], samples: list[int]) -> EnvEval:
    """Scores per example; an example whose prompt was too long to play (``rollout.long_prompts = "skip"``)
    scores 0 in each of its ``samples``: every checkpoint is scored on the same examples."""
    for ex, g in zip(examples, groups):
        if any(r.example_id != ex.id for r in g):
            raise RuntimeError(f"evaluation: rollouts out of order at example {ex.id}")
    unplayed = sum(not g for g in groups)
    if unplayed:
        log.warning("%d of %d examples have a prompt too long for seq_len: scored 0 (rollout.long_prompts = skip)",
                    unplayed, len(examples))
    groups = [g or [_unplayed(ex) for _ in range(k)] for ex, g, k in zip(examples, groups, samples)]
    width = max((len(g) for g in groups), default=0)

    def table(value) -> np.ndarray:  # [n_examples, width], NaN where an example has fewer samples
        out = np.full((len(groups), width), math.nan)
        for row, g in enumerate(groups):
            out[row, : len(g)] = [value(r) for r in g]
        return out

    metric_names = sorted({m for g in groups for r in g for m in r.metrics})
    return EnvEval(
        example_ids=[ex.id for ex in examples],
        scores=table(lambda r: r.reward),
        completions=[[r.completion for r in g] for g in groups],
        metrics={m: table(lambda r, m=m: r.metrics.get(m, math.nan)) for m in metric_names},
    )
