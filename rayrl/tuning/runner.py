"""Iterations of a sweep: a Ray Tune experiment from the champion, then the promotion gate.

Each iteration:

1. runs a Tune experiment ``<name>-iter<N>`` under ``storage_path``: every trial a full rayrl run from the
   current champion (:mod:`rayrl.tuning.trial`), reporting metrics and a checkpoint at each evaluation;
2. ranks the trials by their best ``metric`` on the eval split and hands the best ``candidates`` to the gate;
3. scores the champion and each candidate on the confirmation split (examples never used for selection),
   with the same examples, K samples and seeds, using the config of record (base + ``[overrides]``, so every
   candidate is judged by the same environments and rewards whatever its trial varied);
4. ``decide`` (paired test, regression tolerance, multiple-comparison correction), every decision appended
   to ``lineage.jsonl``; an adopted candidate is copied to ``<output_dir>/champions/<name>`` and the
   champion pointer moves to it. The next iteration starts from that champion.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rayrl.config import Config
from rayrl.errors import ConfigError
from rayrl.tuning.lineage import Lineage
from rayrl.tuning.sweep import SweepConfig, recipe

log = logging.getLogger(__name__)


@dataclass
class TrialSummary:
    """One trial of an iteration, as the table shows it."""

    name: str  # candidate name in the lineage: iter<N>-<trial id>
    params: dict[str, Any]
    best: float | None  # best selection metric over its evaluations
    best_step: int | None
    last_step: int | None
    checkpoint: Any = None  # ray.tune.Checkpoint of the best evaluation
    error: str | None = None
    config: dict[str, Any] | None = None  # its recipe (for the lineage's config diff)


@dataclass
class IterationResult:
    iteration: int
    experiment_path: str  # the Tune experiment folder (or URI): Tuner.restore / ResultGrid read it
    result_grid: Any  # ray.tune.ResultGrid
    trials: list[TrialSummary]
    decisions: list = field(default_factory=list)  # rayrl.evaluation.gate.Decision, best trial first
    champion: dict[str, Any] | None = None  # the champion pointer after the gate


def run_sweep(sweep: SweepConfig, echo: Callable[[str], None] = print, verbose: int = 1) -> list[IterationResult]:
    """Run ``sweep.iterations`` iterations on the connected Ray cluster (or a new local one)."""
    import ray

    from rayrl.cluster import connect

    base = sweep.config()
    owns_ray = connect(base.ray)
    try:
        lineage = Lineage(sweep.output_dir)
        evals: dict[str, Any] = {}  # model folder -> its confirmation scores (the champion's are reused)
        champion = start_champion(sweep, lineage, base, evals)
        echo(f"champion: {champion['name']} ({champion['checkpoint']}); lineage in {sweep.output_dir}")
        results = []
        for _ in range(sweep.iterations):
            result = run_iteration(sweep, lineage, base, evals, verbose)
            echo(format_iteration(result, sweep))
            results.append(result)
        return results
    finally:
        if owns_ray:
            ray.shutdown()


def start_champion(sweep: SweepConfig, lineage: Lineage, base: Config, evals: dict) -> dict[str, Any]:
    """The lineage's champion; for a new lineage, ``sweep.champion`` or the base experiment's starting model."""
    current = lineage.champion()
    if current is not None:
        if sweep.champion and Path(sweep.champion) != Path(current["checkpoint"]):
            log.info("continuing the lineage in %s from its champion %s; champion = %s is not used",
                     sweep.output_dir, current["checkpoint"], sweep.champion)
        return current
    if sweep.champion:
        path, config = Path(sweep.champion), base
        if not (path / "config.json").is_file():
            raise ConfigError(f"champion {path} is not a model folder (no config.json): name a checkpoint folder "
                              "such as RUN_DIR/checkpoints/step_N")
        info = path / "training_info.json"
        if info.is_file():  # a rayrl checkpoint: it records the config that trained it
            import json

            config = Config.model_validate(json.loads(info.read_text())["config"])
    else:
        from rayrl.models.loading import resolve_base_model

        path, config = Path(resolve_base_model(base)[0]), base
        log.info("no champion given: starting from the base experiment's model %s", path)
    scores = confirmation_scores(sweep, base, str(path), evals)
    return lineage.start(str(path), name="initial", metrics=env_means(scores), config=recipe(config))


def run_iteration(sweep: SweepConfig, lineage: Lineage, base: Config, evals: dict, verbose: int = 1) -> IterationResult:
    from ray import tune

    from rayrl.evaluation.gate import decide, paired_scores
    from rayrl.tuning.trial import TrialSetup, run_trial, trial_resources

    iteration = lineage.next_iteration()
    champion = lineage.champion()
    champion_scores = confirmation_scores(sweep, base, champion["checkpoint"], evals)  # before Tune: fail early
    setup = TrialSetup(sweep, champion["checkpoint"])
    max_steps = base.max_steps
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, setup=setup), trial_resources(setup)),
        param_space=sweep.tune_param_space(),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
            scheduler=sweep.tune_scheduler(max_steps), max_concurrent_trials=sweep.max_concurrent_trials or None,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-iter{iteration}", storage_path=sweep.storage_path, verbose=verbose,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=sweep.keep_checkpoints, checkpoint_score_attribute=sweep.metric,
                checkpoint_score_order=sweep.mode,
            ),
        ),
    )
    # num_to_keep forces a snapshot of the experiment state at every checkpoint: expected here, not a problem
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    grid = tuner.fit()
    trials = summarize(grid, sweep, iteration)
    result = IterationResult(iteration, grid.experiment_path, grid, trials)
    finalists = [t for t in trials if t.checkpoint is not None][: sweep.candidates]
    if not finalists:
        errors = "; ".join(f"{t.name}: {t.error}" for t in trials if t.error) or "no trial reported a checkpoint"
        raise RuntimeError(f"iteration {iteration}: no trial finished an evaluation ({errors})")

    candidate_scores, candidate_dirs = {}, {}
    for t in finalists:
        with t.checkpoint.as_directory() as directory:  # a local folder, downloaded first from a URI
            candidate_scores[t.name] = paired_scores(champion_scores, confirmation_scores(sweep, base, directory, {}))[1]
        candidate_dirs[t.name] = _location(t.checkpoint)
    champion_means = paired_scores(champion_scores, champion_scores)[0]
    result.decisions = decide(champion_means, candidate_scores, sweep.gate, parent=champion["name"])
    for d in result.decisions:
        if d.adopted:  # the champion lives on local disk: trials and the next gate read it with from_pretrained
            target = Path(sweep.output_dir, "champions", d.candidate)
            best = next(t for t in finalists if t.name == d.candidate)
            best.checkpoint.to_directory(str(target))
            candidate_dirs[d.candidate] = str(target)
    configs = {t.name: t.config for t in finalists if t.config is not None}
    result.champion = lineage.record(result.decisions, iteration, candidate_dirs, configs) or lineage.champion()
    return result


def summarize(grid, sweep: SweepConfig, iteration: int) -> list[TrialSummary]:
    """Every trial of a ResultGrid, best first (failed trials and trials without a checkpoint last)."""
    sign = 1.0 if sweep.mode == "max" else -1.0
    out = []
    for r in grid:
        trial_id = Path(r.path).name.removeprefix("trial_")
        scored = [(c, m) for c, m in (r.best_checkpoints or []) if _finite(m.get(sweep.metric))]
        best = max(scored, key=lambda cm: sign * cm[1][sweep.metric]) if scored else None
        last = (r.metrics or {}).get("step")
        config = None
        if best is not None:
            try:
                config = recipe(sweep.config(r.config))
            except ConfigError:
                config = None
        out.append(TrialSummary(
            name=f"iter{iteration}-{trial_id}", params=dict(r.config or {}),
            best=best[1][sweep.metric] if best else None, best_step=best[1].get("step") if best else None,
            last_step=last, checkpoint=best[0] if best else None,
            error=_first_line(r.error) if r.error else None, config=config,
        ))
    return sorted(out, key=lambda t: (t.best is None, -sign * (t.best or 0.0)))


def confirmation_scores(sweep: SweepConfig, base: Config, model_dir: str, cache: dict):
    """The confirmation-split evaluation of ``model_dir`` (K = gate.samples samples, seed gate.seed)."""
    from rayrl.evaluation.runner import evaluate_model

    key = str(model_dir)
    if key not in cache:
        temperature = gate_temperature(sweep, base)
        cache[key] = evaluate_model(base, key, split="confirm", samples=sweep.gate.samples, seed=sweep.gate.seed,
                                    temperature=temperature)
    return cache[key]


def gate_temperature(sweep: SweepConfig, base: Config) -> float:
    """``eval.temperature``, except that K > 1 samples are drawn at ``sampling.temperature`` when evaluation
    is greedy (K greedy samples would be K copies of one)."""
    if sweep.gate.samples > 1 and base.eval.temperature == 0:
        return base.sampling.temperature
    return base.eval.temperature


def env_means(result) -> dict[str, float]:
    return {name: float(np.mean(e.scores)) for name, e in result.envs.items()}


# ---- the table ------------------------------------------------------------------------------------


def format_iteration(result: IterationResult, sweep: SweepConfig) -> str:
    """The trials (params, best metric, steps) and the gate's decisions of one iteration."""
    keys = list(sweep.param_space) + (["variant"] if sweep.variants else [])
    header = ["trial", *keys, f"{sweep.metric} (best)", "at step", "last step", "status"]
    rows = [header]
    for t in result.trials:
        rows.append([
            t.name, *(_fmt(t.params.get(k)) for k in keys), _fmt(t.best), _fmt(t.best_step), _fmt(t.last_step),
            f"error: {t.error}" if t.error else "ok",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"iteration {result.iteration}: {len(result.trials)} trials, Tune experiment {result.experiment_path}"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if result.decisions:
        lines.append(f"gate (confirmation split, {sweep.gate.samples} sample(s) per example, test {sweep.gate.test}):")
        for d in result.decisions:
            lines.append(f"  {d.candidate}: {d.reason}")
    if result.champion:
        lines.append(f"champion: {result.champion['name']} ({result.champion['checkpoint']})")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def _location(checkpoint) -> str:
    """Where a Tune checkpoint lives: a local path, or a URI (``s3://bucket/...``) for remote storage."""
    scheme = getattr(checkpoint.filesystem, "type_name", "local")
    return checkpoint.path if scheme == "local" else f"{scheme}://{checkpoint.path}"


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
