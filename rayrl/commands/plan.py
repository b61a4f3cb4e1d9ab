"""Print what a run reserves on Ray, and where it fits on a cluster, without starting Ray or anything else.

``rayrl plan EXPERIMENT.toml [--cluster cluster.yaml] [--section.key value ...]`` (the experiment first, then
the options). Per actor kind (policy board, inference replicas, learners, rollout workers): how many, the
CPUs and GPUs each reserves, the learners' placement group (bundles and strategy) and the totals, from the
functions that start those actors (``rayrl.actors.fleet.fleet_requests``). With ``--cluster`` (a Ray cluster
launcher YAML whose node types declare ``resources``): which node types can hold one actor of each kind, and
the whole run packed onto nodes as Ray's autoscaler packs demands (a PACK group's bundles one by one,
largest first, the head node first), with the nodes of each type it needs and whether the cluster's
``max_workers`` allow them.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

Resources = dict[str, float]

# the settings that size each actor kind's reservation (named in "does not fit" errors)
SETTINGS = {
    "inference replica": "inference.cpus_per_replica, inference.gpus_per_replica",
    "learner": "learner.cpus_per_worker, learner.gpus_per_worker",
    "rollout worker": "rollout.cpus_per_worker",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", help="experiment TOML file (default: built-in defaults)")
    parser.add_argument("--cluster", metavar="FILE", help="Ray cluster launcher YAML (cluster.yaml): which of "
                        "its node types hold the run, and how many nodes it needs")  # fmt: skip
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--section.key value",
                        help="config overrides, after the experiment file")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from rayrl.actors.fleet import fleet_requests
    from rayrl.config.loading import load_config

    cluster_file, overrides = _cluster_option(args.cluster, args.overrides or [])
    cfg = load_config(args.experiment, overrides)
    cluster = None if cluster_file is None else read_cluster(cluster_file)
    # a head that offers no CPUs: every actor reserves a little so that Ray keeps it off the head (fleet.py)
    requests = fleet_requests(cfg, off_driver_node=cluster is not None and not cluster.head.resources.get("CPU"))
    for line in describe(cfg, requests, args.experiment):
        print(line)
    if cluster is None:
        cpus, gpus = total(requests)
        print(f"one machine (a local Ray: ray.num_cpus, default all cores) needs {num(cpus)} CPUs and {num(gpus)} "
              "GPUs; --cluster cluster.yaml: which node types hold it")  # fmt: skip
        return 0
    print()
    for line in describe_cluster(cluster, requests):
        print(line, flush=True)
    nodes = pack(cluster, demands(requests))  # raises CommandError naming the actor that fits no node type
    for line in describe_packing(cluster, nodes):
        print(line, flush=True)
    check_limits(cluster, nodes)
    return 0


def _cluster_option(cluster: str | None, tokens: list[str]) -> tuple[str | None, list[str]]:
    """``--cluster FILE`` (or ``--cluster=FILE``) among the tokens after the experiment (argparse leaves
    everything after the first positional to the overrides), and the remaining override tokens."""
    rest, i = [], 0
    while i < len(tokens):
        if tokens[i] == "--cluster" and i + 1 < len(tokens):
            cluster, i = tokens[i + 1], i + 2
        elif tokens[i].startswith("--cluster="):
            cluster, i = tokens[i].split("=", 1)[1], i + 1
        else:
            rest.append(tokens[i])
            i += 1
    return cluster, rest


# ---- the run's reservation ------------------------------------------------------------------------------
def num(x: float) -> str:
    return f"{x:g}"


def resources(cpus: float, gpus: float) -> Resources:
    """What one actor asks of a node (zero amounts left out, as Ray's demands leave them)."""
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v}


def show(r: Resources) -> str:
    return "{" + ", ".join(f"{k}: {num(v)}" for k, v in r.items()) + "}"


