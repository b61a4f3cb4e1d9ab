"""Evaluate a run's checkpoints on held-out data, as a job of its own.

Reads RUN_DIR/checkpoints/step_N (never writes there) with the run's own config (from the checkpoint's
training_info.json), starts its own replicas and rollout workers in a separate Ray namespace, and
writes only under RUN_DIR/eval/: step_N/{metrics.csv, completions.jsonl, summary.json},
consolidated_metrics.csv, summary.json (Pareto front across environments) and reward_by_step.png.
A step already evaluated with the same settings (and the same checkpoint) is reused unless --force.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("rayrl.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (holds checkpoints/step_N)")
    parser.add_argument("--steps", default="all", help="checkpoint steps: 'all' (default), 'latest' or a list: 10,20")
    parser.add_argument("--env", metavar="ID", help="evaluate only this environment (its metric name, e.g. arithmetic)")
    parser.add_argument("--samples", type=int, default=1, help="completions per example (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--temperature", type=float, help="sampling temperature (default: the run's eval.temperature)")
    parser.add_argument("--num-examples", type=int, help="held-out examples per environment (default: eval.num_examples)")
    parser.add_argument("--force", action="store_true", help="re-evaluate steps already evaluated with these settings")


def run(args: argparse.Namespace) -> int:
    import ray

    from rayrl.storage.checkpoints import CheckpointStore
    from rayrl.errors import CommandError
    from rayrl.evaluation.report import FORMAT_VERSION, consolidate

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CommandError(f"run folder {run_dir} does not exist")
    if args.samples < 1:
        raise CommandError(f"--samples must be at least 1, got {args.samples}")
    if args.temperature is not None and args.temperature < 0:
        raise CommandError(f"--temperature must be >= 0, got {args.temperature}")
    store = CheckpointStore(run_dir / "checkpoints")  # read-only use: step_folders(), problem() and read_info()
    steps = select_steps(store.step_folders(), args.steps, store.uri)
    broken = {step: why for step in steps if (why := store.problem(step)) is not None}
    for step, why in broken.items():
        log.warning("step %d: checkpoint %s is damaged: %s; not evaluated", step, store.path(step), why)
    if len(broken) == len(steps):
        raise CommandError("no intact checkpoint to evaluate: " + "; ".join(f"step_{s}: {w}" for s, w in broken.items()))
    cfg, env_name = run_config(store, [s for s in steps if s not in broken], args)
    settings = {
        "format": FORMAT_VERSION, "split": "eval", "samples": args.samples, "seed": args.seed,
        "temperature": cfg.eval.temperature if args.temperature is None else args.temperature,
        "num_examples": cfg.eval.num_examples, "envs": [e.model_dump(mode="json") for e in cfg.env],
    }
    job = EvalJob(cfg, store, run_dir / "eval", settings, env_name, args)
    outcomes: dict[int, str | None] = {}
    try:
        for n, step in enumerate(steps, start=1):
            if step not in broken:
                outcomes[step] = job.evaluate_step(step, f"{n}/{len(steps)}")
    finally:
        if job.owns_ray:
            ray.shutdown()
    if not any(outcomes.values()):
        raise CommandError(f"no checkpoint of steps {steps} could be evaluated (all were removed meanwhile)")
    summary = consolidate(job.eval_dir, [s for s in matching_steps(job.eval_dir, settings) if s not in broken],
                          settings, broken)
    log.info("Pareto front across environments: steps %s; best step %s", summary["pareto_front"], summary["best_step"])
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("evaluated", "reused")}
    damaged = f", {len(broken)} damaged (step {', '.join(map(str, broken))}: see summary.json)" if broken else ""
    print(f"done: {counts['evaluated']} checkpoints evaluated, {counts['reused']} reused{damaged}; results in {job.eval_dir}")
    return 1 if broken else 0


def select_steps(available: list[int], spec: str, root: str) -> list[int]:
    from rayrl.errors import CommandError

    if not available:
        raise CommandError(f"no checkpoints in {root} (a run saves them under checkpoints/step_N)")
    if spec == "all":
        return available
    if spec == "latest":
        return available[-1:]
    try:
        wanted = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise CommandError(f"--steps: expected 'all', 'latest' or a comma-separated list of steps, got '{spec}'") from None
    missing = [s for s in wanted if s not in available]
    if missing or not wanted:
        raise CommandError(f"--steps: no checkpoint for step(s) {missing or spec}; available steps: {available}")
    return wanted


def run_config(store, steps: list[int], args):
    """The run's config (newest selected checkpoint's), restricted to ``--env`` and with
    ``--num-examples`` applied; returns it and the restricted environment's name (or None)."""
    from pydantic import ValidationError

    from rayrl.config import Config
    from rayrl.errors import CommandError

    newest = store.path(steps[-1])
    try:
        cfg = Config.model_validate(store.read_info(newest)["config"])
    except (KeyError, ValueError, ValidationError) as e:
        raise CommandError(f"{newest}/training_info.json: cannot read the run's config: {e}") from None
    for step in steps[:-1]:
        other = store.read_info(store.path(step)).get("config", {}).get("env")
        if other != [e.model_dump(mode="json") for e in cfg.env]:
            log.warning("step %d was trained with other [[env]] entries; evaluating it on those of step %d", step, steps[-1])
    if args.num_examples is not None:
        if args.num_examples < 1:
            raise CommandError(f"--num-examples must be at least 1, got {args.num_examples}")
        cfg.eval.num_examples = args.num_examples
    env_name = None
    if args.env is not None:
        names = cfg.env_names()
        if args.env not in names:
            raise CommandError(f"--env: unknown environment '{args.env}'; this run's environments: {', '.join(names)}")
        env_name = args.env
        cfg = cfg.model_copy(update={"env": [cfg.env[names.index(args.env)]]})
    return cfg, env_name


