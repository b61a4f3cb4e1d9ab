"""``rayrl gate plan``: the gate's power and cost, from rayrl.evaluation.planning (pure maths, no Ray)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import pytest

from rayrl.cli import main
from rayrl.evaluation.gate import GateConfig
from rayrl.evaluation.planning import (
    Inputs,
    beta_variance,
    fixed_plan,
    iteration_fractions,
    profile_variance,
    sample_variance,
    sequential_crossing,
    sequential_plan,
    what_buys_what,
)
from rayrl.tuning.lineage import Lineage
from rayrl.tuning.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "sweeps" / "promotion_demo.toml")


def sweep_file(tmp_path: Path, samples: int = 4, candidates: int = 3) -> str:
    """A sweep like the demo's, with K samples, its output folder in tmp_path."""
    path = tmp_path / "sweep.toml"
    path.write_text(f'base = "{ROOT}/experiments/default.toml"\nname = "plan"\ncandidates = {candidates}\n'
                    f'output_dir = "{tmp_path / "out"}"\n[overrides]\neval.confirm_examples = 500\n'
                    f'[[variants]]\nname = "a"\n[gate]\nsamples = {samples}\n')
    return str(path)


def plan_output(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["gate", "plan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- the maths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("accuracy", "m", "mde"), [
    (0.41, 1, 0.030), (0.41, 3, 0.036), (0.80, 1, 0.024), (0.80, 3, 0.029), (0.87, 1, 0.020), (0.87, 3, 0.024),
])
def test_fixed_mde_matches_the_reference_figures(accuracy, m, mde):
    plan = fixed_plan(GateConfig(), Inputs(500, 4, m, beta_variance(accuracy)))
    assert round(plan.mde, 3) == mde
    assert plan.alpha == pytest.approx(0.05 / m)
    assert plan.cost_null == plan.max_cost == 2000 and plan.iteration_max == (m + 1) * 2000


def test_fixed_power_is_80_percent_at_its_mde():
    gate, inputs = GateConfig(), Inputs(500, 4, 3, beta_variance(0.8))
    mde = fixed_plan(gate, inputs).mde
    assert fixed_plan(gate, inputs, (mde,)).power[mde] == pytest.approx(0.8, abs=1e-9)


@pytest.mark.parametrize("m", [1, 3])
def test_sequential_power_at_its_mde_is_80_percent(m):
    gate, inputs = GateConfig(), Inputs(500, 4, m, beta_variance(0.8))
    plan = sequential_plan(gate, inputs)
    drift = plan.mde / plan.standard_error
    assert sequential_crossing(gate, plan.alpha, drift).power == pytest.approx(0.8, abs=1e-3)
    assert sequential_crossing(gate, plan.alpha, drift * 0.99).power < 0.8
    # the standard error is the full budget's (2 x K samples per example)
    assert plan.standard_error == pytest.approx(math.sqrt(2 * beta_variance(0.8) / (500 * 4 * 2)))
    assert plan.max_cost == 2 * 2000 and plan.cost_null < plan.cost_at_mde < plan.max_cost
    fixed = fixed_plan(gate, inputs)
    assert plan.mde < fixed.mde  # twice the samples at most ...
    k2 = fixed_plan(gate, Inputs(500, 8, m, beta_variance(0.8)))
    assert plan.mde > k2.mde  # ... but no more power than spending them all on one look


def test_variance_sources():
    assert beta_variance(0.8) == pytest.approx(0.8 * 0.2 * 0.6)
    # binary samples: the unbiased per-example variance is p(1-p) K / (K - 1)
    assert sample_variance([[1, 1, 0, 0], [1, 1, 1, 1], [1]]) == pytest.approx((0.25 * 4 / 3 + 0) / 2)
    profile = profile_variance({"a": [[1, 0], [1, 1]], "b": [0.5, 0.5]})
    assert profile.variance == pytest.approx((0.5 + 0 + 0.25 + 0.25) / 4) and profile.examples == 4
    assert profile.accuracy == pytest.approx((0.5 + 1 + 0.5 + 0.5) / 4)
    champion = profile_variance({"a": {"example_ids": ["1", "2", "3"], "sum": [2, 4, 1], "squares": [2, 4, 1],
                                       "count": [4, 4, 1]}})  # rayrl.tuning.profiles' format
    assert champion.variance == pytest.approx((0.25 * 4 / 3 + 0) / 2) and champion.examples == 2
    assert champion.accuracy == pytest.approx((0.5 + 1 + 1) / 3)
    with pytest.raises(ValueError, match="two samples"):
        sample_variance([[1], [0]])
    with pytest.raises(ValueError, match="between 0 and 1"):
        beta_variance(1.0)


