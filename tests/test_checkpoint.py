import json

import pytest

from rayrl.checkpoint import CheckpointStore
from rayrl.errors import CheckpointError


def save(store: CheckpointStore, step: int) -> None:
    staging = store.staging(step)
    (staging / "model.safetensors").write_text(f"weights {step}")
    store.commit(staging, step, {"step": step})


def test_commit_renames_into_place_and_updates_latest(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    save(store, 10)
    save(store, 20)
    assert store.steps() == [10, 20]
    assert store.latest_step() == 20
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_20"
    assert json.loads((store.path(20) / "training_info.json").read_text()) == {"step": 20}
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


def test_interrupted_save_is_never_latest_and_is_cleaned_up(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 1)
    staging = store.staging(2)  # a crash here: files written, never committed
    (staging / "model.safetensors").write_text("half")
    assert store.latest_step() == 1 and store.steps() == [1]
    assert store.resolve(-1) == store.path(1)
    assert store.remove_stale_staging() == [staging.name]
    assert not staging.exists()


def test_keep_rotates_old_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        save(store, step)
    assert store.steps() == [3, 4]


def test_resaving_a_step_replaces_it(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 5)
    save(store, 5)
    assert store.steps() == [5] and store.latest_step() == 5


def test_resolve(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.resolve(None) is None
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        store.resolve(-1)
    save(store, 3)
    assert store.resolve(3) == store.path(3)
    with pytest.raises(CheckpointError, match=r"no checkpoint .*step_4.*available steps: \[3\]"):
        store.resolve(4)


def test_latest_pointing_at_missing_checkpoint_is_an_error(tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / "latest").write_text("step_9\n")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        store.latest_step()
