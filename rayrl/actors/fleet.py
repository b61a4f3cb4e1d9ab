"""Starting the generation fleet: the InferenceActors ("replicas") and the RolloutWorkers over them.

Shared by training (``Trainer.start_actors``) and evaluation (``rayrl.evaluation.runner``). Actors are
named ``replica-i`` and ``rollout-i`` inside ``namespace``, so two fleets (a training and an
evaluation of its checkpoints) never collide as long as their namespaces differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from rayrl.actors.waiting import wait_for
from rayrl.config import Config
from rayrl.config.models import FaultConfig
from rayrl.engines.base import EngineSpec
from rayrl.errors import ActorError
from rayrl.models.source import ModelSource

log = logging.getLogger(__name__)


# ---- what the run's actors reserve: pure functions of the config, used by start_* below and `rayrl plan` ----
# On a cluster whose driver node offers no CPUs to actors (a head declared with CPU: 0), every actor reserves at
# least this many: an actor reserving nothing (the policy board, rollout workers with cpus_per_worker = 0) would
# otherwise be placed by Ray beside the driver. Elsewhere (a laptop, a head that runs actors) nothing changes,
# so a run that fits a machine exactly still fits.
MIN_ACTOR_CPUS = 0.01
BOARD_CPUS = 0.0  # the PolicyBoard only holds object references
LEARNER_STRATEGY = "PACK"  # the learners' placement group: as few nodes as possible (NCCL stays on a node)


@dataclass(frozen=True)
class ActorRequest:
    """``count`` actors of one kind, each reserving ``cpus`` CPUs and ``gpus`` GPUs; with ``bundles``, in one
    placement group of those bundles (one an actor) placed with ``strategy``."""

    kind: str
    count: int
    cpus: float
    gpus: float
    bundles: tuple[dict[str, float], ...] = ()
    strategy: str | None = None


def reserved_cpus(cpus: float, off_driver_node: bool) -> float:
    """The CPUs an actor reserves for a configured ``cpus``: at least :data:`MIN_ACTOR_CPUS` when actors must
    keep off the driver's node (:func:`keep_off_driver_node`)."""
    return max(cpus, MIN_ACTOR_CPUS) if off_driver_node else cpus


