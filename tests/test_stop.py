"""A run stopped by a signal (Ctrl-C, ``kill``, ``ray job stop``) ends with a final checkpoint and one line
naming the step reached and the command that resumes; that command finishes the run, every step once."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from rayrl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def experiment_file(cfg, path: Path) -> Path:
    """``cfg`` as an experiment TOML (TOML has no null: unset keys are left out)."""

    def drop_none(value):
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_none(v) for v in value]
        return value

    raw = drop_none(cfg.model_dump(mode="json"))
    raw.pop("output_dir", None)
    path.write_text(tomli_w.dumps(raw))
    return path


def metric_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def rayrl_command(tokens: list[str]) -> list[str]:
    assert tokens[0] == "rayrl"
    return [sys.executable, "-m", "rayrl.cli", *tokens[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM])  # SIGINT takes the same path (tried by hand)
def test_a_signal_stops_with_a_final_checkpoint_and_the_printed_command_resumes(tmp_path, small_config, base_model_path, signum):
    cfg = small_config(max_steps=10, eval={"interval": 0}, ckpt={"interval": 100, "keep": 0})
    experiment = experiment_file(cfg, tmp_path / "exp.toml")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        rayrl_command(["rayrl", "train", str(experiment), "--output-dir", str(run)]), cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while len(metric_steps(run)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signum)  # the driver alone, as `kill PID` and `ray job stop` do
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "Traceback" not in out, err
    steps = metric_steps(run)
    reached = steps[-1]
    assert 3 <= reached < cfg.max_steps and steps == list(range(1, reached + 1))
    line = out.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert line.startswith(f"stopped by {name} at step {reached} of {cfg.max_steps}"), out
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{reached}"
    info = json.loads((run / "checkpoints" / f"step_{reached}" / "training_info.json").read_text())
    assert info["step"] == reached

    resume = shlex.split(line.split("resume with: ", 1)[1])
    assert resume[0] == "rayrl" and resume[-4:] == ["--output-dir", str(run), "--ckpt.resume_step", "-1"]
    assert main(resume[1:]) == 0  # in this process, on the session's cluster (one Ray start less)
    assert metric_steps(run) == list(range(1, cfg.max_steps + 1))  # every step exactly once
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{cfg.max_steps}"