def test_iteration_costs_with_null_candidates():
    gate = GateConfig()
    null = sequential_crossing(gate, 0.05 / 3, 0.0)
    champion, candidates = iteration_fractions(gate.looks, [null] * 3)
    assert candidates == pytest.approx([null.expected_fraction] * 3, abs=0.01)  # adoption by a null one is rare
    assert max(candidates) <= champion <= 1.0  # the champion is scored while any candidate runs
    (alone, [same]) = iteration_fractions(gate.looks, [null])
    assert alone == pytest.approx(same) == pytest.approx(null.expected_fraction)


def test_alpha_over_iterations_and_candidates(capsys, tmp_path):
    gate = GateConfig()
    assert sequential_plan(gate, Inputs(500, 4, 3, 0.1, iterations=2)).alpha == pytest.approx(0.05 / 6)
    per_iteration = gate.model_copy(update={"alpha_scope": "iteration"})
    assert fixed_plan(per_iteration, Inputs(500, 4, 3, 0.1, iterations=2)).alpha == pytest.approx(0.05 / 3)
    path = Path(sweep_file(tmp_path))
    path.write_text(path.read_text().replace('name = "plan"', 'name = "plan"\niterations = 2'))
    code, out, err = plan_output(capsys, str(path), "--accuracy", "0.8")
    assert code == 0, err
    assert "  alpha'  0.008333  one-sided, per candidate (gate.alpha 0.05 / 2 iterations (alpha_scope sweep" in out


def test_what_buys_what():
    gate, inputs = GateConfig(), Inputs(500, 4, 3, beta_variance(0.8))
    levers = {lever.change: lever for lever in what_buys_what(gate, inputs, eval_examples=1000)}
    assert list(levers) == ["today", "K x2", "n x2", "budget 3", "crn 0.6"]
    today = levers["today"]
    # K x2 and n x2 both halve the variance: MDE / sqrt(2) at twice the samples
    for change in ("K x2", "n x2"):
        assert levers[change].fixed.mde == pytest.approx(today.fixed.mde / math.sqrt(2))
        assert levers[change].sequential.mde == pytest.approx(today.sequential.mde / math.sqrt(2), rel=1e-3)
        assert levers[change].fixed.max_cost == 2 * today.fixed.max_cost
    assert "eval.confirm_examples = 1000" in levers["n x2"].setting and "at least 2000" in levers["n x2"].setting
    assert levers["budget 3"].fixed is None
    assert levers["budget 3"].sequential.mde == pytest.approx(today.sequential.mde * math.sqrt(2 / 3), rel=1e-3)
    assert levers["budget 3"].sequential.max_cost == 3 * 2000
    assert levers["crn 0.6"].fixed.mde == pytest.approx(today.fixed.mde * math.sqrt(0.6))


# ---- the command -----------------------------------------------------------------------------------


def test_plan_prints_the_table(capsys, tmp_path):
    code, out, err = plan_output(capsys, sweep_file(tmp_path), "--accuracy", "0.8")
    assert code == 0, err
    lines = out.splitlines()
    assert "  n           500  confirmation examples (eval.confirm_examples 500 x 1 environment)" in lines
    assert "  alpha'  0.01667  one-sided, per candidate (gate.alpha 0.05 / 3 candidates, bonferroni)" in lines
    assert any(line.startswith("  p         0.800  champion accuracy (--accuracy)") for line in lines)
    assert any(line.startswith("  v        0.0960  ") for line in lines)
    fixed = next(line.split() for line in lines if line.startswith("  fixed  ") and "MDE" not in line)
    assert fixed[:4] == ["fixed", "0.029", "0.465", "0.999"] and fixed[4:6] == ["2000", "(1.00x)"]
    sequential = next(line.split() for line in lines if line.startswith("  sequential "))
    assert sequential[1] == "0.022" and sequential[-2:] == ["4000", "(2.00x)"]
    assert "what buys what" in out
    k2 = next(line.split() for line in lines if line.startswith("  K x2"))
    assert k2[2:4] == ["0.021", "2.00x"] and k2[-3:] == ["gate.samples", "=", "8"]
    assert any(line.startswith("  budget 3  ") and "gate.budget = 3" in line for line in lines)


def test_plan_on_the_demo_sweep(capsys, monkeypatch):
    sweep = load_sweep(DEMO)
    monkeypatch.chdir(ROOT)
    code, out, err = plan_output(capsys, "experiments/sweeps/promotion_demo.toml", "--accuracy", "0.8")
    assert code == 0, err
    n, k, m = sweep.config().eval.confirm_examples, sweep.gate.samples, sweep.candidates
    se = math.sqrt(2 * 0.8 * 0.2 * 0.6 / (n * k))
    mde = (NormalDist().inv_cdf(1 - 0.05 / m) + NormalDist().inv_cdf(0.8)) * se
    inputs = {line.split()[0]: line.split()[1] for line in out.splitlines()[3:11]}
    assert inputs["n"] == str(n) and inputs["K"] == str(k) and inputs["m"] == str(m) and inputs["p"] == "0.800"
    fixed = next(line.split() for line in out.splitlines() if line.startswith("  fixed  ") and "MDE" not in line)
    assert fixed[1] == f"{mde:.3f}" and fixed[4] == str(n * k)
    assert "what buys what" in out and "  sequential  " in out
    docs = (ROOT / "docs" / "tuning.md").read_text()
    assert f"$ rayrl gate plan experiments/sweeps/promotion_demo.toml --accuracy 0.8\n{out}```" in docs


