"""The promotion gate's tools. ``rayrl gate plan SWEEP.toml``: how large a gain the gate of a sweep adopts, and
at what cost, before anything is trained or scored.

``plan`` reads the sweep file (its ``[gate]``, ``candidates`` and the resolved experiment's
``eval.confirm_examples`` and environments) and the champion's accuracy (``--accuracy``, else the lineage's
champion pointer in the sweep's output folder), and prints, for the fixed and the sequential design: the
smallest gain adopted with 80% power (MDE), the power at +0.02 and +0.05, the expected samples at gain 0
and at the MDE, the most, and what more samples, examples, budget or correlation would buy. The variance
model is in ``rayrl.evaluation.planning``. Nothing is started: no Ray, no model.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

MEASURED_CRN = "0.42 measured on the tiny model: the promotion demo's adopted pair, and step_600 vs step_800"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="gate_command", required=True, metavar="SUBCOMMAND")
    for name, (add, _, help_text) in SUBCOMMANDS.items():
        add(sub.add_parser(name, allow_abbrev=False, help=help_text.replace("%", "%%"), description=help_text))


def run(args: argparse.Namespace) -> int:
    return SUBCOMMANDS[args.gate_command][1](args)


# ---- plan -------------------------------------------------------------------------------------------


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep TOML file (its [gate], candidates and base experiment)")
    parser.add_argument("--accuracy", type=float, metavar="P", help="the champion's accuracy (mean reward on the "
                        "confirmation split; default: the lineage's champion pointer in the sweep's output folder)")
    parser.add_argument("--crn", type=float, default=None, metavar="F", help="variance factor of common random "
                        f"numbers, the share of the paired variance left by the shared seeds (default 1.0: none; "
                        f"{MEASURED_CRN})")
    parser.add_argument("--tau2", type=float, default=0.0, metavar="T", help="variance over examples of the true "
                        "per-example gain, which more samples per example do not shrink (default 0; 0.0375 measured "
                        "on the promotion demo's adopted pair, bench/RESULTS.md)")
    parser.add_argument("--examples", type=int, metavar="N", help="confirmation examples per environment "
                        "(default: eval.confirm_examples of the resolved experiment)")
    parser.add_argument("--profile", metavar="FILE", help='JSON of per-example rewards {"env": [[0, 1, ...], ...]} '
                        "(or per-example success rates {\"env\": [0.25, ...]}, or a champion profile ROOT/profiles/NAME.json"
                        "): the per-example variance measured instead of assumed")


def run_plan(args: argparse.Namespace) -> int:
    from rayrl.errors import CommandError
    from rayrl.evaluation.planning import Inputs, beta_variance, plan, what_buys_what
    from rayrl.tuning.sweep import load_sweep

    sweep = load_sweep(args.sweep)
    cfg = sweep.config()
    gate, envs = sweep.gate, cfg.env_names()
    if args.examples is not None and args.examples < 1:
        raise CommandError(f"--examples must be at least 1, got {args.examples}")
    if args.crn is not None and not args.crn > 0:
        raise CommandError(f"--crn must be positive, got {args.crn}")
    per_env = cfg.eval.confirm_examples if args.examples is None else args.examples
    if per_env < 1:
        raise CommandError(f"{args.sweep}: eval.confirm_examples is 0, the gate has no confirmation examples; "
                           "set it, or plan with --examples N")
    n = per_env * len(envs)
    n_source = (f"{'--examples' if args.examples is not None else 'eval.confirm_examples'} {per_env}"
                f" x {len(envs)} environment{'s' if len(envs) > 1 else ''}")
    profile = None if args.profile is None else _read_profile(args.profile)
    accuracy, accuracy_source, per_env_accuracy = _accuracy(args, sweep, envs, profile)
    if profile is not None:
        v = profile.variance
        v_source = f"measured: mean per-example variance of {profile.examples} examples in {args.profile}"
    else:
        rates = per_env_accuracy or [accuracy]
        v = sum(beta_variance(p) for p in rates) / len(rates)
        v_source = "p(1-p) c/(c+1), c = 1.5: rates ~ Beta(p c, (1-p) c); --profile FILE measures it"
    crn = 1.0 if args.crn is None else args.crn
    crn_source = "--crn" if args.crn is not None else f"default: none assumed; {MEASURED_CRN}"
    if args.tau2 < 0:
        raise CommandError(f"--tau2 must be at least 0, got {args.tau2}")
    inputs = Inputs(n, gate.samples, sweep.candidates, v, crn, sweep.iterations, args.tau2)
    plans = [plan(gate, inputs, "fixed"), plan(gate, inputs, "sequential")]
    levers = what_buys_what(gate, inputs, cfg.eval.num_examples, len(envs))
    notes = _notes(gate, cfg)
    print(format_plan(args.sweep, gate, inputs, plans, levers, sources={
        "n": n_source, "K": "gate.samples", "m": "candidates", "p": accuracy_source, "v": v_source, "crn": crn_source,
    }, accuracy=accuracy, notes=notes))
    return 0


def _read_profile(path: str):
    from rayrl.errors import CommandError
    from rayrl.evaluation.planning import profile_variance

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CommandError(f"--profile {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CommandError(f"--profile {path}: not readable JSON ({e})") from None
    try:
        return profile_variance(data)
    except ValueError as e:
        raise CommandError(f"--profile {path}: {e}") from None


def _accuracy(args, sweep, envs: list[str], profile) -> tuple[float, str, list[float] | None]:
    """The champion's accuracy, where it came from, and per environment when the lineage gives it."""
    from rayrl.errors import CommandError
    from rayrl.tuning.lineage import CHAMPION_FILE, Lineage

    if args.accuracy is not None:
        if not 0 < args.accuracy < 1:
            raise CommandError(f"--accuracy must lie strictly between 0 and 1, got {args.accuracy}")
        return args.accuracy, "--accuracy", None
    if profile is not None:
        return profile.accuracy, f"mean reward in {args.profile}", None
    root = Path(sweep.output_dir)
    champion = Lineage(root).champion(repair=False)
    hint = "pass the champion's accuracy with --accuracy P (e.g. --accuracy 0.8)"
    if champion is None:
        raise CommandError(f"no champion accuracy: {root / CHAMPION_FILE} does not exist (the sweep has not run "
                           f"yet); {hint}")
    metrics = champion.get("metrics") or {}
    values = [metrics.get(env) for env in envs]
    if not all(isinstance(x, (int, float)) and 0 < x < 1 for x in values):
        raise CommandError(f"no champion accuracy: {root / CHAMPION_FILE} gives metrics {metrics} for the "
                           f"environments {envs} (each must lie strictly between 0 and 1); {hint}")
    where = f"champion '{champion.get('name')}' of iteration {champion.get('iteration')}, {root / CHAMPION_FILE}"
    if len(envs) > 1:
        where += ": " + ", ".join(f"{env} {x:.3f}" for env, x in zip(envs, values))
    return sum(values) / len(values), where, [float(x) for x in values]