def keep_off_driver_node() -> bool:
    """Whether this (driver) process's Ray node offers no CPUs to actors: a head declared with ``CPU: 0``."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return any(n["NodeID"] == here and not n["Resources"].get("CPU") for n in ray.nodes() if n.get("Alive"))


def board_request(cfg: Config, off_driver_node: bool = False) -> ActorRequest:
    return ActorRequest("policy board", 1, reserved_cpus(BOARD_CPUS, off_driver_node), 0.0)


def replica_request(cfg: Config, off_driver_node: bool = False) -> ActorRequest:
    ic = cfg.inference
    cpus = reserved_cpus(ic.cpus_per_replica, off_driver_node)
    return ActorRequest("inference replica", ic.replicas, cpus, ic.gpus_per_replica)


def learner_bundle(cfg: Config, off_driver_node: bool = False) -> dict[str, float]:
    """One learner's bundle in the learners' placement group (CPU always named, GPU only when reserved)."""
    lc = cfg.learner
    cpus = reserved_cpus(lc.cpus_per_worker, off_driver_node)
    return {"CPU": cpus, **({"GPU": lc.gpus_per_worker} if lc.gpus_per_worker else {})}


def learner_request(cfg: Config, off_driver_node: bool = False) -> ActorRequest | None:
    """The learner actors (``LearnerGroup``: one placement group of ``learner.workers`` bundles, PACK), or None
    with ``learner.workers = 0`` (one learner inside the driver process)."""
    lc = cfg.learner
    if lc.workers == 0:
        return None
    bundle = learner_bundle(cfg, off_driver_node)
    return ActorRequest("learner", lc.workers, bundle["CPU"], lc.gpus_per_worker, (bundle,) * lc.workers,
                        LEARNER_STRATEGY)


def rollout_request(cfg: Config, off_driver_node: bool = False) -> ActorRequest:
    rc = cfg.rollout
    return ActorRequest("rollout worker", rc.workers, reserved_cpus(rc.cpus_per_worker, off_driver_node), 0.0)


def fleet_requests(cfg: Config, off_driver_node: bool = False) -> list[ActorRequest]:
    """Every actor a training run starts, in the order ``Trainer.start_actors`` starts them."""
    off = off_driver_node
    learners = learner_request(cfg, off)
    return [board_request(cfg, off), replica_request(cfg, off), *([learners] if learners else []),
            rollout_request(cfg, off)]


def capacity_shortfall(requests: list[ActorRequest], resources: dict[str, float]) -> str | None:
    """What a cluster of ``resources`` (``ray.cluster_resources()``: every node's total) lacks to hold every
    actor of ``requests`` at once, naming who reserves what; None when it has enough in total (whether
    each actor finds a node is Ray's placement: ``rayrl plan`` tells it for a cluster file)."""
    problems = []
    for unit, of in (("GPU", lambda r: r.gpus), ("CPU", lambda r: r.cpus)):
        need = sum(of(r) * r.count for r in requests)
        have = resources.get(unit, 0.0)
        if need > have + 1e-9:
            who = " + ".join(f"{r.count} {r.kind}{'s' if r.count > 1 else ''} x {of(r):g}"
                             for r in requests if of(r))  # fmt: skip
            problems.append(f"{need:g} {unit}s ({who}) but the cluster has {have:g}")
        if unit == "GPU" and problems:
            break  # GPUs are the point; the CPU count follows from the same settings
    return "; ".join(f"the run reserves {p}" for p in problems) or None


def engine_spec(cfg: Config) -> EngineSpec:
    """The engine each replica starts (its model folder is filled in on the replica's node)."""
    ic = cfg.inference
    return EngineSpec(
        engine=ic.engine, model_path="", dtype=cfg.model.dtype, threads=ic.threads, max_batch_size=ic.max_batch_size,
        max_model_len=cfg.seq_len, seed=cfg.seed, kv_cache_mib=ic.kv_cache_mib,
    )


def start_board(namespace: str):
    """The run's PolicyBoard actor (newest weights and restart counts for actors that restart), named
    BOARD_NAME in ``namespace``: actors find it by name (a handle among an actor's constructor arguments
    makes Ray warn that a restart could fail)."""
    import ray

    from rayrl.actors.board import BOARD_NAME, PolicyBoard

    cpus = reserved_cpus(BOARD_CPUS, keep_off_driver_node())
    return ray.remote(PolicyBoard).options(name=BOARD_NAME, namespace=namespace, num_cpus=cpus).remote()


def start_replicas(cfg: Config, model: ModelSource | str, version: int, namespace: str, board: bool = False) -> list:
    """``inference.replicas`` InferenceActors serving ``model`` as policy version ``version``, each restarted
    by Ray up to ``fault.max_restarts`` times (in-flight calls retried; with ``board``, the newest weights
    from the namespace's PolicyBoard)."""
    import ray

    from rayrl.actors.inference import InferenceActor

    want, restarts = replica_request(cfg, keep_off_driver_node()), cfg.fault.max_restarts
    replica_cls = ray.remote(InferenceActor)
    return [
        replica_cls.options(
            name=f"replica-{i}", namespace=namespace, num_cpus=want.cpus, num_gpus=want.gpus,
            max_restarts=restarts, max_task_retries=restarts,
        ).remote(model, engine_spec(cfg), version, namespace if board else None, f"replica-{i}")
        for i in range(want.count)
    ]


def start_rollout_workers(cfg: Config, model: ModelSource | str, replicas: list, namespace: str,
                          board: bool = False) -> list:  # fmt: skip
    """``rollout.workers`` RolloutWorkers over the replicas ``replica-i`` (tokenizer from ``model``), each
    restarted by Ray up to ``fault.max_restarts`` times (its in-flight request retried)."""
    import ray

    from rayrl.actors.rollout import RolloutWorker

    rc, want, restarts = cfg.rollout, rollout_request(cfg, keep_off_driver_node()), cfg.fault.max_restarts
    worker_cls = ray.remote(RolloutWorker)
    return [
        worker_cls.options(name=f"rollout-{i}", namespace=namespace, num_cpus=want.cpus,
                           max_restarts=restarts, max_task_retries=restarts).remote(
            cfg.env, model, [f"replica-{r}" for r in range(len(replicas))], i, cfg.seq_len, cfg.fault, namespace,
            board, rc.long_prompts
        )
        for i in range(want.count)
    ]


def step_seed(seed: int, step: int, worker: int, round_: int = 0) -> int:
    """Sampling seed of one worker's requests at one step (and dynamic-sampling round): fixed by (seed,
    step, round), so resumes repeat it."""
    return (seed * 1_000_003 + step * 7_919 + worker * 131 + round_ * 104_729) % (2**62)


@dataclass
class Submitted:
    """Rollout requests in flight: ``refs[i]`` went to ``workers[i]`` (named ``names[i]``)."""

    step: int
    refs: list
    workers: list
    names: list[str]


def submit_rollouts(workers: list, tasks: list, params, step: int, round_: int = 0) -> Submitted:
    """Spread ``tasks`` over ``workers`` in contiguous chunks without waiting.
    Worker i samples with seed ``step_seed(params.seed, step, i, round_)``."""
    from dataclasses import replace

    from rayrl.actors.rollout import split_contiguous

    chunks = split_contiguous(tasks, len(workers))
    used = [(i, w, chunk) for i, (w, chunk) in enumerate(zip(workers, chunks)) if chunk]
    refs = [w.rollout.remote(chunk, replace(params, seed=step_seed(params.seed, step, i, round_))) for i, w, chunk in used]
    return Submitted(step, refs, [w for _, w, _ in used], [f"rollout-{i}" for i, _, _ in used])


def collect_rollouts(submitted: Submitted, fault: FaultConfig | None = None,
                     should_stop: Callable[[], bool] | None = None) -> tuple[list[list], float]:  # fmt: skip
    """Wait for submitted rollouts; returns each task's group of rollouts in task order (an empty one for a
    task whose prompt was too long, with ``rollout.long_prompts = "skip"``), and the
    generation time (the slowest worker's: workers generate in parallel). A worker that does not answer
    within ``fault.rollout_timeout_s`` is restarted and its request retried (``wait_for``)."""
    fault = fault or FaultConfig()
    groups: list[list] = []
    batches = wait_for(submitted.refs, f"rollouts of step {submitted.step}", fault.rollout_timeout_s,
                       submitted.names, submitted.workers, fault.max_restarts, should_stop, fault.ready_timeout_s)
    for batch in batches:
        by_group: dict[int, list] = {}
        for r in batch.rollouts:
            by_group.setdefault(r.group, []).append(r)
        groups.extend(by_group.get(g, []) for g in range(batch.tasks))  # [] for a task skipped (long prompt)
    return groups, max((b.generate_s for b in batches), default=0.0)


def wait_ready(replicas: list, warn_after_s: float = 60.0, timeout_s: float | None = None) -> None:
    """Block until every replica has loaded its model. Logs a warning (once) when that takes longer
    than ``warn_after_s``: usually the cluster lacks the CPUs/GPUs the replicas reserve. ActorError after
    ``timeout_s`` (``fault.ready_timeout_s``)."""
    import ray

    refs = [r.get_version.remote() for r in replicas]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=warn_after_s)
    if pending:
        log.warning(
            "%d of %d replicas not ready after %.0fs; still waiting. Is the cluster short of the CPUs/GPUs "
            "each replica reserves (inference.cpus_per_replica, inference.gpus_per_replica)?",
            len(pending), len(refs), warn_after_s,
        )
    left = None if timeout_s is None else max(timeout_s - warn_after_s, 1.0)
    wait_for(refs, "starting the replicas (fault.ready_timeout_s; are the CPUs/GPUs they reserve free?)", left,
             [f"replica-{i}" for i in range(len(replicas))])


def wait_until_gone(names: list[str], namespace: str, timeout_s: float = 60.0) -> None:
    """Wait until no actor of ``names`` is alive in ``namespace`` (``ray.kill`` returns before the actor is
    gone, and a name is free again only then)."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    for name in names:
        while True:
            try:
                ray.get_actor(name, namespace=namespace)
            except ValueError:
                break
            if time.monotonic() > deadline:
                raise ActorError(f"actor {name} still alive {timeout_s:g} s after it was killed")
            time.sleep(0.05)


def kill_actors(actors: list) -> None:
    """Kill actors, ignoring ones already gone."""
    import ray

    for actor in actors:
        if actor is None:
            continue
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already dead or never started: nothing to clean up
            pass


def actor_died(error: BaseException) -> BaseException | None:
    """The RayActorError behind ``error`` (itself, or the cause of a task that called a dead actor), else None."""
    from ray.exceptions import RayActorError

    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, RayActorError):
            return error
        error, seen = getattr(error, "cause", None) or error.__cause__, seen + 1
    return None


def describe_dead_actor(error: BaseException, actors: dict[str, object]) -> str:
    """"<name> (<reason>)" for a RayActorError: the name of the handle in ``actors`` (name -> handle) with the
    error's actor id, else its class; the reason is the first line of Ray's explanation of the death."""
    actor_id = getattr(error, "actor_id", None)
    name = next((n for n, h in actors.items() if h is not None and actor_id and h._actor_id.hex() == actor_id), None)
    text = str(error)
    if name is None:
        name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if "class_name:" in line), "an actor")
    reason = next((line.strip() for line in text.splitlines() if line.strip().startswith("The actor is dead")),
                  text.strip().splitlines()[0] if text.strip() else "no reason given")
    return f"{name} ({reason})"
