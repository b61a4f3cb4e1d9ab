"""CheckpointStore on a local folder and on S3 (moto on loopback): the same guarantees on both."""

import json
import uuid
from pathlib import Path

import pytest

from rayrl.errors import CheckpointError
from rayrl.storage.checkpoints import CheckpointStore
from rayrl.storage.location import file_entries, open_location, upload_files, write_bytes


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A checkpoint root: a local folder, or a fresh prefix in the moto S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "checkpoints")
    query = request.getfixturevalue("s3_server")
    return f"s3://rayrl/ckpt-{uuid.uuid4().hex[:8]}/checkpoints?{query}"


def write_files(target: str, step: int, tmp_path) -> dict:
    """What the learner does: write the checkpoint's files into ``target`` and report size and sha256."""
    local = tmp_path / f"files-{step}-{uuid.uuid4().hex[:6]}"
    local.mkdir()
    (local / "model.safetensors").write_text(f"weights {step}")
    (local / "optimizer.pt").write_text(f"adam {step}")
    names = ["model.safetensors", "optimizer.pt"]
    loc = open_location(target)
    if loc.is_local:
        for n in names:
            (local / n).rename(f"{loc.path}/{n}")
        return file_entries(Path(loc.path), names)
    return upload_files(local, names, loc)


def save(store: CheckpointStore, step: int, tmp_path) -> str:
    target = store.begin(step)
    files = write_files(target, step, tmp_path)
    return store.commit(target, step, {"step": step, "files": files})


def test_commit_makes_it_complete_and_latest(root, tmp_path):
    store = CheckpointStore(root)
    save(store, 10, tmp_path)
    save(store, 20, tmp_path)
    assert store.steps() == [10, 20] and store.latest_step() == 20
    info = store.read_info(20)
    assert info["step"] == 20 and set(info["files"]) == {"model.safetensors", "optimizer.pt"}
    assert store.resolve(-1) == store.uri_of(20)


def test_files_without_a_commit_are_never_latest_and_are_cleaned_up(root, tmp_path):
    """A crash after the learner wrote its files and before the driver's commit: not a checkpoint."""
    store = CheckpointStore(root)
    save(store, 1, tmp_path)
    write_files(store.begin(2), 2, tmp_path)
    assert store.steps() == [1] and store.latest_step() == 1 and store.resolve(-1) == store.uri_of(1)
    assert len(store.remove_incomplete()) == 1
    assert store.steps() == [1] and store.remove_incomplete() == []


def test_a_file_missing_or_cut_short_makes_a_checkpoint_incomplete(root, tmp_path):
    store = CheckpointStore(root)
    save(store, 1, tmp_path)
    save(store, 2, tmp_path)
    loc = store.location(2).child("model.safetensors")
    write_bytes(loc, b"weig")  # truncated after the commit
    assert store.steps() == [1]
    with pytest.raises(CheckpointError, match="step_2', which is not a complete checkpoint"):
        store.latest_step()


def test_keep_rotates_old_checkpoints(root, tmp_path):
    store = CheckpointStore(root, keep=2)
    for step in (1, 2, 3, 4):
        save(store, step, tmp_path)
    assert store.steps() == [3, 4]


def test_resaving_a_step_replaces_it(root, tmp_path):
    store = CheckpointStore(root)
    save(store, 5, tmp_path)
    save(store, 6, tmp_path)
    save(store, 5, tmp_path)  # after resuming from step 5's predecessor: step 5 again, now the newest
    assert store.steps() == [5, 6] and store.latest_step() == 5


def test_an_interrupted_resave_leaves_latest_on_a_complete_checkpoint(s3_server, tmp_path):
    """Object stores have no rename: re-saving a step un-commits the old one first, and ``latest`` moves back."""
    store = CheckpointStore(f"s3://rayrl/resave-{uuid.uuid4().hex[:8]}?{s3_server}")
    save(store, 1, tmp_path)
    save(store, 2, tmp_path)
    write_files(store.begin(2), 2, tmp_path)  # the files of a new step 2, and a crash before the commit
    assert store.steps() == [1] and store.latest_step() == 1


def test_resolve(root, tmp_path):
    store = CheckpointStore(root)
    assert store.resolve(None) is None
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        store.resolve(-1)
    save(store, 3, tmp_path)
    assert store.resolve(3) == store.uri_of(3)
    with pytest.raises(CheckpointError, match=r"no checkpoint .*step_4.*available steps: \[3\]"):
        store.resolve(4)


def test_latest_pointing_at_missing_checkpoint_is_an_error(tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / "latest").write_text("step_9\n")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        store.latest_step()


def test_verify_names_a_file_changed_after_the_save(tmp_path):
    store = CheckpointStore(tmp_path)
    save(store, 1, tmp_path)
    store.verify(1)
    (store.path(1) / "optimizer.pt").write_text("adam 9")  # same size, other bytes
    with pytest.raises(CheckpointError, match="optimizer.pt differ from the checksums recorded"):
        store.verify(1)


def test_an_old_checkpoint_without_a_manifest_counts_with_model_and_optimizer(tmp_path):
    step = tmp_path / "step_7"
    step.mkdir()
    (step / "model.safetensors").write_text("w")
    (step / "training_info.json").write_text(json.dumps({"step": 7}))
    assert CheckpointStore(tmp_path).steps() == []
    (step / "optimizer.pt").write_text("o")
    assert CheckpointStore(tmp_path).steps() == [7]