def total(requests) -> tuple[float, float]:
    return sum(r.count * r.cpus for r in requests), sum(r.count * r.gpus for r in requests)


def describe(cfg, requests, experiment: str | None) -> list[str]:
    from rayrl.models.loading import needs_build

    source = experiment or "built-in defaults"
    lines = [f"plan of {source} (run '{cfg.name}'): what rayrl train reserves on Ray",
             f"  {'actor':<18} {'count':>5} {'CPU each':>9} {'GPU each':>9} {'CPU total':>10} {'GPU total':>10}"]
    for r in requests:
        lines.append(f"  {r.kind:<18} {r.count:>5} {num(r.cpus):>9} {num(r.gpus):>9} {num(r.count * r.cpus):>10} "
                     f"{num(r.count * r.gpus):>10}")  # fmt: skip
    cpus, gpus = total(requests)
    lines.append(f"  {'total':<18} {sum(r.count for r in requests):>5} {'':>9} {'':>9} {num(cpus):>10} {num(gpus):>10}")
    for r in requests:
        if r.bundles:
            lines.append(f"  {r.kind}s: one placement group of {len(r.bundles)} x {show(r.bundles[0])} bundles, "
                         f"strategy {r.strategy}")  # fmt: skip
    if cfg.learner.workers == 0:
        lines.append("  learner: inside the driver process (learner.workers = 0): no actor, no Ray resources")
    lines.append("  driver: the rayrl train process reserves nothing (a ray job submit entrypoint runs on the head)")
    if needs_build(cfg):
        lines.append(f"  base model: {cfg.model.name} built{' and warm-started' if cfg.warmstart.enabled else ''} "
                     f"first, by one Ray task of {num(cfg.learner.cpus_per_worker)} CPU (learner.cpus_per_worker)")  # fmt: skip
    else:
        lines.append(f"  base model: {cfg.model.name}, loaded by every replica and learner on its node")
    return lines


def demands(requests) -> list[tuple[str, Resources]]:
    """One (kind, resources) per actor; a placement group's bundles as Ray's autoscaler reads them: PACK and
    SPREAD one by one, STRICT_PACK as one demand of their sum (rayrl's learners use PACK)."""
    out = []
    for r in requests:
        if r.bundles and r.strategy == "STRICT_PACK":
            out.append((f"{r.kind} group", {k: sum(b.get(k, 0) for b in r.bundles) for k in ("CPU", "GPU")}))
        elif r.bundles:
            out += [(r.kind, {k: v for k, v in b.items() if v}) for b in r.bundles]
        else:
            out += [(r.kind, resources(r.cpus, r.gpus))] * r.count
    return out


# ---- the cluster file ------------------------------------------------------------------------------------
@dataclass
class NodeType:
    name: str
    resources: Resources
    min_workers: int
    max_workers: int | None  # None: no limit of its own (the cluster's max_workers)
    head: bool = False


@dataclass
class Cluster:
    path: str
    types: list[NodeType]
    max_workers: int | None

    @property
    def head(self) -> NodeType:
        return next(t for t in self.types if t.head)

    @property
    def workers(self) -> list[NodeType]:
        return [t for t in self.types if not t.head]


