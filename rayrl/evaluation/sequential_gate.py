"""The sequential promotion gate's state: looks of fresh samples, each candidate's combined evidence, decisions.

Pure (numpy and the standard library; the maths in :mod:`rayrl.evaluation.sequential`, the paired tests and
the Decision record in :mod:`rayrl.evaluation.gate`). The caller (``rayrl.tuning.runner.sequential_gate``)
scores champion and running candidates at each look and hands the per-example means to
:meth:`SequentialGate.look`; see docs/tuning.md for the design and bench/RESULTS.md for its calibration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from rayrl.evaluation.gate import (
    Decision, GateConfig, as_columns, paired_differences, paired_test, studentised_mean,
)
from rayrl.evaluation.sequential import (
    combine, combined_estimate, efficacy_bounds, repeated_ci, stagewise_p_value, weights, z_of_p,
)

_NORMAL = NormalDist()


@dataclass
class Track:
    """One candidate's evidence over the looks of a sequential gate."""

    name: str
    stage_p: list[float] = field(default_factory=list)
    stage_z: list[float] = field(default_factory=list)
    estimates: list[float] = field(default_factory=list)  # each look's mean gain
    errors: list[float] = field(default_factory=list)  # and its standard error
    per_env: list[dict[str, dict[str, float]]] = field(default_factory=list)  # each look's per-environment means
    samples: int = 0  # samples scored for this candidate so far
    decision: Decision | None = None  # set when it stops

    @property
    def running(self) -> bool:
        return self.decision is None


@dataclass
class SequentialGate:
    """The state of one iteration's sequential gate: the design, its boundaries and every candidate's track.

    The caller scores champion and running candidates at each look with fresh samples (the same examples,
    per-example counts and seeds for all of them) and hands the per-example means to :meth:`look`, which
    returns the decisions once every candidate has stopped. Pure: no Ray, no evaluation.
    """

    cfg: GateConfig
    names: list[str]
    parent: str = "champion"
    n_compared: int | None = None
    tracks: dict[str, Track] = field(init=False)
    bounds: np.ndarray = field(init=False)
    ci_bounds: np.ndarray = field(init=False)
    alpha: float = field(init=False)
    note: str = field(init=False)
    champion_samples: int = 0
    done_looks: int = 0

    def __post_init__(self) -> None:
        m = len(self.names) if self.n_compared is None else self.n_compared
        if m < len(self.names):
            raise ValueError(f"n_compared ({m}) is below the number of candidates ({len(self.names)})")
        self.alpha = self.cfg.alpha if self.cfg.correction == "none" else self.cfg.alpha / m
        if m > 1:
            self.note = (f"uncorrected for {m} candidates" if self.cfg.correction == "none"
                         else f"{self.cfg.alpha:g} / {m} candidates")
        else:
            self.note = ""
        self.tracks = {name: Track(name) for name in self.names}
        self.bounds = efficacy_bounds(self.cfg.looks, self.alpha, self.cfg.spending, self.cfg.efficacy_from_look)
        self.ci_bounds = efficacy_bounds(self.cfg.looks, self.alpha, self.cfg.spending, 1)

    @property
    def running(self) -> list[str]:
        return [n for n in self.names if self.tracks[n].running]

    def look(
        self, champion: Mapping[str, np.ndarray], candidates: Mapping[str, Mapping[str, np.ndarray]],
        samples: int = 0,
    ) -> list[Decision] | None:
        """Take the next look: per-example mean scores of this look's fresh samples for the champion and every
        running candidate (environment -> ``[n]``). ``samples``: samples scored per policy at this look (for
        the record). Returns every candidate's Decision (in the given order) once the gate has finished, else None.
        """
        running = self.running
        if not running:
            raise ValueError("the sequential gate has already decided")
        if set(candidates) != set(running):
            raise ValueError(f"look {self.done_looks + 1}: scores for {sorted(candidates)}, but the running "
                             f"candidates are {running}")
        k = self.done_looks  # 0-based index of this look
        last = k == len(self.cfg.looks) - 1
        self.done_looks += 1
        self.champion_samples += samples
        measured = [paired_differences(champion, candidates[name], name) for name in running]
        diffs = np.stack([d for d, _ in measured], axis=1)
        z_before = np.array([self.tracks[n].stage_z for n in running]).reshape(len(running), k).T  # [k, running]
        strata = [m["n"] for m in measured[0][1].values()]  # every candidate has the champion's environments
        p_values = stage_p_values(diffs, z_before, k, self.cfg, self.bounds, strata)
        passed: list[str] = []
        for j, (name, (d, per_env)) in enumerate(zip(running, measured)):
            track = self.tracks[name]
            track.samples += samples
            track.stage_p.append(float(p_values[j]))
            track.stage_z.append(z_of_p(float(p_values[j])))
            track.estimates.append(float(d.mean()))
            track.errors.append(float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0)
            track.per_env.append(per_env)
            z = combine(track.stage_z, self.cfg.looks)
            crossed = z >= self.bounds[k]
            failures = self._rule_failures(track) if crossed else []
            if crossed and not failures:
                passed.append(name)
            elif crossed:
                track.decision = self._decision(track, False, "rejected at look {look} of {looks}: crossed the "
                                                "boundary, but " + "; ".join(failures))
            elif last:
                track.decision = self._decision(track, False, "rejected at look {look} of {looks}: {why}")
            elif k < len(self.cfg.futility) and z < self.cfg.futility[k]:
                regressions = [f for f in self._rule_failures(track) if "regressed" in f]
                track.decision = self._decision(
                    track, False, f"rejected at look {{look}} of {{looks}} (futility): Z = {z:.3g} < "
                    f"{self.cfg.futility[k]:g}; gain so far {{gain}}" + "".join(f"; {r}" for r in regressions))
        if passed:
            best = max(passed, key=lambda n: (self._estimate(self.tracks[n]), -self.tracks[n].stage_p[-1]))
            self.tracks[best].decision = self._decision(self.tracks[best], True, "adopted at look {look} of "
                                                        "{looks}: {gain} (Z = {z} ≥ {bound}; p = {p} < {alpha}{note})")
            for name in self.running:
                track = self.tracks[name]
                if name in passed:
                    why = "passed the gate ({gain}, p = {p})"
                else:
                    why = "still running (Z = {z} < {bound})"
                track.decision = self._decision(track, False, f"rejected at look {{look}} of {{looks}}: {why}, "
                                                f"but '{best}' was adopted with a gain of "
                                                f"{self._estimate(self.tracks[best]):+.3g}")
        if self.running:
            return None
        return [self.tracks[n].decision for n in self.names]

    # ---- helpers ---------------------------------------------------------------------------------

    def _estimate(self, track: Track) -> float:
        return combined_estimate(track.estimates, track.errors, self.cfg.looks)

    def _pooled_env(self, track: Track) -> dict[str, dict[str, float]]:
        """Per environment: champion and candidate means over the looks so far, weighted by the looks' shares."""
        shares = np.diff([0.0, *self.cfg.looks])[: len(track.per_env)]
        out = {}
        for env in track.per_env[0]:
            champ = float(np.dot(shares, [p[env]["champion"] for p in track.per_env]) / shares.sum())
            cand = float(np.dot(shares, [p[env]["candidate"] for p in track.per_env]) / shares.sum())
            out[env] = {"champion": champ, "candidate": cand, "delta": cand - champ, "n": track.per_env[0][env]["n"]}
        return out

    def _rule_failures(self, track: Track) -> list[str]:
        failures = []
        gain = self._estimate(track)
        if gain < self.cfg.min_delta:
            failures.append(f"gain {gain:.3g} < min_delta {self.cfg.min_delta:g}")
        for env, m in self._pooled_env(track).items():
            if -m["delta"] > self.cfg.max_regression:
                failures.append(f"environment '{env}' regressed by {-m['delta']:.3g} > max_regression "
                                f"{self.cfg.max_regression:g}")
        return failures

    def _decision(self, track: Track, adopted: bool, template: str) -> Decision:
        look = len(track.stage_z)
        z = combine(track.stage_z, self.cfg.looks)
        p = stagewise_p_value(look, z, self.cfg.looks, self.bounds)
        gain = self._estimate(track)
        bound = float(self.bounds[look - 1])
        why = (f"Z = {z:.3g} < {bound:.3g} (p = {p:.3g} ≥ alpha {self.alpha:.3g}"
               + (f", {self.note})" if self.note else ")"))
        reason = template.format(look=look, looks=len(self.cfg.looks), gain=f"{gain:+.3g}", z=f"{z:.3g}",
                                 bound=f"{bound:.3g}", p=f"{p:.3g}", alpha=f"{self.alpha:.3g}",
                                 note=f"; {self.note}" if self.note else "", why=why)
        low, high = repeated_ci(track.estimates, track.errors, self.cfg.looks, float(self.ci_bounds[look - 1]))
        return Decision(
            candidate=track.name, parent=self.parent, adopted=adopted, reason=reason, p_value=p, alpha=self.alpha,
            mean_gain=gain, statistic=z, test=self.cfg.test, per_env=self._pooled_env(track), design="sequential",
            look=look, looks=len(self.cfg.looks), effect_ci=(low, high), boundary=bound,
            stage_z=list(track.stage_z), samples={"candidate": track.samples, "champion": self.champion_samples},
        )


