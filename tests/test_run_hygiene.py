"""What a run folder and its metrics file promise whatever happens: strict JSON, nothing of an earlier run
appended to or lost, and a clear error for an output folder that cannot be one."""

from __future__ import annotations

import json
import math

import pytest

from rayrl.cli import main
from rayrl.config import Config
from rayrl.errors import StorageError
from rayrl.plotting import plot_training_curves
from rayrl.storage.run_folder import RunFolder
from rayrl.tracking import MetricsWriter, read_metrics


def strict(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_metrics_are_written_as_null_and_flagged(tmp_path):
    writer = MetricsWriter(Config(), tmp_path, None)
    writer.write({"step": 1, "reward_mean": math.nan, "loss": math.inf, "tokens": 3.0})
    writer.write({"step": 2, "reward_mean": 0.5, "loss": 1.0, "tokens": 3.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    first = strict(lines[0])
    assert first["reward_mean"] is None and first["loss"] is None and first["nonfinite"] == ["reward_mean", "loss"]
    assert "nonfinite" not in strict(lines[1])
    plot_training_curves(read_metrics(tmp_path / "metrics.jsonl"), tmp_path / "m.png")  # nulls are gaps
    assert (tmp_path / "m.png").is_file()


def test_an_earlier_runs_metrics_are_kept_aside_never_appended_to(tmp_path):
    folder = RunFolder(str(tmp_path))
    for n in (1, 2):
        (tmp_path / "metrics.jsonl").write_text(f'{{"step": {n}}}\n')
        assert folder.set_aside_stale_metrics().name == f"metrics.jsonl.{n}.old"
    assert not (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl.1.old").read_text() == '{"step": 1}\n'


def test_an_output_folder_that_cannot_be_one_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match="is a file: name a folder"):
        RunFolder(str(tmp_path / "afile")).create()
    with pytest.raises(StorageError, match="cannot write there"):
        RunFolder(str(tmp_path / "afile" / "below")).create()
    assert main(["train", "--max_steps", "1", "--output-dir", str(tmp_path / "afile")]) == 2
    assert "is a file: name a folder" in capsys.readouterr().err


def test_a_fresh_run_in_a_crashed_runs_folder_starts_its_own_metrics(tmp_path, small_config):
    from rayrl.driver import Trainer

    (tmp_path / "metrics.jsonl").write_text('{"step": 7}\n')  # a run that died before its first checkpoint
    Trainer(small_config(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl.1.old").is_file()