def read_cluster(path: str) -> Cluster:
    """The node types of a Ray cluster launcher YAML with their declared resources. CommandError for a missing
    or malformed file and for a node type whose resources are not declared (plan never asks the cloud)."""
    import yaml

    from rayrl.errors import CommandError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(f"cluster file not found: {path} (a Ray cluster launcher YAML, such as the "
                           "repository's cluster.yaml)") from None  # fmt: skip
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CommandError(f"cannot read cluster file {path}: {e}") from None
    node_types = data.get("available_node_types") if isinstance(data, dict) else None
    if not isinstance(node_types, dict) or not node_types:
        raise CommandError(f"{path}: no available_node_types: rayrl plan needs the cluster's node types and the "
                           "resources each declares")  # fmt: skip
    head = data.get("head_node_type")
    if head not in node_types:
        raise CommandError(f"{path}: head_node_type {head!r} is not one of available_node_types "
                           f"({', '.join(node_types)})")  # fmt: skip
    global_max = data.get("max_workers")
    types = []
    for name, spec in node_types.items():
        declared = (spec or {}).get("resources") if isinstance(spec, dict) else None
        instance = ((spec or {}).get("node_config") or {}).get("InstanceType", "its instance")
        if not isinstance(declared, dict) or "CPU" not in declared:
            raise CommandError(
                f"{path}: node type '{name}' does not declare its resources ({declared or 'none'}): declare them, "
                f"e.g. resources: {{CPU: 96, GPU: 8}} with the vCPUs and GPUs of {instance} (CPU: 0 keeps actors "
                "off a head node); rayrl plan reads them from the file and never asks the cloud"
            )
        bad = [k for k, v in declared.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0]
        if bad:
            raise CommandError(f"{path}: node type '{name}': resources.{bad[0]} must be a number >= 0, got "
                               f"{declared[bad[0]]!r}")  # fmt: skip
        is_head = name == head
        own_max = spec.get("max_workers")
        types.append(NodeType(name, {k: float(v) for k, v in declared.items()}, int(spec.get("min_workers", 0)),
                              0 if is_head and own_max is None else own_max, is_head))  # fmt: skip
    return Cluster(path, types, global_max)


def fits(free: Resources, want: Resources) -> bool:
    return all(v <= free.get(k, 0.0) + 1e-9 for k, v in want.items())


def short(have: Resources, want: Resources) -> Resources:
    return {k: v - have.get(k, 0.0) for k, v in want.items() if v > have.get(k, 0.0) + 1e-9}


def describe_cluster(cluster: Cluster, requests) -> list[str]:
    limit = "not set (Ray's provider default)" if cluster.max_workers is None else cluster.max_workers
    lines = [f"cluster {cluster.path}: head node type '{cluster.head.name}', max_workers {limit}",
             f"  {'node type':<16} {'CPU':>5} {'GPU':>5} {'workers':>8}  holds one"]
    kinds = [(r.kind, resources(r.cpus, r.gpus)) for r in requests if r.count]
    for t in cluster.types:
        workers = "head" if t.head else f"{t.min_workers}..{'' if t.max_workers is None else t.max_workers}"
        holds = ", ".join(kind for kind, want in kinds if fits(t.resources, want)) or "no actor of this run"
        lines.append(f"  {t.name:<16} {num(t.resources.get('CPU', 0)):>5} {num(t.resources.get('GPU', 0)):>5} "
                     f"{workers:>8}  {holds}")  # fmt: skip
    return lines


# ---- packing ---------------------------------------------------------------------------------------------
@dataclass
class Node:
    type: NodeType
    free: Resources
    holds: Counter = field(default_factory=Counter)

    def take(self, kind: str, want: Resources) -> None:
        for k, v in want.items():
            self.free[k] = self.free.get(k, 0.0) - v
        self.holds[kind] += 1


def pack(cluster: Cluster, wanted: list[tuple[str, Resources]]) -> list[Node]:
    """The run's demands on nodes: the head first, then worker nodes opened as needed, each of the type that
    holds the most of what is left (the first declared on a tie). Demands are placed largest first (more
    kinds of resource, then more in all), each on the first node with room, as Ray's autoscaler bin-packs
    (``get_bin_pack_residual``). Node counts are not capped here: :func:`check_limits` compares them with the
    cluster's limits. CommandError when no node type can hold some actor, naming it and what is short."""
    from rayrl.errors import CommandError

    order = sorted(wanted, key=lambda d: (len(d[1]), sum(d[1].values())), reverse=True)
    nodes = [Node(cluster.head, dict(cluster.head.resources))]
    for i, (kind, want) in enumerate(order):
        node = next((n for n in nodes if fits(n.free, want)), None)
        if node is None:
            candidates = [t for t in cluster.workers if fits(t.resources, want)]
            if not candidates:
                shortfalls = "; ".join(f"'{t.name}' {show(t.resources)} is short of {show(short(t.resources, want))}"
                                       for t in cluster.types)  # fmt: skip
                hint = f" ({SETTINGS[kind]})" if kind in SETTINGS else ""
                raise CommandError(f"{cluster.path}: no node type can hold one {kind}, which reserves {show(want)}: "
                                   f"{shortfalls}. Declare a node type with those resources, or reserve less{hint}")
            best = max(candidates, key=lambda t: (_holds(t, order[i:]), -cluster.types.index(t)))
            node = Node(best, dict(best.resources))
            nodes.append(node)
        node.take(kind, want)
    return nodes


