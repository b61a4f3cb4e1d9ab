"""`rayrl eval` end to end on a real run: real Ray, the real tiny model, real checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, merge  # noqa: E402  (tests/ is on sys.path)

from rayrl.cli import main
from rayrl.config import Config
from rayrl.errors import EvalSplitError
from rayrl.evaluation.report import AGGREGATE, BASE_COLUMNS
from rayrl.evaluation.runner import evaluate_model
from rayrl.evaluation.stats import jeffreys_interval


@pytest.fixture(scope="module")
def run_dir(ray_cluster, base_model_path, model_cache, tmp_path_factory) -> Path:
    """A 2-step run with checkpoints at steps 1 and 2 (eval.num_examples = 30, greedy eval at step 2)."""
    from rayrl.driver import train

    out = tmp_path_factory.mktemp("eval-run") / "run"
    raw = merge(SMALL, {"max_steps": 2, "ckpt": {"interval": 1, "keep": 0}, "model": {"cache_dir": str(model_cache)},
                        "output_dir": str(out)})
    train(Config.model_validate(raw))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_eval_writes_per_step_and_consolidated_results(run_dir, capsys):
    before = snapshot(run_dir)
    assert main(["eval", str(run_dir)]) == 0
    after = snapshot(run_dir)
    # Read-only outside eval/: nothing else created, changed or removed.
    assert {k: v for k, v in after.items() if not k.startswith("eval")} == before
    eval_dir = run_dir / "eval"
    assert not [p.name for p in eval_dir.iterdir() if p.name.startswith(".")]  # no staging left behind

    consolidated = read_csv(eval_dir / "consolidated_metrics.csv")
    assert list(consolidated[0])[: len(BASE_COLUMNS)] == BASE_COLUMNS
    assert [(r["step"], r["env"]) for r in consolidated] == [
        ("1", "arithmetic"), ("1", AGGREGATE), ("2", "arithmetic"), ("2", AGGREGATE)
    ]
    for step in (1, 2):
        step_dir = eval_dir / f"step_{step}"
        rows = read_csv(step_dir / "metrics.csv")
        assert rows == [r for r in consolidated if r["step"] == str(step)]
        rewards = [json.loads(line)["reward"] for line in (step_dir / "completions.jsonl").read_text().splitlines()]
        assert len(rewards) == 30  # eval.num_examples, one greedy sample each
        env_row = rows[0]
        assert float(env_row["reward_mean"]) == pytest.approx(np.mean(rewards), abs=1e-12)
        assert float(env_row["accuracy"]) == float(env_row["reward_mean"])  # exact-match reward: binary
        assert (int(env_row["n"]), int(env_row["examples"])) == (30, 30)
        low, high = jeffreys_interval(int(sum(rewards)), 30)
        interval = (float(env_row["success_ci_low"]), float(env_row["success_ci_high"]))
        assert interval == pytest.approx((low, high), abs=1e-12)
        assert rows[1]["reward_mean"] == env_row["reward_mean"]  # one environment: aggregate = it
        summary = json.loads((step_dir / "summary.json").read_text())
        assert summary["step"] == step and summary["settings"]["temperature"] == 0.0
        assert summary["stats"]["arithmetic"]["n"] == 30

    # The step-2 checkpoint, greedy on the same 30 examples, scores what training logged at step 2.
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert float(consolidated[2]["reward_mean"]) == pytest.approx(next(m for m in logged if m["step"] == 2)["eval_reward_mean"])

    summary = json.loads((eval_dir / "summary.json").read_text())
    means = {s: float(consolidated[2 * (s - 1)]["reward_mean"]) for s in (1, 2)}
    assert summary["steps"] == [1, 2] and summary["envs"] == ["arithmetic"]
    assert summary["pareto_front"] == [s for s in (1, 2) if means[s] == max(means.values())]
    assert (eval_dir / "reward_by_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Same settings again: both steps are reused, nothing is re-evaluated.
    step_mtimes = {s: (eval_dir / f"step_{s}").stat().st_mtime_ns for s in (1, 2)}
    assert main(["eval", str(run_dir)]) == 0
    assert {s: (eval_dir / f"step_{s}").stat().st_mtime_ns for s in (1, 2)} == step_mtimes


def test_sampled_eval_is_reproducible(run_dir):
    args = ["eval", str(run_dir), "--steps", "2", "--samples", "2", "--temperature", "1.0", "--seed", "3", "--force"]
    step_dir = run_dir / "eval" / "step_2"
    outputs = []
    for _ in range(2):
        assert main(args) == 0
        outputs.append(((step_dir / "metrics.csv").read_text(), (step_dir / "completions.jsonl").read_text()))
    assert outputs[0] == outputs[1]
    rows = read_csv(step_dir / "metrics.csv")
    assert (rows[0]["n"], rows[0]["samples_per_example"]) == ("60", "2")
    # The consolidation only mixes steps evaluated with the same settings: step 1 was greedy.
    assert json.loads((run_dir / "eval" / "summary.json").read_text())["steps"] == [2]


def test_confirm_split_follows_the_eval_split(run_dir):
    from rayrl.envs.registry import build_envs

    cfg = Config.model_validate(json.loads((run_dir / "checkpoints/step_2/training_info.json").read_text())["config"])
    cfg.eval.confirm_examples = 10
    result = evaluate_model(cfg, str(run_dir / "checkpoints/step_2"), split="confirm")
    env = result.envs["arithmetic"]
    held_out = [ex.id for ex in build_envs(cfg)[0].examples("eval")]
    assert env.example_ids == held_out[30:40]  # after the eval.num_examples used for selection
    assert env.scores.shape == (10, 1) and len(env.completions) == 10

    cfg.eval.confirm_examples = 990
    with pytest.raises(EvalSplitError, match=r"'arithmetic' has 1000 .*eval.num_examples \(30\).*eval.confirm_examples \(990\)"):
        evaluate_model(cfg, str(run_dir / "checkpoints/step_2"), split="confirm")


@pytest.mark.parametrize("extra,message", [
    (["--steps", "7"], "no checkpoint for step(s) [7]; available steps: [1, 2]"),
    (["--env", "sat"], "unknown environment 'sat'; this run's environments: arithmetic"),
    (["--steps", "one"], "--steps: expected 'all', 'latest' or a comma-separated list"),
])
def test_eval_user_errors(run_dir, capsys, extra, message):
    assert main(["eval", str(run_dir), *extra]) == 2
    assert message in capsys.readouterr().err


def test_eval_missing_run_or_checkpoints(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "no checkpoints in" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
