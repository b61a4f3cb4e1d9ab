"""The sweep file of ``rayrl tune SWEEP.toml``: a typed model, its loading, and the config of each trial.

```toml
base = "../default.toml"          # the experiment every trial starts from (relative to this file)
name = "lr-sweep"
champion = "runs/a/checkpoints/step_800"   # optional: else the lineage's champion, else the base model
iterations = 2                    # Tune experiments in a row, each from the champion the last one left
num_samples = 1                   # Tune's num_samples: repeats of the grid, or random draws
metric = "eval_reward_mean"       # trial selection, on the eval split
mode = "max"

[overrides]                       # fixed for every trial (dotted keys as on the command line)
max_steps = 100

[param_space]
optim.lr = { loguniform = [1e-5, 1e-3] }
"env.0.args.reward" = { grid = ["exact", "digits"] }

[scheduler]                       # optional early stopping
type = "asha"

[gate]                            # rayrl.evaluation.gate.GateConfig
alpha = 0.05
```

Pure configuration: nothing here imports Ray (``rayrl tune --help`` and the loading tests stay fast).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from rayrl.config import Config, Section
from rayrl.config.located import TomlFile, join, locate, read_toml, validate
from rayrl.config.loading import anchor_reward_spec, load_config
from rayrl.errors import ConfigError
from rayrl.evaluation.gate import GateConfig

SPEC_KINDS = ("grid", "choice", "uniform", "loguniform")
SWEEP_HINT = "See docs/tuning.md and experiments/sweeps/promotion_demo.toml"
VARIANT_KEY = "variant"  # the swept key naming a [[variants]] entry
# Set by the sweep for every trial (the champion, the trial's own folder): never swept or overridden.
RESERVED_KEYS = ("model.name", "output_dir", "ckpt.resume_step")
# [overrides] may set these (the sweep's own cluster, when it starts one); trials share that cluster.
FIXED_ONLY_KEYS = ("ray",)
# Left out of the config a decision is recorded with: they say where a run ran, not what it learned.
RUN_ONLY_KEYS = ("name", "output_dir", "model.name", "model.cache_dir", "warmstart", "eval.at_start", "ckpt", "log",
                 "ray", "wandb")


class ParamSpec(Section):
    """One swept key: exactly one of grid, choice, uniform, loguniform."""

    TOML_EXAMPLE: ClassVar[str] = "{ grid = [...] }"  # how a swept key is written, for error messages

    grid: list[Any] | None = Field(None, min_length=1, description="Every value, one trial each (Tune grid_search).")
    choice: list[Any] | None = Field(None, min_length=1, description="One value drawn per sample.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high]: drawn uniformly per sample.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], low > 0: drawn log-uniformly.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ParamSpec:
        given = [k for k in SPEC_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SPEC_KINDS)} (got {', '.join(given) or 'none'})")
        for kind in ("uniform", "loguniform"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind} = [low, high] needs low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {list(self.loguniform)}")
        return self

    def corners(self) -> list[Any]:
        """Values that stand for the whole range when checking the trial configs up front."""
        if self.grid is not None or self.choice is not None:
            return list(self.grid if self.grid is not None else self.choice)
        return list(self.uniform if self.uniform is not None else self.loguniform)

    def to_tune(self) -> Any:
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(self.grid)
        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        return tune.loguniform(*self.loguniform)


class SchedulerConfig(Section):
    """Trial scheduler: FIFO (every trial runs to max_steps) or ASHA (stops the weak ones early)."""

    type: Literal["fifo", "asha"] = Field("fifo", description="fifo, or asha (asynchronous successive halving).")
    time_attr: Literal["step", "training_iteration"] = Field(
        "step", description="ASHA's clock: the RL step, or the number of reports (evaluations)."
    )
    grace_period: int = Field(1, ge=1, description="ASHA: no trial stops before this much time_attr.")
    max_t: int | None = Field(None, ge=1, description="ASHA: the longest a trial runs (default: max_steps).")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA: keep 1/reduction_factor at each rung.")


class SweepConfig(Section):
    """A ``rayrl tune`` sweep."""

    base: str | None = Field(None, description="Base experiment TOML, relative to the sweep file (None: defaults).")
    name: str = Field("sweep", description="Sweep name: Tune experiments are <name>-iter<N>.")
    champion: str | None = Field(
        None, description="Starting champion: a checkpoint folder (RUN/checkpoints/step_N) or model folder, relative "
        "to the working directory. Ignored when output_dir already holds a lineage (it continues from its champion); "
        "without either, the base experiment's starting model (built and warm-started as `rayrl train` does).",
    )
    iterations: int = Field(1, ge=1, description="Tune experiments in a row; each starts from the current champion.")
    num_samples: int = Field(1, ge=1, description="Tune num_samples: grid repeats, or random draws.")
    metric: str = Field("eval_reward_mean", description="Trial selection metric (reported at each eval).")
    mode: Literal["max", "min"] = Field("max", description="Whether a larger or smaller metric is better.")
    candidates: int = Field(
        1, ge=1, description="Best trials (by metric) handed to the promotion gate per iteration; alpha is corrected "
        "for their number.",
    )
    storage_path: str | None = Field(
        None, description="Tune storage: a folder or any pyarrow.fs URI (s3://, gs://); default <output_dir>/tune.",
    )
    output_dir: str | None = Field(
        None, description="Local folder of lineage.jsonl, the champion pointer and adopted checkpoints; "
        "default runs/sweeps/<name>.",
    )
    trial_cpus: float = Field(1.0, gt=0, description="CPUs of a trial's driver process (its first bundle).")
    max_concurrent_trials: int = Field(0, ge=0, description="Trials running at once (0: as many as fit).")
    keep_checkpoints: int = Field(1, ge=1, description="Checkpoints Tune keeps per trial (the best by metric).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Fixed dotted overrides of every trial.")
    param_space: dict[str, ParamSpec] = Field(default_factory=dict, description="Swept dotted keys.")
    variants: list[dict[str, Any]] = Field(
        default_factory=list, description="[[variants]]: named sets of dotted overrides, one trial each (a grid "
        "over the key 'variant'), for changes that go together or that a grid cannot pair.",
    )
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    _toml: TomlFile = PrivateAttr(default_factory=lambda: TomlFile(None))  # the file, for locating errors

    @model_validator(mode="after")
    def _variants_named(self) -> SweepConfig:
        names = [v.get("name") for v in self.variants]
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError("every [[variants]] entry needs a name = \"...\"")
        if len(set(names)) != len(names):
            raise ValueError(f"[[variants]] names must differ, got {names}")
        if self.variants and VARIANT_KEY in self.param_space:
            raise ValueError(f"[param_space] cannot sweep '{VARIANT_KEY}' when [[variants]] are given")
        return self

    # ---- trial configs ---------------------------------------------------------------------------
    def overrides_of(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dotted overrides of a trial: ``[overrides]``, then its variant's, then its swept values."""
        params = dict(params or {})
        out = dict(self.overrides)
        name = params.pop(VARIANT_KEY, None) if self.variants else None
        if name is not None:
            out.update({k: v for k, v in self.variant(name).items() if k != "name"})
        return {**out, **params}

    def variant(self, name: str) -> dict[str, Any]:
        return next(v for v in self.variants if v["name"] == name)

    def config(self, params: dict[str, Any] | None = None) -> Config:
        """Base experiment + the trial's overrides (no trial settings); with ``params`` None, the config of
        record: the gate evaluates champion and candidates with it, on the same examples and rewards.
        An error caused by a sweep key names that key's line in the sweep file."""
        return load_config(self.base, self.overrides_of(params), origins=self.origins_of(params))

    def origins_of(self, params: dict[str, Any] | None = None) -> dict[str, str]:
        """Where each of a trial's dotted overrides is set in the sweep file (for error messages)."""
        params = dict(params or {})
        out = {key: self.where("overrides", key) for key in self.overrides}
        name = params.pop(VARIANT_KEY, None) if self.variants else None
        if name is not None:
            index = next(i for i, v in enumerate(self.variants) if v["name"] == name)
            out.update({key: self.where("variants", str(index), key) for key in self.variant(name) if key != "name"})
        out.update({key: self.where("param_space", key) for key in params})
        return out

    def where(self, *path: str) -> str:
        """``sweep.toml, line N`` of a key path (dotted keys allowed); the file when not found."""
        return locate(tuple(p for part in path for p in part.split(".")), self._toml) if self._toml.source else "sweep"

    def trial_config(self, params: dict[str, Any], champion: str, output_dir: str | os.PathLike) -> Config:
        """The config of one trial: a fresh run of ``config(params)`` starting from ``champion``'s weights.

        The trial checkpoints at every evaluation (Tune keeps the best), keeps one checkpoint locally,
        skips the warm-start and the evaluation before the first update (the champion's score is known).
        """
        cfg = self.config(params)
        cfg.model.name = str(champion)
        cfg.warmstart.enabled = False
        cfg.output_dir = str(output_dir)
        cfg.eval.at_start = False
        cfg.ckpt.interval, cfg.ckpt.keep, cfg.ckpt.at_end, cfg.ckpt.resume_step = cfg.eval.interval, 1, True, None
        cfg.log.progress = False
        return cfg

    def tune_param_space(self) -> dict[str, Any]:
        """Tune's param_space: flat dotted keys (ResultGrid columns read ``config/optim.lr``)."""
        space = {key: spec.to_tune() for key, spec in self.param_space.items()}
        if self.variants:
            from ray import tune

            space[VARIANT_KEY] = tune.grid_search([v["name"] for v in self.variants])
        return space

    def tune_scheduler(self, max_steps: int):
        if self.scheduler.type == "fifo":
            return None
        from ray.tune.schedulers import ASHAScheduler

        s = self.scheduler
        return ASHAScheduler(
            time_attr=s.time_attr, grace_period=s.grace_period, reduction_factor=s.reduction_factor,
            max_t=s.max_t or max_steps,
        )


