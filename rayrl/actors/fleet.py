"""Starting the generation fleet: the InferenceActors ("replicas") and the RolloutWorkers over them.

Shared by training (``Trainer.start_actors``) and evaluation (``rayrl.evaluation.runner``). Actors are
named ``replica-i`` and ``rollout-i`` inside ``namespace``, so two fleets (a training and an
evaluation of its checkpoints) never collide as long as their namespaces differ.
"""

from __future__ import annotations

import logging

from rayrl.config import Config
from rayrl.engines.base import EngineSpec
from rayrl.models.source import ModelSource

log = logging.getLogger(__name__)


def engine_spec(cfg: Config) -> EngineSpec:
    """The engine each replica starts (its model folder is filled in on the replica's node)."""
    ic = cfg.inference
    return EngineSpec(
        engine=ic.engine, model_path="", dtype=cfg.model.dtype, threads=ic.threads, max_batch_size=ic.max_batch_size,
        max_model_len=cfg.seq_len, seed=cfg.seed, kv_cache_mib=ic.kv_cache_mib,
    )


def start_replicas(cfg: Config, model: ModelSource | str, version: int, namespace: str) -> list:
    """``inference.replicas`` InferenceActors serving ``model`` as policy version ``version``."""
    import ray

    from rayrl.actors.inference import InferenceActor

    ic = cfg.inference
    replica_cls = ray.remote(InferenceActor)
    return [
        replica_cls.options(
            name=f"replica-{i}", namespace=namespace, num_cpus=ic.cpus_per_replica, num_gpus=ic.gpus_per_replica
        ).remote(model, engine_spec(cfg), version)
        for i in range(ic.replicas)
    ]


def start_rollout_workers(cfg: Config, model: ModelSource | str, replicas: list, namespace: str) -> list:
    """``rollout.workers`` RolloutWorkers over ``replicas`` (tokenizer from ``model``)."""
    import ray

    from rayrl.actors.rollout import RolloutWorker

    rc = cfg.rollout
    worker_cls = ray.remote(RolloutWorker)
    return [
        worker_cls.options(name=f"rollout-{i}", namespace=namespace, num_cpus=rc.cpus_per_worker).remote(
            cfg.env, model, replicas, i, cfg.seq_len
        )
        for i in range(rc.workers)
    ]


def step_seed(seed: int, step: int, worker: int, round_: int = 0) -> int:
    """Sampling seed of one worker's requests at one step (and dynamic-sampling round): fixed by (seed,
    step, round), so resumes repeat it."""
    return (seed * 1_000_003 + step * 7_919 + worker * 131 + round_ * 104_729) % (2**62)


def submit_rollouts(workers: list, tasks: list, params, step: int, round_: int = 0) -> list:
    """Spread ``tasks`` over ``workers`` in contiguous chunks without waiting; returns the object refs.
    Worker i samples with seed ``step_seed(params.seed, step, i, round_)``."""
    from dataclasses import replace

    from rayrl.actors.rollout import split_contiguous

    chunks = split_contiguous(tasks, len(workers))
    return [
        w.rollout.remote(chunk, replace(params, seed=step_seed(params.seed, step, i, round_)))
        for i, (w, chunk) in enumerate(zip(workers, chunks)) if chunk
    ]


def collect_rollouts(refs: list) -> tuple[list[list], float]:
    """Wait for submitted rollouts; returns each task's group of rollouts in task order, and the
    generation time (the slowest worker's: workers generate in parallel)."""
    import ray

    groups: list[list] = []
    batches = ray.get(refs)
    for batch in batches:
        by_group: dict[int, list] = {}
        for r in batch.rollouts:
            by_group.setdefault(r.group, []).append(r)
        groups.extend(by_group[g] for g in sorted(by_group))
    return groups, max((b.generate_s for b in batches), default=0.0)


def wait_ready(replicas: list, warn_after_s: float = 60.0) -> None:
    """Block until every replica has loaded its model. Logs a warning (once) when that takes longer
    than ``warn_after_s``: usually the cluster lacks the CPUs/GPUs the replicas reserve."""
    import ray

    refs = [r.get_version.remote() for r in replicas]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=warn_after_s)
    if pending:
        log.warning(
            "%d of %d replicas not ready after %.0fs; still waiting. Is the cluster short of the CPUs/GPUs "
            "each replica reserves (inference.cpus_per_replica, inference.gpus_per_replica)?",
            len(pending), len(refs), warn_after_s,
        )
    ray.get(refs)


def kill_actors(actors: list) -> None:
    """Kill actors, ignoring ones already gone."""
    import ray

    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already dead or never started: nothing to clean up
            pass