def _notes(gate, cfg) -> list[str]:
    notes = []
    if gate.design == "fixed":
        notes.append('the sweep uses the fixed design (gate.design): the sequential row is what gate.design = '
                     '"sequential" would give')
        smallest = min(b - a for a, b in zip([0.0, *gate.looks], gate.looks)) * gate.budget * gate.samples
        if smallest < 1:
            notes.append(f"with these settings the sequential design's smallest look would get {smallest:.3g} samples "
                         "per example; it needs 1 (raise gate.budget or gate.samples)")
    if gate.samples == 1 and cfg.eval.temperature == 0:
        notes.append("the fixed design with K = 1 scores greedily (eval.temperature 0): the model assumes sampled "
                     "scores; the sequential design samples at sampling.temperature")
    if gate.min_delta > 0:
        notes.append(f"gate.min_delta = {gate.min_delta:g} also applies: the gain must reach it as well (not in "
                     "these figures)")
    if gate.correction == "holm":
        notes.append("gate.correction holm: planned as Bonferroni (Holm can only add power)")
    return notes


def format_plan(sweep_file: str, gate, inputs, plans, levers, sources: dict[str, str], accuracy: float,
                notes: Sequence[str] = ()) -> str:
    """The plan as text: inputs, one row per design, per-iteration totals, what buys what."""
    from rayrl.evaluation.planning import TARGET_POWER, corrected_alpha, standard_error

    m = inputs.candidates
    alpha = corrected_alpha(gate, m, inputs.iterations)
    parts = [f"gate.alpha {gate.alpha:g}"]
    if gate.alpha_scope == "sweep" and inputs.iterations > 1:
        parts.append(f"/ {inputs.iterations} iterations (alpha_scope sweep; the first iteration, and any after one "
                     "that adopted nothing)")
    parts.append("uncorrected for candidates" if gate.correction == "none" else f"/ {m} candidates, {gate.correction}")
    how = " ".join(parts)
    today = inputs.today
    out = [f"gate plan for {sweep_file} (gate.design = {gate.design})", "", "inputs"]
    out += _table([
        ["n", str(inputs.examples), f"confirmation examples ({sources['n']})"],
        ["K", str(inputs.samples), f"samples per example and policy ({sources['K']})"],
        ["m", str(m), f"candidates per iteration ({sources['m']})"],
        ["alpha'", f"{alpha:.4g}", f"one-sided, per candidate ({how})"],
        ["p", f"{accuracy:.3f}", f"champion accuracy ({sources['p']})"],
        ["v", f"{inputs.variance:.4f}", f"mean per-example p_i(1-p_i) ({sources['v']})"],
        ["crn", f"{inputs.crn:.2f}", f"variance factor of common random numbers ({sources['crn']})"],
        ["tau^2", f"{inputs.heterogeneity:.4g}", "variance over examples of the true gain (--tau2)"],
        ["SE", f"{standard_error(inputs):.4f}", "of the mean gain with n K samples per policy: sqrt((2 v crn / K + tau^2) / n)"],
    ], right={1}, indent="  ")
    looks = "/".join(f"{t:g}" for t in gate.looks)
    seq = plans[1]
    spending = "O'Brien-Fleming" if gate.spending == "obf" else "Pocock"
    bounds = ", ".join(f"{b:.2f}" for b in seq.bounds if math.isfinite(b))
    futility = ", ".join(f"{f:g}" for f in gate.futility) or "none"
    out += ["", (f"sequential design: looks at {looks} of budget {gate.budget:g} x K = "
                 f"{gate.budget * inputs.samples:g} samples per example; {spending} spending, adoption from look "
                 f"{gate.efficacy_from_look} (Z >= {bounds}),"),
            (f"  futility Z < {futility}; samples spread evenly over the examples (the gate's {gate.allocation} "
             "allocation usually does better)"), ""]
    gains = list(seq.power)
    header = ["design", f"MDE ({TARGET_POWER:.0%})", *(f"power {g:+.2f}" for g in gains), "E[cost] gain 0",
              "E[cost] at MDE", "max cost"]
    rows = [header]
    for p in plans:
        rows.append([p.design, f"{p.mde:.3f}", *(f"{p.power[g]:.3f}" for g in gains), _cost(p.cost_null, today),
                     _cost(p.cost_at_mde, today), _cost(p.max_cost, today)])
    out += ["samples per policy (x today's fixed n K)"]
    out += _table(rows, right=set(range(1, len(header))), indent="  ", rule=True, free_last=False)
    rows = [["design", "E[cost] gain 0", "E[cost] at MDE", "max cost"]]
    for p in plans:
        rows.append([p.design, *(_cost(x, (m + 1) * today) for x in (p.iteration_null, p.iteration_at_mde,
                                                                        p.iteration_max))])
    out += ["", (f"samples per iteration, champion + {m} candidate{'s' if m > 1 else ''} (at MDE: one candidate at "
                 "the MDE, the others at 0; candidates taken as independent)")]
    out += _table(rows, right={1, 2, 3}, indent="  ", rule=True, free_last=False)
    out += ["", f"what buys what (MDE at {TARGET_POWER:.0%} power; costs per policy in units of today's n K = {today})"]
    rows = [["change", "fixed MDE", "cost", "sequential MDE", "E[cost] gain 0", "E[cost] at MDE", "max cost",
             "how"]]
    for lever in levers:
        f, s = lever.fixed, lever.sequential
        rows.append([lever.change, "-" if f is None else f"{f.mde:.3f}", "-" if f is None else _times(f.max_cost / today),
                     f"{s.mde:.3f}", _times(s.cost_null / today), _times(s.cost_at_mde / today),
                     _times(s.max_cost / today), lever.setting])
    out += _table(rows, right=set(range(1, 7)), indent="  ", rule=True)
    if notes:
        out += [""] + [f"note: {n}" for n in notes]
    return "\n".join(out)


def _cost(samples: float, unit: float) -> str:
    return f"{samples:.0f} ({_times(samples / unit)})"


def _times(x: float) -> str:
    return f"{x:.2f}x" if math.isfinite(x) else "-"


def _table(rows: list[list[str]], right: set[int], indent: str = "", rule: bool = False,
           free_last: bool = True) -> list[str]:
    """Aligned columns; ``right``: the columns aligned right; ``free_last``: the last column (text) unpadded."""
    columns = len(rows[0]) - 1 if free_last else len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(columns)]

    def line(row: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return (indent + "  ".join([*cells, *row[columns:]])).rstrip()

    lines = [line(r) for r in rows]
    if rule:
        lines.insert(1, line(["-" * w for w in widths] + ["-" * len(rows[0][-1])] * (len(rows[0]) - columns)))
    return lines


# name -> (add_arguments, run, one-line help): `rayrl gate NAME ...`
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "plan": (add_plan_arguments, run_plan, ("the smallest gain the gate adopts with 80% power, and its cost in "
                                            "samples, for the fixed and sequential designs, and what more samples, "
                                            "examples or budget buy")),
}
