"""The driver: the RL loop. It schedules rollouts, computes advantages, drives the learner group,
publishes weights to the replicas, evaluates, checkpoints and logs. It holds no model weights.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rayrl.actors.fleet import (
    Submitted, actor_died, collect_rollouts, describe_dead_actor, kill_actors, start_board, start_replicas,
    start_rollout_workers, submit_rollouts, wait_ready, wait_until_gone,
)
from rayrl.actors.board import BOARD_NAME
from rayrl.actors.learner import LearnerGroup
from rayrl.actors.rollout import Task
from rayrl.actors.waiting import WaitAbandoned, wait_for
from rayrl.algorithms.grpo import (
    Rollout, build_train_samples, drop_nonfinite, drop_stale, drop_truncated, model_tokens, overlong_penalties,
    rewards_tied, sequence_kl, to_train_sample, with_value_targets,
)
from rayrl.cluster import check_shared_folder, connect
from rayrl.config import Config
from rayrl.data import ExampleSampler, allocate
from rayrl.engines import check_engine_installed
from rayrl.engines.base import SamplingParams
from rayrl.envs.registry import build_envs
from rayrl.errors import ActorError, CheckpointError, ConfigError, NumericsError
from rayrl.models.loading import resolve_base_model
from rayrl.models.source import cluster_nodes, model_source
from rayrl.models.warmstart import check_warm_start
from rayrl.plotting import plot_training_curves
from rayrl.sft import MODEL_DIR as SFT_MODEL_DIR
from rayrl.sft import run_sft
from rayrl.storage.checkpoints import CheckpointStore
from rayrl.stopping import StopSignals
from rayrl.storage.disk import best_effort
from rayrl.storage.run_folder import RunFolder
from rayrl.tracking import MetricsWriter, check_tracking_installed, format_step_line, read_metrics

log = logging.getLogger("rayrl")

EVAL_SEED_OFFSET = 1_000_003
RESAMPLE_SEED_OFFSET = 7_919  # dynamic sampling draws its extra examples from a stream of its own

# on_eval(step, metrics, checkpoint_dir or None): called after each evaluation (a Tune trial reports there)
EvalCallback = Callable[[int, dict[str, Any], str | None], None]


@dataclass
class PendingStep:
    """Rollouts submitted for a future step, and the data position before they were drawn."""

    step: int
    data_position: list[dict[str, int]]
    submitted: Submitted


@dataclass
class RunResult:
    output_dir: Path  # the local folder holding metrics.jsonl (the working copy when the output is a URI)
    final_step: int
    metrics: list[dict[str, Any]]
    output_uri: str = ""  # where the run's output lives: the folder, or the URI it is uploaded to
    stopped_by: str | None = None  # "SIGTERM" or "SIGINT" when a signal stopped the run before max_steps
    last_checkpoint: str | None = None  # the newest checkpoint this run saved (its URI), if any


def resolve_output_dir(cfg: Config) -> str:
    if cfg.output_dir:
        return cfg.output_dir
    if cfg.ckpt.resume_step is not None:
        raise CheckpointError("ckpt.resume_step is set: pass --output-dir RUN_DIR of the run to resume")
    return str(Path("runs", f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}").resolve())


class Trainer:
    """Builds the actors for one run and runs the loop from the start or a checkpoint."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.envs = build_envs(cfg)  # before anything is written: a bad [[env]] leaves no run folder
        check_engine_installed(cfg.inference.engine)
        check_tracking_installed(cfg)
        if cfg.warmstart.enabled:
            check_warm_start(self.envs[0], cfg.env[0].id)
        self.run_folder = RunFolder(resolve_output_dir(cfg), cfg.ckpt.dir)
        self.output_dir = self.run_folder.local
        self.store = CheckpointStore(self.run_folder.checkpoints, keep=cfg.ckpt.keep)
        self.resume_uri = self.store.resolve(cfg.ckpt.resume_step)
        if self.resume_uri is None and self.store.step_folders():
            raise CheckpointError(
                f"{self.store.uri} already holds checkpoints (steps {self.store.step_folders()}); pass "
                "--ckpt.resume_step -1 to continue that run, or choose another --output-dir"
            )
        if self.resume_uri is not None:
            self.resume_info = self.store.read_info(self.resume_uri)  # resolve() checked it file by file
            self.run_folder.fetch()
        self.run_folder.create()
        if self.resume_uri is None:
            self.run_folder.set_aside_stale_metrics()
        for name in self.store.remove_incomplete():
            log.warning("removed %s, the leftover of an interrupted checkpoint save", name)
        self.train_examples = [env.examples("train") for env in self.envs]
        self.eval_examples = [env.examples("eval")[: cfg.eval.num_examples] for env in self.envs]
        self.samplers = [ExampleSampler(len(ex), cfg.seed + i) for i, ex in enumerate(self.train_examples)]
        # dynamic sampling's extra examples: only drawn inside a step, so their position is exact at a checkpoint
        self.resamplers = [
            ExampleSampler(len(ex), cfg.seed + RESAMPLE_SEED_OFFSET + i) for i, ex in enumerate(self.train_examples)
        ]
        self.step, self.version = 0, 0
        self.pending: deque[PendingStep] = deque()
        self.weight_loads: list = []  # replicas' load_weights calls of the newest version
        self.namespace = self.run_folder.name
        self.stop = StopSignals()  # installed while run() runs
        self.skips = SkippedUpdates(cfg.learner.max_skipped_updates)
        self.restarts_seen: dict[str, int] = {}
        self.restarts_before = 0  # restarts counted by the actors of earlier recoveries
        self.recoveries: list[dict[str, Any]] = self.resume_info.get("recoveries", []) if self.resume_uri else []

    # ---- set-up -------------------------------------------------------------------------------
    def start_actors(self) -> None:
        """Start every actor on the connected cluster. On more than one node the checkpoint folder must be
        one every node sees, and the base model's files travel through the object store."""
        cfg = self.cfg
        multi_node = cluster_nodes() > 1
        if multi_node:
            check_shared_folder(self.store.uri, "ckpt.dir (or --output-dir)")
        base_path, base_info = resolve_base_model(cfg)
        self.base_info = base_info
        self.checkpoint_estimate = checkpoint_estimate(base_path, cfg)
        if "warmstart" in base_info:
            ws = base_info["warmstart"]
            log.info(
                "base model %s (%s): supervised warm-start on '%s', %d steps, greedy validation score %.3f",
                base_path, "cached" if base_info.get("cached") else "built now", ws["env"], ws["steps"],
                ws["validation_accuracy"],
            )
        base = model_source(base_path, ship=multi_node)
        policy = base
        if self.resume_uri:
            info = self.resume_info
            self.step, self.version = info["step"], info["policy_version"]
            for sampler, state in zip(self.samplers, info["data"]["samplers"]):
                sampler.load_state_dict(state)
            for sampler, state in zip(self.resamplers, info["data"].get("resamplers", [])):
                sampler.load_state_dict(state)
            restore_rng(info["rng"])
            policy = model_source(self.resume_uri)  # a URI, or a folder every node sees
            log.info("resuming from %s (step %d, policy version %d)", self.resume_uri, self.step, self.version)
        # kept while the actors live: a restarted actor is built again from these (their object-store refs)
        self.sources = (base, policy)
        # with LoRA the replicas hold the base weights and merge each published adapter into them
        self.board = start_board(self.namespace)
        self.replicas = start_replicas(cfg, base if cfg.lora.enabled else policy, self.version, self.namespace, board=True)
        self.learners = LearnerGroup(cfg, base, self.namespace, policy if self.resume_uri else None)
        self.workers = start_rollout_workers(cfg, base, self.replicas, self.namespace, board=True)  # the tokenizer only
        wait_ready(self.replicas, timeout_s=cfg.fault.ready_timeout_s)
        if cfg.lora.enabled:  # the learner's adapter (resumed, lora.adapter_path's, or fresh) before any rollout
            self.publish()

    def shutdown(self, graceful: bool = True) -> None:
        if hasattr(self, "learners"):
            self.learners.shutdown(graceful)
        kill_actors(getattr(self, "replicas", []) + getattr(self, "workers", []) + [getattr(self, "board", None)])

    def publish(self) -> None:
        """Publish the learners' weights as ``self.version``: put once, posted on the board (for replicas that
        restart later), loaded by every replica (``self.weight_loads``, awaited by :meth:`await_weights`)."""
        ref = self.learners.publish_weights(self.version)
        self.board.publish.remote(self.version, [ref])
        self.weight_loads = [r.load_weights.remote(ref) for r in self.replicas]

    def await_weights(self) -> None:
        """Wait until every replica holds the newest version; a frozen replica is restarted (it then loads the
        newest version from the board) and its load retried."""
        fault = self.cfg.fault
        wait_for(self.weight_loads, f"loading weights version {self.version}", fault.generate_timeout_s,
                 [f"replica-{i}" for i in range(len(self.replicas))], self.replicas, fault.max_restarts,
                 restart_grace_s=fault.ready_timeout_s)

    def restart_metrics(self) -> dict[str, int]:
        """``fault/restarts``: restarts of replicas and rollout workers in this run so far (a new one is logged
        once)."""
        import ray

        counts = ray.get(self.board.restart_counts.remote())
        for name, count in counts.items():
            if count > self.restarts_seen.get(name, 0):
                log.warning("%s was restarted (%d of fault.max_restarts %d); the run goes on", name, count,
                            self.cfg.fault.max_restarts)
        self.restarts_seen = counts
        return {"fault/restarts": self.restarts_before + sum(counts.values())}

    # ---- one step -----------------------------------------------------------------------------
    def next_tasks(self, prompts: int | None = None, samplers: list[ExampleSampler] | None = None) -> list[Task]:
        """The next ``prompts`` (default: a step's) examples, split over the environments by weight."""
        counts = allocate(prompts or self.cfg.prompts_per_step, [e.weight for e in self.cfg.env])
        tasks = []
        for env_index, count in enumerate(counts):
            for i in (samplers or self.samplers)[env_index].take(count):
                tasks.append(Task(env_index, self.train_examples[env_index][i], self.cfg.rollouts_per_example))
        return tasks

    def sampling(self) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(s.max_tokens, s.temperature, s.top_p, self.cfg.seed)

    def fill_pipeline(self) -> None:
        """Keep rollouts for the next k+1 steps in flight (k = algorithm.max_off_policy_steps).

        With k = 0 this submits only the next step, after the replicas hold the newest weights:
        synchronous on-policy training. With k >= 1 generation for steps n+1..n+k runs while the
        learner trains step n; replicas swap weights between calls, never inside one.
        """
        depth = self.cfg.algorithm.max_off_policy_steps + 1
        while len(self.pending) < depth:
            step = self.step + len(self.pending) + 1
            if step > self.cfg.max_steps:
                return
            # The bound on staleness must not rest on timing: a replica's load_weights waits for the
            # published bundle to resolve, and generate calls from rollout workers can overtake it.
            # Newly submitted generation therefore starts only once every replica holds the newest
            # version (the replicas are busy with already-submitted steps meanwhile, so overlap stays).
            self.await_weights()
            data_position = [sampler.state_dict() for sampler in self.samplers]
            self.pending.append(PendingStep(step, data_position, submit_rollouts(self.workers, self.next_tasks(), self.sampling(), step)))

    def data_position(self) -> list[dict[str, int]]:
        """Where the data order stands after the last trained step (in-flight batches not consumed)."""
        return self.pending[0].data_position if self.pending else [s.state_dict() for s in self.samplers]

    def train_step(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.fill_pipeline()
        pending = self.pending.popleft()
        try:  # a stop request abandons this wait: the step's examples are drawn again on resume
            groups, t_generate = collect_rollouts(pending.submitted, self.cfg.fault, lambda: self.stop.requested)
        except WaitAbandoned:
            self.pending.appendleft(pending)
            raise
        t_wait = time.perf_counter() - start
        a = self.cfg.algorithm
        groups, prompts = fitted_groups(groups)
        groups, staleness = drop_stale(groups, self.version, a.max_off_policy_steps)
        shaped, shaping = self.shaped_rewards(groups)
        groups, shaped, nonfinite = drop_nonfinite(groups, shaped)
        if nonfinite:
            shaping["numerics/nonfinite_reward_groups"] = nonfinite
            log.warning("step %d: %d group(s) with a NaN or infinite reward left out of the update (check the "
                        "reward function)", pending.step, nonfinite)
        if a.dynamic_sampling:
            groups, shaped, resampling = self.resample_tied_groups(groups, shaped, pending.step)
            shaping.update(resampling)
        ppo = a.name == "ppo"
        samples, stats = build_train_samples(groups, a.std_normalize, shaped, group_relative=not ppo)
        t0 = time.perf_counter()
        if ppo and samples:  # GAE from the value head's estimates of this batch (one forward on the learners)
            stats.update(with_value_targets(samples, self.learners.value_estimates(samples), np.concatenate(shaped), a))
        if a.mask_truncated_completions:
            samples, stats["masked_truncated"] = drop_truncated(samples)
        update: dict[str, Any] = {}
        if samples:  # every group tied: no gradient at all this step, the policy stays as it is
            update = self.learners.update(samples)
            self.skips.record(pending.step, bool(update.pop("skipped_update")))
            update["numerics/skipped_updates"] = self.skips.total
        updated = bool(samples) and not self.skips.in_a_row
        if updated:
            self.version += 1
        t_update = time.perf_counter() - t0
        t0 = time.perf_counter()
        if updated:
            self.publish()
            if self.cfg.algorithm.max_off_policy_steps == 0:
                self.await_weights()  # on-policy: the next step's generation must see these weights
        t_publish = time.perf_counter() - t0
        self.step = pending.step
        elapsed = time.perf_counter() - start
        metrics = {
            "step": self.step, "policy_version": self.version, **stats, **staleness, **shaping, **update, **prompts,
            "step_time_s": elapsed, "tokens_per_s": stats["tokens"] / elapsed,
            "time/wait_rollout_s": t_wait, "time/generate_s": t_generate,
            "time/update_s": t_update, "time/publish_s": t_publish, **self.restart_metrics(),
        }
        metrics.update(per_env_rewards(groups, self.cfg, prefix="reward/"))
        return metrics

    def shaped_rewards(self, groups: list[list[Rollout]]) -> tuple[list[np.ndarray], dict[str, float]]:
        """Each group's rewards as the advantages see them: the environment's, minus DAPO's overlong
        penalty (``algorithm.overlong_buffer``) and, with ``algorithm.kl_in = "reward"``, ``kl_coef`` times
        each sequence's KL to the reference. Also the penalties' statistics."""
        a, stats = self.cfg.algorithm, {}
        shaped = [np.array([r.reward for r in g], dtype=np.float64) for g in groups]
        flat = [r for g in groups for r in g]
        if not flat:
            return shaped, stats
        penalty = np.zeros(len(flat))
        if a.overlong_buffer:
            lengths = np.array([model_tokens(r) for r in flat])
            limits = np.array([self.cfg.sampling.max_tokens * r.turns for r in flat])
            over = overlong_penalties(lengths, limits, a.overlong_buffer, a.overlong_penalty)
            penalty += over
            stats["overlong_penalty_mean"] = float(-over.mean())
        if a.kl_coef and a.kl_in == "reward":
            samples = [to_train_sample(r, 0.0) for r in flat]
            ref = self.learners.reference_logprobs(samples)
            kl = np.array([sequence_kl(s.old_logprobs, lp, s.loss_mask, a.kl_estimator) for s, lp in zip(samples, ref)])
            penalty -= a.kl_coef * kl
            stats["kl_ref"] = float(kl.sum() / max(1, sum(s.loss_tokens() for s in samples)))
        offsets = np.cumsum([0] + [len(g) for g in groups])
        return [rewards + penalty[offsets[i] : offsets[i + 1]] for i, rewards in enumerate(shaped)], stats

    def resample_tied_groups(
        self, groups: list[list[Rollout]], shaped: list[np.ndarray], step: int
    ) -> tuple[list[list[Rollout]], list[np.ndarray], dict[str, float]]:
        """DAPO's dynamic sampling: while fewer groups than a step's prompts carry signal (rewards not all
        tied), roll out that many new examples (from a stream of their own) with the current policy, up to
        ``algorithm.max_resample_rounds`` rounds. Keeps the step's tied groups (they count in the reward
        statistics, not in the loss) and at most a step's worth of informative ones."""
        target = self.cfg.prompts_per_step
        informative = sum(not rewards_tied(r) for r in shaped)
        rounds = extra = 0
        while informative < target and rounds < self.cfg.algorithm.max_resample_rounds:
            rounds += 1
            tasks = self.next_tasks(target - informative, self.resamplers)
            new, _ = collect_rollouts(submit_rollouts(self.workers, tasks, self.sampling(), step, round_=rounds),
                                      self.cfg.fault)
            new, _ = fitted_groups(new)
            new, _ = drop_stale(new, self.version, self.cfg.algorithm.max_off_policy_steps)
            new_shaped, _ = self.shaped_rewards(new)
            new, new_shaped, _ = drop_nonfinite(new, new_shaped)
            groups, shaped = groups + new, shaped + new_shaped
            extra += len(new)
            informative += sum(not rewards_tied(r) for r in new_shaped)
        keep, kept_informative = [], 0
        for i, rewards in enumerate(shaped):
            if rewards_tied(rewards):
                keep.append(i)
            elif kept_informative < target:
                keep.append(i)
                kept_informative += 1
        return [groups[i] for i in keep], [shaped[i] for i in keep], {
            "dynamic_sampling/rounds": rounds, "dynamic_sampling/extra_groups": extra,
            "dynamic_sampling/informative_groups": kept_informative,
            "dynamic_sampling/discarded_groups": len(groups) - len(keep),
        }

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation of the newest policy: ``eval.num_examples`` per environment, one sample each.
        A stop request abandons it (WaitAbandoned)."""
        self.await_weights()  # async mode does not wait for them after publishing
        tasks = [Task(i, ex, 1) for i, examples in enumerate(self.eval_examples) for ex in examples]
        params = SamplingParams(self.cfg.sampling.max_tokens, self.cfg.eval.temperature, 1.0, self.cfg.seed + EVAL_SEED_OFFSET)
        groups, _ = collect_rollouts(submit_rollouts(self.workers, tasks, params, step=0), self.cfg.fault,
                                     lambda: self.stop.requested)
        groups, _ = fitted_groups(groups)
        rewards = [r.reward for g in groups for r in g]
        return {"eval_reward_mean": float(np.mean(rewards)), **per_env_rewards(groups, self.cfg, prefix="eval/")}

    def save_checkpoint(self) -> str:
        """The learners write the checkpoint's files, then the driver commits it (one writer); returns its URI.
        Refused up front when the disk lacks room for it plus ``ckpt.min_free_gb``; a disk that fills while
        writing is reported as such (DiskSpaceError), the newest complete checkpoint left as it was."""
        self.store.check_space(self.cfg.ckpt.min_free_gb, estimate_bytes=self.checkpoint_estimate)
        target = self.store.begin(self.step)
        try:
            files = self.learners.save(target)
            info = {
                "step": self.step, "policy_version": self.version, "config": self.cfg.model_dump(mode="json"),
                "rng": capture_rng(),
                "data": {"samplers": self.data_position(), "resamplers": [r.state_dict() for r in self.resamplers]},
                "base_model": self.base_info, "saved_at": datetime.now().isoformat(timespec="seconds"), "files": files,
                "recoveries": self.recoveries,
            }
            uri = self.store.commit(target, self.step, info)
        except Exception as e:
            if (full := self.store.no_space_error(e, self.step)) is not None:
                delete_quietly(target)  # give the partial files' space back now
                raise full from e
            raise
        self.run_folder.sync()
        log.info("saved checkpoint %s", uri)
        return uri

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, on_eval: EvalCallback | None = None) -> RunResult:
        """Train to ``max_steps``. ``on_eval(step, metrics, checkpoint_dir)`` is called after every
        evaluation, with the checkpoint saved at that step (None if none was): a Ray Tune trial reports there.
        SIGTERM or SIGINT stops it after the current step (or abandons its rollouts) with a final checkpoint:
        ``RunResult.stopped_by`` names the signal."""
        with self.stop:
            while True:
                try:
                    return self._run(on_eval)
                except ActorError as e:  # a call that timed out: say at which step
                    failure = ActorError(f"step {self.step + 1}: {e}")
                    what = str(e)
                except Exception as e:
                    if (dead := actor_died(e)) is None:
                        raise
                    failure = ActorError(self.dead_actor_message(dead))
                    what = f"{describe_dead_actor(dead, self.actor_names())} died"
                if not self.recover(what):
                    raise failure

    def recover(self, what: str) -> bool:
        """After an actor failure ``what``: rebuild every actor from the newest intact checkpoint and go on from
        there (its later steps are trained again, each listed once in metrics.jsonl), at most
        ``fault.max_recoveries`` times in a run; each is recorded in ``self.recoveries`` (and so in every later
        checkpoint's training_info.json). False when none is left to try or there is no checkpoint."""
        failed_at = self.step + 1
        if self.stop.requested or len(self.recoveries) >= self.cfg.fault.max_recoveries or not self.store.step_folders():
            return False
        names = [*self.actor_names(), BOARD_NAME]
        self.shutdown(graceful=False)  # a learner left waiting in a collective would not answer a shutdown
        wait_until_gone(names, self.namespace)
        self.resume_uri = self.store.resolve(-1)
        self.resume_info = self.store.read_info(self.resume_uri)
        self.pending.clear()
        self.restarts_before += sum(self.restarts_seen.values())  # the new board counts from zero
        self.weight_loads, self.restarts_seen = [], {}
        self.recoveries.append({
            "failed_at_step": failed_at, "resumed_from_step": self.resume_info["step"], "what": what,
            "at": datetime.now().isoformat(timespec="seconds"),
        })
        log.warning("step %d: %s; rebuilding every actor from checkpoint step_%d (recovery %d of fault.max_recoveries "
                    "%d)", failed_at, what, self.resume_info["step"], len(self.recoveries), self.cfg.fault.max_recoveries)
        self.start_actors()
        return True

    def actor_names(self) -> dict[str, object]:
        """Every actor of the run by name (a dead one's handle still names it)."""
        actors = {f"replica-{i}": a for i, a in enumerate(getattr(self, "replicas", []))}
        actors |= {f"rollout-{i}": a for i, a in enumerate(getattr(self, "workers", []))}
        return actors | {f"learner-{i}": a for i, a in enumerate(getattr(getattr(self, "learners", None), "actors", []) or [])}

    def dead_actor_message(self, error: BaseException) -> str:
        """Which actor died past its restarts, at which step, and where to resume from."""
        actors = self.actor_names()
        latest = self.store.latest_step() if self.store.steps() else None
        resume = (f"the newest checkpoint is step_{latest}: resume with --ckpt.resume_step -1" if latest is not None
                  else "no checkpoint was saved yet")
        return (f"step {self.step + 1}: {describe_dead_actor(error, actors)} died and was not restarted (replicas and "
                f"rollout workers get fault.max_restarts = {self.cfg.fault.max_restarts}, the run "
                f"fault.max_recoveries = {self.cfg.fault.max_recoveries}); {resume}")

    def _run(self, on_eval: EvalCallback | None) -> RunResult:
        from tqdm import tqdm

        cfg = self.cfg
        writer = MetricsWriter(cfg, self.output_dir, self.step if self.resume_uri else None, run_name=self.namespace)
        history: list[dict[str, Any]] = []
        if self.resume_uri is None and cfg.eval.interval and cfg.eval.at_start:
            t0 = time.perf_counter()
            first = {"step": 0, "policy_version": self.version, **self.evaluate(), "time/eval_s": time.perf_counter() - t0}
            log.info("Step 0 | Eval: %.4f (before any update)", first["eval_reward_mean"])
            writer.write(first)
            history.append(first)
            if on_eval is not None:
                on_eval(0, first, None)
        # disable=None: a bar on terminals only; logs (CI, ray job logs) get just the step lines.
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, desc="rl steps", unit="step",
            disable=None if cfg.log.progress else True, dynamic_ncols=True,
        )
        last_saved = self.step if self.resume_uri else None
        saved_uri = None
        try:
            while self.step < cfg.max_steps and not self.stop.requested:
                try:
                    metrics = self.train_step()
                except WaitAbandoned:
                    break
                last = self.step == cfg.max_steps
                if cfg.eval.interval and (self.step % cfg.eval.interval == 0 or last) and not self.stop.requested:
                    t0 = time.perf_counter()
                    try:
                        metrics.update(self.evaluate())
                        metrics["time/eval_s"] = time.perf_counter() - t0
                    except WaitAbandoned:
                        pass
                saved = None
                if (cfg.ckpt.interval and self.step % cfg.ckpt.interval == 0) or (last and cfg.ckpt.at_end):
                    saved = saved_uri = self.save_checkpoint()
                    last_saved = self.step
                writer.write(metrics, weight_loads=self.weight_loads)
                history.append(metrics)
                if on_eval is not None and "eval_reward_mean" in metrics:
                    on_eval(self.step, metrics, saved)
                bar.update(1)
                (log.info if bar.disable else bar.write)(format_step_line(metrics))
        finally:
            bar.close()
            writer.close()
            if writer.path.exists():  # plot whatever exists, also after a crash (a full disk: one warning)
                best_effort(lambda: plot_training_curves(read_metrics(writer.path), self.output_dir / "metrics.png",
                                                         self.namespace), "metrics.png")
            self.run_folder.sync()
        # a stopped run always gets its final checkpoint (if it trained past the last one): nothing is lost
        if self.step > 0 and last_saved != self.step and (cfg.ckpt.at_end or self.stop.requested):
            saved_uri = self.save_checkpoint()
        return RunResult(self.output_dir, self.step, history, self.run_folder.uri, self.stop.received, saved_uri)


def fitted_groups(groups: list[list[Rollout]]) -> tuple[list[list[Rollout]], dict[str, int]]:
    """The groups that were played (a task whose prompt was too long for seq_len has none) and, when any
    prompt was too long, ``prompts/skipped_too_long`` and ``prompts/truncated`` (groups)."""
    played = [g for g in groups if g]
    truncated = sum(any(r.prompt_truncated for r in g) for g in played)
    skipped = len(groups) - len(played)
    return played, ({"prompts/skipped_too_long": skipped, "prompts/truncated": truncated} if skipped or truncated else {})


class SkippedUpdates:
    """Counts updates the learners skipped (a loss or gradient that was not finite): ``limit`` in a row stop
    the run with a NumericsError naming the steps."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self.in_a_row = 0
        self.first_step: int | None = None  # of the current run of skips

    def record(self, step: int, skipped: bool) -> None:
        if not skipped:
            self.in_a_row, self.first_step = 0, None
            return
        self.total += 1
        self.in_a_row += 1
        self.first_step = step if self.first_step is None else self.first_step
        log.warning("step %d: the update's loss or gradient is not finite (NaN or inf); skipped, the policy stays "
                    "as it was (%d in a row, learner.max_skipped_updates %d)", step, self.in_a_row, self.limit)
        if self.in_a_row >= self.limit:
            raise NumericsError(
                f"steps {self.first_step}-{step}: {self.in_a_row} updates in a row had a loss or gradient that is not "
                f"finite (learner.max_skipped_updates = {self.limit}); no checkpoint holds them, the newest one is "
                "the policy before them. Lower optim.lr, look at the rewards' scale (reward_mean, reward_std in "
                "metrics.jsonl), or raise learner.max_skipped_updates; then resume with --ckpt.resume_step -1"
            )


def per_env_rewards(groups: list[list[Rollout]], cfg: Config, prefix: str) -> dict[str, float]:
    """Per environment: mean reward, mean of each named metric, and reward-function failures
    (``{prefix}{env}/reward_mean``, ``{prefix}{env}/<metric>``, ``{prefix}{env}/reward_errors``)."""
    by_env: dict[int, list[Rollout]] = {}
    for g in groups:
        for r in g:
            by_env.setdefault(r.env_index, []).append(r)
    names = cfg.env_names()
    out: dict[str, float] = {}
    for i, rollouts in sorted(by_env.items()):
        key = f"{prefix}{names[i]}/"
        out[key + "reward_mean"] = float(np.mean([r.reward for r in rollouts]))
        out[key + "samples"] = len(rollouts)
        metric_names = sorted({m for r in rollouts for m in r.metrics})
        for m in metric_names:
            values = [r.metrics[m] for r in rollouts if m in r.metrics]
            out[key + m] = float(np.mean(values))
        errors = sum(bool(r.reward_error) for r in rollouts)
        if errors or cfg.env[i].reward:
            out[key + "reward_errors"] = errors
        if any(r.turns > 1 for r in rollouts):
            out[key + "turns_mean"] = float(np.mean([r.turns for r in rollouts]))
    return out


def checkpoint_estimate(base_path: str, cfg: Config) -> int:
    """Bytes a first checkpoint is expected to take (the disk check before it; later ones use the newest's
    size): the weights and AdamW's two fp32 moments per parameter, a tenth of that with LoRA. 0 when the base
    model is not a local folder."""
    folder = Path(base_path)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    per_weight_byte = 1 + 2 * (4 / 2 if cfg.model.dtype in ("bfloat16", "float16") else 1)
    return int(weights * per_weight_byte * (0.1 if cfg.lora.enabled else 1))


def delete_quietly(target: str) -> None:
    """Remove a partial checkpoint's folder or URI, ignoring what cannot be removed."""
    from rayrl.storage.location import delete_tree, open_location

    try:
        delete_tree(open_location(target))
    except Exception:  # noqa: BLE001 - best effort: the next start removes leftovers anyway
        log.warning("could not remove the partial checkpoint %s; the next start removes it", target)


def capture_rng() -> dict[str, Any]:
    """Driver RNG states (JSON-safe). The loop's own randomness is seeded per step; these are for user code."""
    state = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": {"key": state[1].tolist(), "pos": int(state[2])},
    }