def test_plan_reads_the_champion_from_the_lineage(capsys, tmp_path):
    path = sweep_file(tmp_path)
    Lineage(tmp_path / "out").start("runs/x/checkpoints/step_1", metrics={"arithmetic": 0.41})
    code, out, err = plan_output(capsys, path)
    assert code == 0, err
    assert "  p         0.410  champion accuracy (champion 'initial' of iteration 0" in out
    assert next(line.split() for line in out.splitlines() if line.startswith("  fixed  "))[1] == "0.036"


def test_plan_without_accuracy_names_the_option(capsys, tmp_path):
    code, out, err = plan_output(capsys, sweep_file(tmp_path))
    assert code == 2 and out == ""
    assert err.startswith("error: no champion accuracy:") and "--accuracy" in err
    assert str(tmp_path / "out" / "champion") in err


def test_plan_options(capsys, tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"arithmetic": [[1, 0, 1, 0]] * 10 + [[1, 1, 1, 1]] * 30}))
    code, out, err = plan_output(capsys, sweep_file(tmp_path), "--profile", str(profile), "--crn", "0.75",
                                 "--examples", "1000")
    assert code == 0, err
    assert "  n          1000  confirmation examples (--examples 1000 x 1 environment)" in out
    assert f"  v        {0.25 * 4 / 3 / 4:.4f}  " in out and "measured: mean per-example variance of 40" in out
    assert "  p         0.875  champion accuracy (mean reward in" in out
    assert "  crn        0.75  variance factor of common random numbers (--crn)" in out
    code, _, err = plan_output(capsys, sweep_file(tmp_path), "--accuracy", "1")
    assert code == 2 and "--accuracy must lie strictly between 0 and 1" in err
    code, _, err = plan_output(capsys, sweep_file(tmp_path), "--profile", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err


@pytest.mark.parametrize("argv", [["gate", "--help"], ["gate", "plan", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and "plan" in capsys.readouterr().out


def test_gate_plan_starts_no_ray(tmp_path):
    code = ("import sys, time; from rayrl.cli import main; t = time.process_time(); "
            f"rc = main(['gate', 'plan', {sweep_file(tmp_path)!r}, '--accuracy', '0.8']); "
            "assert rc == 0 and 'ray' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules); "
            "assert time.process_time() - t < 5, time.process_time() - t")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_effect_heterogeneity_is_not_bought_down_by_more_samples(capsys):
    """tau^2 (the true gain varying over examples) adds tau^2 / n to the squared standard error whatever K is:
    with the promotion demo's measured 0.0375, doubling K buys little and doubling n buys what it always did."""
    gate = GateConfig()
    flat, varied = Inputs(500, 4, 1, 0.126, 0.42), Inputs(500, 4, 1, 0.126, 0.42, heterogeneity=0.0375)
    assert fixed_plan(gate, varied).mde == pytest.approx(
        (NormalDist().inv_cdf(0.95) + NormalDist().inv_cdf(0.8)) * math.sqrt((2 * 0.126 * 0.42 / 4 + 0.0375) / 500))
    more_k = Inputs(500, 8, 1, 0.126, 0.42, heterogeneity=0.0375)
    more_n = Inputs(1000, 4, 1, 0.126, 0.42, heterogeneity=0.0375)
    assert fixed_plan(gate, flat).mde / fixed_plan(gate, Inputs(500, 8, 1, 0.126, 0.42)).mde == pytest.approx(math.sqrt(2))
    assert fixed_plan(gate, varied).mde / fixed_plan(gate, more_k).mde < 1.15
    assert fixed_plan(gate, varied).mde / fixed_plan(gate, more_n).mde == pytest.approx(math.sqrt(2))
    assert main(["gate", "plan", str(ROOT / "experiments/sweeps/promotion_demo.toml"), "--accuracy", "0.7",
                 "--tau2", "0.0375"]) == 0
    assert "tau^2    0.0375" in capsys.readouterr().out
    assert main(["gate", "plan", str(ROOT / "experiments/sweeps/promotion_demo.toml"), "--accuracy", "0.7",
                 "--tau2", "-1"]) == 2
    assert "--tau2 must be at least 0" in capsys.readouterr().err