def trial_bundles(cfg: Config, trial_cpus: float) -> list[dict[str, float]]:
    """A trial's placement group: its driver first, then one bundle per actor the run starts (the policy board,
    replicas, learners, rollout workers) that reserves something, each what that actor reserves
    (``rayrl.actors.fleet.fleet_requests``, the numbers the actors are started with).

    Tune reserves them all before the trial starts and schedules the trial's child actors inside the group
    (``placement_group_capture_child_tasks``); the LearnerGroup takes bundles of it instead of its own group.
    Actors reserving nothing (the board, rollout workers with ``cpus_per_worker = 0``) get no bundle: they
    still land in the group, on a node of the trial's.
    """
    from rayrl.actors.fleet import fleet_requests

    bundles = [{"CPU": trial_cpus}]
    for request in fleet_requests(cfg):
        bundle = {k: v for k, v in (("CPU", request.cpus), ("GPU", request.gpus)) if v}
        bundles += [bundle] * request.count if bundle else []
    return bundles


def recipe(cfg: Config | dict) -> dict[str, Any]:
    """``cfg`` as a dict without the keys that only say where a run ran (:data:`RUN_ONLY_KEYS`):
    the config a lineage decision is recorded and diffed with."""
    out = cfg.model_dump(mode="json") if isinstance(cfg, Config) else Config.model_validate(cfg).model_dump(mode="json")
    for dotted in RUN_ONLY_KEYS:
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return out