def restore_rng(rng: dict[str, Any]) -> None:
    import ast

    random.setstate(ast.literal_eval(rng["python"]))
    np.random.set_state(("MT19937", np.array(rng["numpy"]["key"], dtype=np.uint32), rng["numpy"]["pos"], 0, 0.0))


def check_capacity(cfg: Config, local: bool) -> None:
    """Stop before anything starts when the cluster's totals cannot hold the run's actors (a GPU run on a
    machine without GPUs would otherwise wait fault.ready_timeout_s for a placement that never comes). A cluster
    joined by address may grow (an autoscaler): there it is a warning, and the run waits."""
    import ray

    from rayrl.actors.fleet import capacity_shortfall, fleet_requests, keep_off_driver_node

    problem = capacity_shortfall(fleet_requests(cfg, keep_off_driver_node()), ray.cluster_resources())
    if problem is None:
        return
    settings = ("inference.replicas, inference.gpus_per_replica, inference.cpus_per_replica, learner.workers, "
                "learner.gpus_per_worker, learner.cpus_per_worker, rollout.cpus_per_worker")
    if local:
        raise ConfigError(f"{problem}: a local Ray cannot grow. Lower {settings}, or join a cluster that has "
                          "them (ray.address or RAY_ADDRESS; rayrl plan EXPERIMENT --cluster cluster.yaml checks one)")
    log.warning("%s: the run waits (up to fault.ready_timeout_s = %g s) until the cluster has them, e.g. from "
                "its autoscaler", problem, cfg.fault.ready_timeout_s)


