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

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rayrl.config import Config
from rayrl.errors import ConfigError
from rayrl.evaluation.gate import iteration_alphas
from rayrl.tuning.lineage import Lineage
from rayrl.tuning.profiles import load_profile, save_profile, stats_of
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
        results: list[IterationResult] = []
        for _ in range(sweep.iterations):
            adopted = [any(d.adopted for d in r.decisions) for r in results]
            alpha = iteration_alphas(sweep.gate.alpha, adopted, sweep.iterations, sweep.gate.alpha_scope)
            result = run_iteration(sweep, lineage, base, evals, verbose, alpha=alpha)
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
    save_profile(sweep.output_dir, "initial", {env: e.example_ids for env, e in scores.envs.items()},
                 {env: stats_of(e.scores) for env, e in scores.envs.items()})
    return lineage.start(str(path), name="initial", metrics=env_means(scores), config=recipe(config))


def run_iteration(sweep: SweepConfig, lineage: Lineage, base: Config, evals: dict, verbose: int = 1,
                  alpha: float | None = None) -> IterationResult:
    """One Tune experiment and its gate. ``alpha``: this iteration's share of the run's alpha (default gate.alpha)."""
    from ray import tune

    from rayrl.evaluation.gate import decide, paired_scores
    from rayrl.tuning.trial import TrialSetup, run_trial, trial_resources

    gate = sweep.gate if alpha is None else sweep.gate.model_copy(update={"alpha": alpha})
    iteration = lineage.next_iteration()
    champion = lineage.champion()
    champion_scores, ids = None, {}
    if gate.design == "fixed":  # before Tune: fail early
        champion_scores = confirmation_scores(sweep, base, champion["checkpoint"], evals)
    else:
        ids = confirmation_example_ids(base)
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

    candidate_dirs = {t.name: _location(t.checkpoint) for t in finalists}
    with contextlib.ExitStack() as stack:  # local folders (downloaded first from a URI) for the whole gate
        local = {t.name: stack.enter_context(t.checkpoint.as_directory()) for t in finalists}
        if gate.design == "fixed":
            candidate_scores = {name: paired_scores(champion_scores, confirmation_scores(sweep, base, d, {}))[1]
                                for name, d in local.items()}
            champion_means = paired_scores(champion_scores, champion_scores)[0]
            result.decisions = decide(champion_means, candidate_scores, gate, parent=champion["name"])
        else:
            result.decisions, seen = sequential_gate(sweep, base, champion, local, iteration, gate, ids)
            for d in result.decisions:
                if d.adopted:  # its samples of this gate guide the next gate's first look
                    save_profile(sweep.output_dir, d.candidate, ids, seen[d.candidate])
    for d in result.decisions:
        if d.adopted:  # the champion lives on local disk: trials and the next gate read it with from_pretrained
            target = Path(sweep.output_dir, "champions", d.candidate)
            best = next(t for t in finalists if t.name == d.candidate)
            best.checkpoint.to_directory(str(target))
            candidate_dirs[d.candidate] = str(target)
    configs = {t.name: t.config for t in finalists if t.config is not None}
    result.champion = lineage.record(result.decisions, iteration, candidate_dirs, configs) or lineage.champion()
    return result