# ---- loading ---------------------------------------------------------------------------------------


def load_sweep(path: str | os.PathLike, **settings: Any) -> SweepConfig:
    """Read a sweep file; ``settings`` (e.g. ``champion=..., iterations=2``) replace its top-level keys.

    Relative paths: ``base`` is relative to the sweep file; ``champion``, ``storage_path`` and
    ``output_dir`` to the working directory (like ``--output-dir``); reward files named in
    ``[overrides]``/``[param_space]`` (``env.N.reward = "file.py:fn"``) to the sweep file, like ``base``.
    Every trial config the space can produce is checked against the base experiment before Ray starts:
    errors name the sweep file, line and key.
    """
    path = Path(path)
    toml = read_toml(path, what="sweep file", hint=SWEEP_HINT)
    raw = dict(toml.data)
    raw.update({k: v for k, v in settings.items() if v is not None})
    here = path.resolve().parent
    if isinstance(raw.get("overrides"), dict):
        raw["overrides"] = _flatten(raw["overrides"], is_leaf=lambda v: not isinstance(v, dict))
    if isinstance(raw.get("param_space"), dict):
        raw["param_space"] = _flatten(raw["param_space"], is_leaf=_is_spec)
    if isinstance(raw.get("variants"), list):
        raw["variants"] = [_flatten(v, is_leaf=lambda x: not isinstance(x, dict)) if isinstance(v, dict) else v
                           for v in raw["variants"]]
    sweep = validate(SweepConfig, raw, toml, hint=SWEEP_HINT)
    sweep._toml = toml
    if sweep.base is not None:
        sweep.base = str((here / sweep.base).resolve())
    for key in ("champion", "output_dir"):
        if getattr(sweep, key) is not None:
            setattr(sweep, key, str(Path(getattr(sweep, key)).expanduser().resolve()))
    sweep.output_dir = sweep.output_dir or str(Path("runs", "sweeps", sweep.name).resolve())
    if sweep.storage_path is None:
        sweep.storage_path = str(Path(sweep.output_dir, "tune"))
    elif "://" not in sweep.storage_path:  # Tune needs an absolute path or a URI
        sweep.storage_path = str(Path(sweep.storage_path).expanduser().resolve())
    _anchor_reward_files(sweep, here)
    check_trial_configs(sweep)
    return sweep