def train(cfg: Config, on_eval: EvalCallback | None = None) -> RunResult:
    """Run ``cfg`` end to end on the connected (or a new local) Ray cluster (``on_eval``: see ``Trainer.run``):
    the ``[sft]`` stage first when ``sft.enabled``, RL, and the export when ``export.at_end``."""
    import ray

    sft_cfg = None
    if cfg.sft.enabled:  # RL starts from the stage's model: <output_dir>/sft/model
        sft_cfg, cfg = sft_stage_configs(cfg)
    trainer = Trainer(cfg)  # validates the output folder and resume point before any actor starts
    # Ray Train's controller watchdog (the SFT stage) asks the dashboard's state API
    owns_ray = connect(cfg.ray.model_copy(update={"dashboard": True}) if sft_cfg else cfg.ray)
    try:
        if sft_cfg is not None:
            run_sft_stage(sft_cfg)
        check_capacity(cfg, local=owns_ray and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")))
        trainer.start_actors()
        result = trainer.run(on_eval)
    finally:
        trainer.shutdown()
        if owns_ray:
            ray.shutdown()
    if cfg.export.at_end and result.stopped_by is None:
        from rayrl.models.export import export_model

        exported = export_model(result.output_uri, Path(result.output_dir) / "export", dtype=cfg.export.dtype, force=True)
        log.info("exported step %s as %s to %s", exported.step, exported.dtype, exported.out_dir)
    return result


def sft_stage_configs(cfg: Config) -> tuple[Config, Config]:
    """The SFT stage's config (its folder ``<output_dir>/sft``) and the RL config that starts from its model."""
    out = Path(resolve_output_dir(cfg))
    if "://" in str(out):
        raise CheckpointError("sft.enabled needs a local --output-dir (run rayrl sft first, then train from its model)")
    stage = out / "sft"
    sft_cfg = cfg.model_copy(update={"output_dir": str(stage)})
    rl_cfg = cfg.model_copy(update={
        "output_dir": str(out), "model": cfg.model.model_copy(update={"name": str(stage / SFT_MODEL_DIR)}),
        "warmstart": cfg.warmstart.model_copy(update={"enabled": False}),
    })
    return sft_cfg, rl_cfg


def run_sft_stage(sft_cfg: Config) -> None:
    """Fine-tune into ``sft_cfg.output_dir`` unless a finished stage is there (a resumed run); a stage that
    stopped before writing its model is removed and run again."""
    import shutil

    stage = Path(sft_cfg.output_dir)
    if (stage / SFT_MODEL_DIR / "config.json").exists():
        log.info("SFT stage: reusing %s", stage / SFT_MODEL_DIR)
        return
    if stage.exists():
        log.warning("SFT stage: %s holds an unfinished stage; running it again", stage)
        shutil.rmtree(stage)
    result = run_sft(sft_cfg)
    log.info("SFT stage: %d steps, validation loss %s; RL starts from %s", result.steps,
             f"{result.val_loss:.4f}" if result.val_loss is not None else "-", result.model_dir)
