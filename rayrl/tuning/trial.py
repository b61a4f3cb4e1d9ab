"""One Tune trial: a full rayrl run from the champion, reporting to Tune at each evaluation.

The trial function runs in the first bundle of the trial's placement group (reserved by
:func:`trial_resources`). Tune schedules it with ``placement_group_capture_child_tasks``, so the
replicas and rollout workers it starts land in the same group, and the LearnerGroup, seeing that it
already runs inside a placement group, takes bundles of it instead of reserving its own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrl.tuning.sweep import SweepConfig, trial_bundles

log = logging.getLogger(__name__)


@dataclass
class TrialSetup:
    """What every trial of one Tune experiment shares (passed with ``tune.with_parameters``)."""

    sweep: SweepConfig
    champion: str  # model or checkpoint folder every trial starts from


def trial_resources(setup: TrialSetup):
    """Per-trial resources: a callable of the trial's params, since params may change the actor counts."""
    from ray import tune

    def resources(params: dict[str, Any]) -> tune.PlacementGroupFactory:
        cfg = setup.sweep.config(params)
        return tune.PlacementGroupFactory(trial_bundles(cfg, setup.sweep.trial_cpus), strategy="PACK")

    return resources


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune function: train ``params`` from the champion, ``tune.report`` metrics + checkpoint per eval."""
    import ray
    from ray import tune

    from rayrl.driver import train

    context = tune.get_context()
    # The run folder's name is the Ray namespace of its actors: unique per trial (trial ids are).
    output_dir = Path(context.get_trial_dir()) / f"rayrl-{context.get_trial_id()}"
    cfg = setup.sweep.trial_config(params, setup.champion, output_dir)
    group = ray.util.get_current_placement_group()
    placement: dict[str, int] = {}

    def report(step: int, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if not placement:  # once, when every actor is up: did they all land in the trial's reservation?
            placement.update(check_placement(output_dir.name, group.id.hex() if group else None))
        values = {k: v for k, v in metrics.items() if _is_number(v)}
        values.update(step=step, **placement)
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(values, checkpoint=checkpoint)

    train(cfg, on_eval=report)


def check_placement(namespace: str, group_id: str | None) -> dict[str, int]:
    """Count the run's named actors inside and outside the trial's placement group (warn if any is outside)."""
    import ray

    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace)
    handles = [ray.get_actor(name, namespace=namespace) for name in names]
    groups = ray.get([h.__ray_call__.remote(_placement_group_id) for h in handles])
    outside = [name for name, g in zip(names, groups) if g is None or g != group_id]
    if outside:
        log.warning("actors %s run outside the trial's placement group %s: the trial's reservation does not cover "
                    "them", outside, group_id)
    return {"placement/actors_in_trial_group": len(names) - len(outside), "placement/actors_outside": len(outside)}


def _placement_group_id(actor: Any) -> str | None:
    import ray

    return ray.get_runtime_context().get_placement_group_id()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
