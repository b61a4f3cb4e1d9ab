"""Damaged checkpoints are found, named and routed around: a resume uses the newest intact checkpoint (with a
warning naming the file and what is wrong) and sets the damaged one aside; ``rayrl eval`` lists it in its
summary and evaluates the others."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from rayrl.errors import CheckpointError
from rayrl.storage.checkpoints import CheckpointStore
from rayrl.storage.location import file_entries


def save(store: CheckpointStore, step: int) -> Path:
    """A checkpoint as the learner and driver commit it, with small stand-in files."""
    target = Path(store.begin(step))
    (target / "model.safetensors").write_bytes(os.urandom(3000))
    (target / "optimizer.pt").write_bytes(os.urandom(5000))
    (target / "scheduler.pt").write_bytes(os.urandom(100))
    files = file_entries(target, ["model.safetensors", "optimizer.pt", "scheduler.pt"])
    return Path(store.commit(str(target), step, {"step": step, "files": files}))


def truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def flip_a_byte(folder: Path) -> None:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def garble_info(folder: Path) -> None:
    path = folder / "training_info.json"
    path.write_text(path.read_text()[:40])


DAMAGE = {
    "truncated weights": (truncate, "model.safetensors is 1000 bytes, 3000 when saved"),
    "a flipped byte": (flip_a_byte, "model.safetensors differ from the checksums recorded"),
    "optimizer missing": (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt missing"),
    "garbled training_info.json": (garble_info, "training_info.json cannot be read"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_falls_back_to_the_newest_intact_checkpoint_and_sets_the_damaged_one_aside(tmp_path, caplog, kind):
    damage, message = DAMAGE[kind]
    store = CheckpointStore(tmp_path)
    for step in (2, 4, 6):
        save(store, step)
    damage(tmp_path / "step_6")
    assert store.problem(6) is not None and message in store.problem(6)
    with pytest.raises(CheckpointError, match=f"ckpt.resume_step = 6: checkpoint .* is damaged: {message}"):
        store.resolve(6)
    with caplog.at_level(logging.WARNING):
        assert store.resolve(-1) == store.uri_of(4)
    assert message in caplog.text and "trying the one before it" in caplog.text
    assert (tmp_path / "broken-step_6").is_dir() and not (tmp_path / "step_6").exists()  # kept, out of the way
    assert store.latest_step() == 4 and store.step_folders() == [2, 4]


def test_no_intact_checkpoint_is_an_error_naming_each_problem(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in (2, 4):
        save(store, step)
    truncate(tmp_path / "step_2")
    (tmp_path / "step_4" / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint .* is intact: step_4: optimizer.pt missing; step_2: model"):
        store.resolve(-1)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_reported_by_eval_and_routed_around_by_resume(
    ray_cluster, small_config, base_model_path, tmp_path, capsys, caplog
):
    from rayrl.cli import main
    from rayrl.driver import train

    run = tmp_path / "run"
    train(small_config(run, max_steps=4, eval={"interval": 0}, ckpt={"interval": 2, "keep": 0}))
    flip_a_byte(run / "checkpoints" / "step_4")

    assert main(["eval", str(run), "--num-examples", "5"]) == 1
    out = capsys.readouterr().out
    assert "1 checkpoints evaluated, 0 reused, 1 damaged (step 4: see summary.json)" in out
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["steps"] == [2] and "model.safetensors differ" in summary["broken_checkpoints"]["4"]

    with caplog.at_level(logging.WARNING):
        result = train(small_config(run, max_steps=6, eval={"interval": 0},
                                    ckpt={"interval": 2, "keep": 0, "resume_step": -1}))
    assert "step_4 is damaged: model.safetensors differ" in caplog.text
    assert result.final_step == 6 and (run / "checkpoints" / "broken-step_4").is_dir()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 trained again from step 2, each listed once
    assert CheckpointStore(run / "checkpoints").intact_steps() == [2, 4, 6]