def check_trial_configs(sweep: SweepConfig) -> None:
    """Build the trial config of every grid/choice value and every range bound, one key at a time.

    The base experiment's own errors come out as they would from ``rayrl train``; an error caused by
    a sweep key names that key's line in the sweep file (through the overrides' origins).
    """
    source = sweep._toml.source or "sweep"
    keys = [("overrides", k) for k in sweep.overrides] + [("param_space", k) for k in sweep.param_space]
    keys += [("variants", str(i), k) for i, v in enumerate(sweep.variants) for k in v if k != "name"]
    for *section, key in keys:
        where = sweep.where(*section, key)
        if _under(key, RESERVED_KEYS):
            raise ConfigError(join([f"{where}: '{key}' cannot be swept or overridden: the sweep sets it for every "
                                    "trial (model.name = the champion, output_dir = the trial's folder)"]))
        if section[0] != "overrides" and _under(key, FIXED_ONLY_KEYS):
            raise ConfigError(join([f"{where}: '{key}' cannot vary between trials: they all run on the sweep's "
                                    "cluster; set it in [overrides]"]))
    cfg = sweep.config()
    if cfg.eval.interval == 0:
        raise ConfigError(join([f"{source}: eval.interval is 0 (no evaluations): a trial reports to Tune at each "
                                "evaluation; set it in [overrides], e.g. \"eval.interval\" = 10"]))
    _check_confirmation_split(cfg, source)
    if sweep.gate.design == "sequential" and cfg.eval.temperature == 0 and cfg.sampling.temperature == 0:
        raise ConfigError(join([f"{source}: the sequential gate draws fresh samples at every look, but eval.temperature "
                                "and sampling.temperature are both 0 (greedy: every look would repeat the same "
                                "completions, and the looks would not be independent evidence); set "
                                "sampling.temperature above 0 in [overrides], or [gate] design = \"fixed\""]))
    first = {key: spec.corners()[0] for key, spec in sweep.param_space.items()}
    for v in sweep.variants:
        sweep.config({**first, VARIANT_KEY: v["name"]})
    for key, spec in sweep.param_space.items():
        for value in spec.corners():
            sweep.config({**first, key: value})


def _check_confirmation_split(cfg: Config, source: str) -> None:
    """The gate needs eval.confirm_examples held-out examples after the eval split's, in every environment."""
    from rayrl.envs.registry import build_envs
    from rayrl.errors import EvalSplitError
    from rayrl.evaluation.runner import split_examples

    try:
        split_examples(cfg, [env.examples("eval") for env in build_envs(cfg)], "confirm")
    except EvalSplitError as e:
        raise ConfigError(join([f"{source}: the promotion gate's confirmation split: {e}"])) from None


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _anchor_reward_files(sweep: SweepConfig, here: Path) -> None:
    for table in [sweep.overrides, *sweep.variants]:
        for key, value in table.items():
            if re.fullmatch(r"env\.\d+\.reward", key) and isinstance(value, str):
                table[key] = anchor_reward_spec(value, here)
    for key, spec in sweep.param_space.items():
        if re.fullmatch(r"env\.\d+\.reward", key):
            for kind in ("grid", "choice"):
                values = getattr(spec, kind)
                if values is not None:
                    setattr(spec, kind, [anchor_reward_spec(v, here) if isinstance(v, str) else v for v in values])


def _is_spec(value: Any) -> bool:
    return not isinstance(value, dict) or any(k in value for k in SPEC_KINDS)


def _flatten(table: dict, is_leaf, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": x}}`` -> ``{"optim.lr": x}``, down to the values ``is_leaf`` accepts."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if is_leaf(value) or not value:
            out[dotted] = value
        else:
            out.update(_flatten(value, is_leaf, dotted + "."))
    return out