def stage_p_values(diffs: np.ndarray, z_before: np.ndarray, k: int, cfg: GateConfig, bounds: np.ndarray,
                   strata: list[int] | None = None) -> np.ndarray:
    """One look's one-sided p-values of the configured test, one per column of ``diffs`` ``[n, R]``.

    ``z_before``: ``[k, R]`` stage z's of the earlier looks; ``k``: this look (0-based); ``bounds``: the
    efficacy boundaries. A column whose p must resolve a boundary finer than ``bootstrap_resamples`` can
    (the stage z it needs to cross is large, and its studentised mean is within 1 of it) is tested again
    with ``B = 10^ceil(log10(20 / p needed))`` resamples, at most ``max_resamples``: the p-value is valid
    at any B, but only fine enough with more. Columns needing the same B share one call (same sign
    vectors as a call for that column alone), so a vectorised simulation and one gate agree exactly.
    ``strata``: rows per environment, for the bootstrap.
    """
    d = as_columns(diffs)
    _, p = paired_test(d, cfg, strata)
    if cfg.test == "sign" or not math.isfinite(bounds[k]):
        return p
    w = weights(cfg.looks)[: k + 1]
    needed_z = (bounds[k] * math.sqrt(float(np.sum(w * w))) - w[:-1] @ np.asarray(z_before).reshape(k, -1)) / w[-1]
    needed_p = np.array([1.0 - _NORMAL.cdf(float(z)) for z in needed_z])
    resamples = np.minimum(cfg.max_resamples, 10 ** np.ceil(np.log10(20 / np.maximum(needed_p, 1e-300))))
    finer = (resamples > cfg.bootstrap_resamples) & (studentised_mean(d) >= needed_z - 1.0)
    for b in np.unique(resamples[finer]):
        cols = np.flatnonzero(finer & (resamples == b))
        p[cols] = paired_test(d[:, cols], cfg.model_copy(update={"bootstrap_resamples": int(b)}), strata)[1]
    return p