@dataclass
class EvalJob:
    """Evaluates checkpoint steps of one run into eval/step_N with fixed settings."""

    cfg: Any
    store: Any  # CheckpointStore, used read-only
    eval_dir: Path
    settings: dict[str, Any]
    env_name: str | None  # --env, under the run's name for it
    args: argparse.Namespace
    owns_ray: bool = False

    def evaluate_step(self, step: int, progress: str) -> str | None:
        """"evaluated", "reused" (done before with the same settings on the same checkpoint), or None
        when the checkpoint vanished (rotated away by the training) before or while it was evaluated."""
        from rayrl.storage.checkpoints import INFO_FILE
        from rayrl.evaluation.report import read_step_summary, write_step

        ckpt = self.store.path(step)
        try:
            info = self.store.read_info(ckpt)
        except FileNotFoundError:
            log.warning("step %d: checkpoint %s was removed (checkpoint rotation?); skipped", step, ckpt)
            return None
        identity = {"checkpoint": str(ckpt.resolve()), "saved_at": info.get("saved_at"),
                    "policy_version": info.get("policy_version")}
        previous = read_step_summary(self.eval_dir, step)
        if not self.args.force and previous and (previous.get("settings"), previous.get("identity")) == (self.settings, identity):
            log.info("eval step %d (%s): already evaluated with these settings, reusing eval/step_%d", step, progress, step)
            return "reused"
        t0 = time.perf_counter()
        try:
            result = self.evaluate(ckpt)
        except Exception:
            if not (ckpt / INFO_FILE).exists():
                log.warning("step %d: checkpoint %s was removed while being evaluated; skipped", step, ckpt)
                return None
            raise
        elapsed = time.perf_counter() - t0
        write_step(self.eval_dir, step, result, {"settings": self.settings, "identity": identity, "eval_s": round(elapsed, 3)})
        log.info("eval step %d (%s): %s | %.1fs", step, progress, result_line(result), elapsed)
        return "evaluated"

    def evaluate(self, ckpt: Path):
        from rayrl.cluster import connect
        from rayrl.errors import CommandError, EvalSplitError
        from rayrl.evaluation.runner import EvalResult, evaluate_model

        if not self.owns_ray:  # connect at the first step to evaluate: reused steps need no cluster
            self.owns_ray = connect(self.cfg.ray)
        try:
            result = evaluate_model(self.cfg, str(ckpt), split="eval", samples=self.args.samples, seed=self.args.seed,
                                    temperature=self.args.temperature)
        except EvalSplitError as e:
            raise CommandError(str(e)) from None
        if self.env_name is not None:  # keep the run's name for the environment (e.g. "arithmetic#1")
            result = EvalResult({self.env_name: next(iter(result.envs.values()))})
        return result


def result_line(result) -> str:
    """"env mean [interval]" per environment; the Jeffreys interval only where it is the accuracy's."""
    from rayrl.evaluation.stats import summarize

    parts = []
    for name, env in result.envs.items():
        s = summarize(env.scores)
        band = f" [{s.success_ci_low:.3f}, {s.success_ci_high:.3f}]" if s.binary else ""
        parts.append(f"{name} {s.mean:.4f}{band}")
    return " | ".join(parts)


def matching_steps(eval_dir: Path, settings: dict) -> list[int]:
    """Steps whose eval/step_N was written with ``settings`` (also by earlier invocations)."""
    from rayrl.evaluation.report import read_step_summary

    steps = []
    for path in eval_dir.glob("step_*"):
        suffix = path.name.removeprefix("step_")
        if suffix.isdigit() and (summary := read_step_summary(eval_dir, int(suffix))) and summary.get("settings") == settings:
            steps.append(int(suffix))
    return sorted(steps)
