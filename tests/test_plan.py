"""``rayrl plan``: the resources a run reserves and where they fit, printed without starting Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from rayrl.actors.fleet import ActorRequest, fleet_requests
from rayrl.cli import main
from rayrl.config.loading import load_config

ROOT = Path(__file__).resolve().parents[1]
QWEN = str(ROOT / "experiments" / "qwen3_0.6b.toml")
CLUSTER = str(ROOT / "cluster.yaml")


def plan(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(out: str) -> dict[str, list[str]]:
    """The actor table: kind -> [count, CPU each, GPU each, CPU total, GPU total]."""
    table = {}
    for line in out.splitlines():
        m = re.match(r"^  (policy board|inference replica|learner|rollout worker|total)\s+(.*)$", line)
        if m:
            table[m.group(1)] = m.group(2).split()
    return table


def test_qwen3_requests_come_from_the_fleet_functions():
    cfg = load_config(QWEN)
    assert (cfg.model.name, cfg.model.dtype, cfg.inference.engine) == ("Qwen/Qwen3-0.6B", "bfloat16", "vllm")
    assert (cfg.batch_size, cfg.rollouts_per_example, cfg.seq_len, cfg.max_steps, cfg.optim.lr) == (128, 16, 2048, 1000, 3e-6)
    assert not cfg.warmstart.enabled
    assert fleet_requests(cfg) == [
        ActorRequest("policy board", 1, 0.0, 0.0),
        ActorRequest("inference replica", 6, 8.0, 1.0),
        ActorRequest("learner", 2, 8.0, 1.0, ({"CPU": 8.0, "GPU": 1.0},) * 2, "PACK"),
        ActorRequest("rollout worker", 2, 1.0, 0.0),
    ]
    # behind a head that offers no CPUs (cluster.yaml's), every actor reserves a little: none is placed on it
    assert [r.cpus for r in fleet_requests(cfg, off_driver_node=True)] == [0.01, 8.0, 8.0, 1.0]


def test_qwen3_fits_one_8_gpu_worker_of_cluster_yaml(capsys):
    code, out, err = plan(capsys, QWEN, "--cluster", CLUSTER)
    assert code == 0, err
    table = rows(out)
    assert table["inference replica"] == ["6", "8", "1", "48", "6"]
    assert table["learner"] == ["2", "8", "1", "16", "2"]
    assert table["rollout worker"] == ["2", "1", "0", "2", "0"]
    assert table["total"] == ["11", "66.01", "8"]
    assert "learners: one placement group of 2 x {CPU: 8, GPU: 1} bundles, strategy PACK" in out
    assert re.search(r"gpu_worker\s+96\s+8\s+1\.\.1\s+policy board, inference replica, learner, rollout worker", out)
    assert "gpu_worker #1: 6 inference replicas, 2 learners, 2 rollout workers, 1 policy board (CPU 66.01 of 96, GPU 8 of 8)" in out
    assert "needs: the head and 1 gpu_worker node\n" in out
    assert "fits: the whole run fits on the cluster (max_workers 1)" in out


def test_docs_show_the_real_output(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _, out, _ = plan(capsys, "experiments/qwen3_0.6b.toml", "--cluster", "cluster.yaml")  # as the docs run it
    assert f"$ rayrl plan experiments/qwen3_0.6b.toml --cluster cluster.yaml\n{out}```" in (ROOT / "docs" / "cluster.md").read_text()


def test_default_experiment_is_cpu_only(capsys):
    code, out, err = plan(capsys, str(ROOT / "experiments" / "default.toml"))
    assert code == 0, err
    table = rows(out)
    assert table["inference replica"] == ["1", "1", "0", "1", "0"]
    assert table["learner"] == ["1", "1", "0", "1", "0"]
    assert table["rollout worker"] == table["policy board"] == ["1", "0", "0", "0", "0"]
    assert table["total"] == ["4", "2", "0"]  # the two cores of a laptop, exactly
    assert "one machine (a local Ray: ray.num_cpus, default all cores) needs 2 CPUs and 0 GPUs" in out
    assert "base model: builtin:tiny-qwen3 built and warm-started first, by one Ray task of 1 CPU" in out


def test_overrides_change_the_plan_and_learners_in_the_driver_reserve_nothing(capsys):
    code, out, err = plan(capsys, QWEN, "--learner.workers", "0", "--cluster", CLUSTER, "--inference.replicas=3")
    assert code == 0, err
    assert "learner" not in rows(out) and rows(out)["total"] == ["6", "26.01", "3"]
    assert "learner: inside the driver process (learner.workers = 0)" in out


def test_missing_cluster_file_is_one_error_line(capsys, tmp_path):
    code, out, err = plan(capsys, QWEN, "--cluster", str(tmp_path / "nope.yaml"))
    assert code == 2 and out == ""
    assert err == f"error: cluster file not found: {tmp_path / 'nope.yaml'} (a Ray cluster launcher YAML, such as the " \
                  "repository's cluster.yaml)\n"


def test_node_type_without_resources_is_told_to_declare_them(capsys, tmp_path):
    undeclared = tmp_path / "cluster.yaml"
    undeclared.write_text((ROOT / "cluster.yaml").read_text().replace("resources: {CPU: 96, GPU: 8}", "resources: {}"))
    code, _, err = plan(capsys, QWEN, "--cluster", str(undeclared))
    assert code == 2
    assert "node type 'gpu_worker' does not declare its resources (none): declare them" in err
    assert "vCPUs and GPUs of p4de.24xlarge" in err


def test_run_larger_than_the_cluster_names_the_actors_and_what_is_short(capsys):
    code, out, err = plan(capsys, QWEN, "--cluster", CLUSTER, "--inference.replicas", "8")
    assert code == 2
    assert "gpu_worker #2: 2 learners (CPU 16 of 96, GPU 2 of 8)" in out
    assert "it needs 2 'gpu_worker' nodes, and its max_workers is 1" in err
    assert "No room for 2 learners: short of {CPU: 16, GPU: 2}" in err


def test_actor_no_node_type_holds_is_named_with_the_shortfall(capsys):
    code, _, err = plan(capsys, QWEN, "--cluster", CLUSTER, "--inference.gpus_per_replica", "9")
    assert code == 2
    assert "no node type can hold one inference replica, which reserves {CPU: 8, GPU: 9}" in err
    assert "'gpu_worker' {CPU: 96, GPU: 8} is short of {GPU: 1}" in err
    assert "(inference.cpus_per_replica, inference.gpus_per_replica)" in err


def test_plan_starts_no_ray():
    code = ("import sys; from rayrl.cli import main; "
            f"rc = main(['plan', {QWEN!r}, '--cluster', {CLUSTER!r}]); "
            "assert rc == 0 and 'ray' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_capacity_shortfall_names_who_reserves_what():
    from rayrl.actors.fleet import capacity_shortfall

    requests = fleet_requests(load_config(QWEN))
    assert capacity_shortfall(requests, {"CPU": 96.0, "GPU": 8.0}) is None
    assert capacity_shortfall(requests, {"CPU": 96.0, "GPU": 4.0}) == (
        "the run reserves 8 GPUs (6 inference replicas x 1 + 2 learners x 1) but the cluster has 4")
    assert capacity_shortfall(requests, {"CPU": 16.0, "GPU": 8.0}) == (
        "the run reserves 66 CPUs (6 inference replicas x 8 + 2 learners x 8 + 2 rollout workers x 1) but the "
        "cluster has 16")