def sequential_gate(sweep: SweepConfig, base: Config, champion: dict[str, Any], candidates: dict[str, str],
                    iteration: int, gate: Any, ids: dict[str, list[str]]) -> tuple[list, dict[str, dict]]:
    """The sequential gate of one iteration: look after look, fresh samples for the champion and every running
    candidate (the same per-example counts and seed for all of them), until every candidate has stopped.

    Look k's seed is ``look_seed(gate.seed, iteration, k)``: fresh per look and per iteration (a champion is
    never re-judged on the samples that adopted it). Each look's samples per example are allocated from
    every score seen before it (``gate.allocation``): the champion's profile (``ROOT/profiles``) for the
    first look, then also this gate's looks. ``gate``: the sweep's gate with this iteration's alpha; ``ids``:
    the confirmation split's example ids per environment. Returns the decisions and every candidate's own
    per-example stats (``[3, n]`` per environment: sum, squares, count).
    """
    from rayrl.evaluation.sequential_gate import SequentialGate
    from rayrl.evaluation.runner import evaluate_model
    from rayrl.evaluation.sequential import allocate, shrunk_variances

    state = SequentialGate(gate, list(candidates), parent=champion["name"])
    shares = np.diff([0.0, *gate.looks])
    history = load_profile(sweep.output_dir, champion["name"], ids)
    seen = history or {env: np.zeros((3, len(i))) for env, i in ids.items()}  # all policies' scores so far
    own: dict[str, dict[str, np.ndarray]] = {name: {env: np.zeros((3, len(i))) for env, i in ids.items()}
                                             for name in candidates}
    temperature = gate_temperature(sweep, base)
    for k in range(len(gate.looks)):
        seed = look_seed(gate.seed, iteration, k + 1)
        total = {env: round(shares[k] * gate.budget * gate.samples * len(i)) for env, i in ids.items()}
        informed = k > 0 or history is not None
        counts = {env: allocate(shrunk_variances(*seen[env]), total[env], 1,
                                gate.allocation if informed else "uniform") for env in ids}
        per_look = int(sum(c.sum() for c in counts.values()))
        log.info("gate look %d of %d: %d samples per policy for the champion and %d candidate(s)%s", k + 1,
                 len(gate.looks), per_look, len(state.running), " (allocated by the champion's profile)"
                 if k == 0 and history is not None else "")

        def scored(model_dir: str, name: str | None) -> dict[str, np.ndarray]:
            result = evaluate_model(base, model_dir, split="confirm", samples=[list(c) for c in counts.values()],
                                    seed=seed, temperature=temperature)
            for env, e in result.envs.items():
                if [str(i) for i in e.example_ids] != ids[env]:
                    raise RuntimeError(f"gate look {k + 1}: environment '{env}' returned its examples in another order")
                stats = stats_of(e.scores)
                seen[env] += stats
                if name is not None:
                    own[name][env] += stats
            return {env: np.nanmean(e.scores, axis=1) for env, e in result.envs.items()}

        champion_means = scored(champion["checkpoint"], None)
        candidate_means = {name: scored(candidates[name], name) for name in state.running}
        decisions = state.look(champion_means, candidate_means, samples=per_look)
        if decisions is not None:
            return decisions, own
    raise RuntimeError("the sequential gate ran out of looks without deciding")  # SequentialGate decides at the last


def look_seed(seed: int, iteration: int, look: int) -> int:
    """Sampling seed of one look of one iteration's gate (evaluation spreads it further per worker and call)."""
    return seed + 1_000 * iteration + look


def confirmation_example_ids(base: Config) -> dict[str, list[str]]:
    """The confirmation split's example ids per environment (checks the split exists before Tune runs)."""
    from rayrl.envs.registry import build_envs
    from rayrl.evaluation.runner import split_examples

    envs = build_envs(base)
    examples = split_examples(base, [env.examples("eval") for env in envs], "confirm")
    return {name: [str(ex.id) for ex in e] for name, e in zip(base.env_names(), examples)}


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
    """``eval.temperature``, except that K > 1 samples (and every sequential look: fresh samples) are drawn at
    ``sampling.temperature`` when evaluation is greedy (K greedy samples would be K copies of one)."""
    if (sweep.gate.samples > 1 or sweep.gate.design == "sequential") and base.eval.temperature == 0:
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
        g = sweep.gate
        if g.design == "fixed":
            lines.append(f"gate (confirmation split, {g.samples} sample(s) per example, test {g.test}):")
        else:
            spent = result.decisions[0].samples.get("champion", 0) + sum(d.samples.get("candidate", 0)
                                                                         for d in result.decisions)
            lines.append(f"gate (confirmation split, sequential: up to {len(g.looks)} looks, at most {g.budget:g} x "
                         f"{g.samples} samples per example, test {g.test}; {spent} samples scored):")
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
