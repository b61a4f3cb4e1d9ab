"""cluster.yaml through Ray's own cluster-config preparation, as ``ray up`` does it, offline.

``ray up`` (``ray.autoscaler._private.commands.create_or_update_cluster``) loads the YAML and calls
``_bootstrap_config``: ``prepare_config`` (the AWS defaults filled in, setup commands merged, the docker
section checked, each node type's min/max workers), then the provider's
``fillout_available_node_types_resources`` (asks the EC2 API for the instance types' CPUs, memory and GPUs;
``ray up`` only warns when that fails, and declared resources win over what it finds), then ``validate_config``
(Ray's JSON schema and its own checks), then the provider's ``bootstrap_config`` (IAM, key pairs, subnets: AWS).
The steps that need no network are run here, unmocked; the EC2 steps are the two left out. Then Ray's
autoscaler bin-packing (``get_nodes_for``) is given the qwen3 experiment's demands, as ``rayrl plan`` computes
them: it launches the one 8-GPU worker ``rayrl plan`` says the run needs, and no second one.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared():
    from ray.autoscaler._private.providers import _NODE_PROVIDERS
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert _NODE_PROVIDERS[config["provider"]["type"]](config["provider"]).__name__ == "AWSNodeProvider"
    config = prepare_config(config)
    validate_config(config)  # raises on a schema violation (e.g. resources that are not whole numbers)
    return config


def test_node_types_declare_their_resources(prepared):
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head" and set(types) == {"head", "gpu_worker"}
    worker = types["gpu_worker"]
    assert worker["resources"] == {"CPU": 96, "GPU": 8}
    assert worker["node_config"]["InstanceType"] == "p4de.24xlarge"
    assert (worker["min_workers"], worker["max_workers"], prepared["max_workers"]) == (1, 1, 1)
    # no CPU on the head: every actor lands on the worker; prepare_config gives the head max_workers 0
    assert types["head"]["resources"] == {"CPU": 0, "GPU": 0}
    assert (types["head"]["min_workers"], types["head"]["max_workers"]) == (0, 0)


def test_setup_auth_and_docker_survive_preparation(prepared):
    install = "pip install -q -c /home/ray/rayrl/constraints-gpu.txt -e '/home/ray/rayrl[gpu]'"
    # merge_setup_commands: the shared setup commands run first on the head and on every worker
    assert prepared["head_setup_commands"][0] == install and prepared["worker_setup_commands"][0] == install
    assert prepared["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    assert prepared["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert sum("RAY_AUTH_MODE=token ray start" in c for c in starts) == 2
    assert (ROOT / "constraints-gpu.txt").exists()


def _autoscaler_launches(prepared, overrides: list[str]):
    """Worker nodes Ray's autoscaler would launch for the qwen3 run's demands, and what it could not place:
    the learners' placement group through Ray's own conversion of placement groups into demands, the rest
    packed on the head first, as the autoscaler packs onto existing nodes."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary,
    )
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        get_bin_pack_residual,
        get_nodes_for,
        placement_groups_to_resource_demands,
    )
    from ray.core.generated.common_pb2 import Bundle, PlacementStrategy
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    from rayrl.actors.fleet import fleet_requests
    from rayrl.config.loading import load_config

    cfg = load_config(ROOT / "experiments" / "qwen3_0.6b.toml", overrides)
    wanted, groups = [], []
    for r in fleet_requests(cfg):
        if r.bundles:
            groups.append(PlacementGroupTableData(
                strategy=PlacementStrategy.Value(r.strategy), bundles=[Bundle(unit_resources=b) for b in r.bundles]))
        else:
            wanted += [{k: v for k, v in (("CPU", r.cpus), ("GPU", r.gpus)) if v}] * r.count
    flattened, strict_spread = placement_groups_to_resource_demands(groups)
    assert not strict_spread
    types = prepared["available_node_types"]
    residual, _ = get_bin_pack_residual([types["head"]["resources"]], wanted + flattened)
    scorer = functools.partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    return get_nodes_for(types, {"head": 1}, "head", prepared["max_workers"], residual, scorer)


def test_rays_autoscaler_launches_one_gpu_worker_for_the_qwen3_run(prepared):
    launch, unplaced = _autoscaler_launches(prepared, [])
    assert dict(launch) == {"gpu_worker": 1} and unplaced == []


def test_rays_autoscaler_cannot_place_ten_gpus_on_the_cluster(prepared):
    # 8 replicas + 2 learners: rayrl plan says it needs a second worker the cluster does not allow
    launch, unplaced = _autoscaler_launches(prepared, ["--inference.replicas", "8"])
    assert dict(launch) == {"gpu_worker": 1}
    assert sorted(unplaced, key=str) == [{"CPU": 8.0, "GPU": 1.0}] * 2