def _holds(node_type: NodeType, wanted: list[tuple[str, Resources]]) -> int:
    trial = Node(node_type, dict(node_type.resources))
    for kind, want in wanted:
        if fits(trial.free, want):
            trial.take(kind, want)
    return sum(trial.holds.values())


def _plural(kind: str, n: int) -> str:
    return f"{n} {kind}{'s' if n > 1 else ''}"


def describe_packing(cluster: Cluster, nodes: list[Node]) -> list[str]:
    lines = ["  packed as Ray's autoscaler packs demands:"]
    seen: Counter = Counter()
    for node in nodes:
        seen[node.type.name] += 1
        label = node.type.name if node.type.head else f"{node.type.name} #{seen[node.type.name]}"
        used = ", ".join(f"{k} {num(cap - node.free.get(k, 0.0))} of {num(cap)}"
                         for k, cap in node.type.resources.items() if k in ("CPU", "GPU"))  # fmt: skip
        held = ", ".join(_plural(k, n) for k, n in node.holds.items()) or "nothing of this run"
        lines.append(f"    {label}: {held} ({used})")
    needed = Counter(n.type.name for n in nodes if not n.type.head)
    total_workers = sum(needed.values())
    need = " + ".join(f"{n} {name}" for name, n in needed.items()) or "no worker"
    lines.append(f"  needs: the head and {need} node{'s' if total_workers != 1 else ''}")
    return lines


def check_limits(cluster: Cluster, nodes: list[Node]) -> None:
    """Print whether the nodes the run needs are within ``max_workers`` (each node type's and the cluster's);
    CommandError naming the actors that find no room, and what is short, when they are not."""
    from rayrl.errors import CommandError

    workers = [n for n in nodes if not n.type.head]
    over: list[Node] = []
    problems = []
    for t in cluster.workers:
        mine = [n for n in workers if n.type is t]
        if t.max_workers is not None and len(mine) > t.max_workers:
            over += mine[t.max_workers:]
            problems.append(f"{len(mine)} '{t.name}' nodes, and its max_workers is {t.max_workers}")
    if cluster.max_workers is not None and len(workers) > cluster.max_workers:
        over += [n for n in workers[cluster.max_workers:] if n not in over]
        problems.append(f"{len(workers)} worker nodes, and the cluster's max_workers is {cluster.max_workers}")
    if not problems:
        limit = "" if cluster.max_workers is None else f" (max_workers {cluster.max_workers})"
        print(f"  fits: the whole run fits on the cluster{limit}")
        return
    held: Counter = Counter()
    lacking: Resources = {}
    for node in over:
        held.update(node.holds)
        for k, cap in node.type.resources.items():
            if cap - node.free.get(k, 0.0) > 1e-9:
                lacking[k] = lacking.get(k, 0.0) + cap - node.free.get(k, 0.0)
    actors = ", ".join(_plural(k, n) for k, n in held.items())
    raise CommandError(f"{cluster.path}: the run does not fit: it needs {'; '.join(problems)}. No room for "
                       f"{actors}: short of {show(lacking)}. Raise max_workers, or reserve less")
