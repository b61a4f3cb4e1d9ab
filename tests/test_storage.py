"""``rayrl archive`` / ``rayrl restore`` through pyarrow.fs: local paths, file://, and s3:// against moto on loopback.

Most tests use a hand-made run folder (real files in the layout a run writes); the slow test archives,
restores and resumes a real trained run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from rayrl.cli import main
from rayrl.storage.archive import MARKER, archive, restore


def make_run_folder(root: Path, steps=(1, 2, 3), latest: int | None = 3) -> Path:
    """A hand-made run folder with the layout of a real run (random bytes stand in for the weights)."""
    run = root / "handmade-run"
    ckpts = run / "checkpoints"
    for step in steps:
        d = ckpts / f"step_{step}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(os.urandom(50_000 + step))
        (d / "optimizer.pt").write_bytes(os.urandom(20_000))
        (d / "config.json").write_text(json.dumps({"hidden_size": 32}))
        (d / "training_info.json").write_text(json.dumps({"step": step, "policy_version": step}))
    if latest is not None:
        (ckpts / "latest").write_text(f"step_{latest}\n")
    leftover = ckpts / ".tmp-step_9-abcd"  # an interrupted save: never archived
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward_mean": 0.1 * s}) + "\n" for s in steps))
    return run


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def archived(run: Path) -> dict[str, str]:
    return {k: v for k, v in tree(run).items() if ".tmp-step_" not in k}


def test_local_path_round_trip_is_byte_identical(tmp_path):
    run = make_run_folder(tmp_path)
    result = archive(run, str(tmp_path / "archives"))
    assert result.uri == str(tmp_path / "archives" / run.name)
    assert sorted(p.name for p in (tmp_path / "archives").iterdir()) == [run.name]  # no staging left behind
    manifest = json.loads((tmp_path / "archives" / run.name / MARKER).read_text())
    assert set(manifest["files"]) == set(archived(run)) and result.files == len(manifest["files"])

    restored = restore(result.uri, tmp_path / "restored")
    assert tree(restored.run_dir) == archived(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archives", "handmade-run", "restored"]


def test_file_uri_round_trip_through_the_cli(tmp_path, capsys):
    run = make_run_folder(tmp_path)
    assert main(["archive", str(run), f"file://{tmp_path}/store"]) == 0
    out = capsys.readouterr().out
    uri = f"file://{tmp_path}/store/{run.name}"
    assert f"to {uri}" in out
    assert main(["restore", uri, str(tmp_path / "back")]) == 0
    assert "checksums verified" in capsys.readouterr().out
    assert tree(tmp_path / "back") == archived(run)


def test_restore_refuses_an_archive_without_its_marker(tmp_path, capsys):
    run = make_run_folder(tmp_path)
    uri = archive(run, str(tmp_path / "store")).uri
    (Path(uri) / MARKER).unlink()
    assert main(["restore", uri, str(tmp_path / "back")]) == 2
    assert f"no {MARKER} marker" in capsys.readouterr().err
    assert not (tmp_path / "back").exists()


def test_restore_refuses_a_corrupted_file_and_leaves_nothing(tmp_path, capsys):
    run = make_run_folder(tmp_path)
    uri = archive(run, str(tmp_path / "store")).uri
    weights = Path(uri) / "checkpoints" / "step_2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(data))
    assert main(["restore", uri, str(tmp_path / "back")]) == 2
    assert "step_2/model.safetensors" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["handmade-run", "store"]  # no staging folder either


@pytest.mark.parametrize(
    ("latest", "keep", "deleted", "kept"),
    [
        (3, 1, ["step_1", "step_2"], ["step_3"]),
        (2, 1, ["step_1"], ["step_2", "step_3"]),  # `latest` is never deleted
        (3, 0, ["step_1", "step_2"], ["step_3"]),
        (3, 5, [], ["step_1", "step_2", "step_3"]),
    ],
)
def test_keep_latest_deletes_exactly_the_older_checkpoints(tmp_path, capsys, latest, keep, deleted, kept):
    run = make_run_folder(tmp_path, latest=latest)
    assert main(["archive", str(run), str(tmp_path / "store"), "--keep-latest", str(keep)]) == 0
    out = capsys.readouterr().out
    assert f"deleted local checkpoints: {', '.join(deleted) or 'none'}; kept: {', '.join(kept)}" in out
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == kept
    assert len([k for k in tree(tmp_path / "store" / run.name) if k.endswith("model.safetensors")]) == 3


def test_a_failed_local_upload_leaves_no_archive_and_deletes_nothing(tmp_path, capsys, monkeypatch):
    import rayrl.storage

    def broken(target, manifest):
        raise rayrl.storage.archive.StorageError(f"{target.uri}: after upload, 1 file(s) are missing")

    monkeypatch.setattr(rayrl.storage.archive, "verify_listing", broken)
    run = make_run_folder(tmp_path)
    assert main(["archive", str(run), str(tmp_path / "store"), "--keep-latest", "0"]) == 2
    assert "missing" in capsys.readouterr().err
    assert list((tmp_path / "store").iterdir()) == []  # the staging folder is gone, nothing was renamed
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_1", "step_2", "step_3"]


def test_force_semantics(tmp_path, capsys):
    run = make_run_folder(tmp_path)
    store = tmp_path / "store"
    assert main(["archive", str(run), str(store)]) == 0
    assert main(["archive", str(run), str(store)]) == 2
    assert "already holds a complete archive; pass --force" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"step": 4}\n')
    assert main(["archive", str(run), str(store), "--force"]) == 0
    assert (store / run.name / "metrics.jsonl").read_text() == '{"step": 4}\n'
    assert sorted(p.name for p in store.iterdir()) == [run.name]

    target = tmp_path / "existing"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["restore", str(store / run.name), str(target)]) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "mine"
    assert main(["restore", str(store / run.name), str(target), "--force"]) == 0
    assert tree(target) == archived(run)
    (tmp_path / "empty").mkdir()  # an empty folder needs no --force
    assert main(["restore", str(store / run.name), str(tmp_path / "empty")]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["archive", "{tmp}/missing", "{tmp}/store"], "missing does not exist"),
        (["archive", "{tmp}/plain", "{tmp}/store"], "is not a rayrl run folder"),
        (["archive", "{tmp}/handmade-run", "ftp://host/x"], "unsupported URI scheme 'ftp://'"),
        (["archive", "{tmp}/handmade-run", "{tmp}/handmade-run/backup"], "is inside the run folder"),
        (["archive", "{tmp}/handmade-run", "{tmp}/store", "--keep-latest", "-1"], "--keep-latest must be 0 or more"),
        (["restore", "{tmp}/nowhere", "{tmp}/back"], "no archive; refusing to restore it"),
        (["restore", "gopher://x/y", "{tmp}/back"], "unsupported URI scheme 'gopher://'"),
    ],
)
def test_user_errors_exit_2_with_a_clear_message(tmp_path, capsys, argv, message):
    make_run_folder(tmp_path)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a run")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


# ---- s3:// against moto's S3 server on loopback ---------------------------------------------------
def test_s3_round_trip_and_marker_refusal(tmp_path, capsys, s3_server):
    run = make_run_folder(tmp_path)
    before = archived(run)
    assert main(["archive", str(run), f"s3://rayrl/runs?{s3_server}", "--keep-latest", "1"]) == 0
    out = capsys.readouterr().out
    uri = f"s3://rayrl/runs/{run.name}?{s3_server}"
    assert f"to {uri}" in out and "deleted local checkpoints: step_1, step_2; kept: step_3" in out
    assert main(["restore", uri, str(tmp_path / "back")]) == 0
    assert tree(tmp_path / "back") == before  # what was archived, before --keep-latest pruned the local copy

    assert main(["archive", str(run), f"s3://rayrl/runs?{s3_server}"]) == 2  # exists, no --force
    assert "already holds a complete archive" in capsys.readouterr().err

    from pyarrow import fs as pafs

    s3, path = pafs.FileSystem.from_uri(f"s3://rayrl/runs/{run.name}?{s3_server}")
    s3.delete_file(f"{path}/{MARKER}")  # as if the upload had died before its last write
    assert main(["restore", uri, str(tmp_path / "back2")]) == 2
    assert f"no {MARKER} marker" in capsys.readouterr().err
    assert main(["archive", str(run), f"s3://rayrl/runs?{s3_server}"]) == 2
    assert f"an incomplete archive (no {MARKER}); pass --force" in capsys.readouterr().err
    assert main(["archive", str(run), f"s3://rayrl/runs?{s3_server}", "--force"]) == 0
    assert main(["restore", uri, str(tmp_path / "back2")]) == 0
    assert tree(tmp_path / "back2") == archived(run)


# ---- a real run: train, archive with --keep-latest, restore, resume ------------------------------
@pytest.mark.slow
def test_restored_real_run_resumes(ray_cluster, small_config, tmp_path, capsys):
    from rayrl.storage.checkpoints import CheckpointStore
    from rayrl.driver import train

    tiny = {"warmstart": {"enabled": False}, "eval": {"interval": 0, "at_start": False}}
    run = tmp_path / "real-run"
    train(small_config(run, max_steps=2, ckpt={"interval": 1, "keep": 0}, **tiny))
    assert CheckpointStore(run / "checkpoints").steps() == [1, 2]
    assert main(["archive", str(run), f"file://{tmp_path}/store", "--keep-latest", "1"]) == 0
    assert "deleted local checkpoints: step_1; kept: step_2" in capsys.readouterr().out

    restored = tmp_path / "restored"
    assert main(["restore", str(tmp_path / "store" / run.name), str(restored)]) == 0
    assert CheckpointStore(restored / "checkpoints").steps() == [1, 2]  # the archive kept what was pruned
    weights = "checkpoints/step_2/model.safetensors"
    assert (restored / weights).read_bytes() == (run / weights).read_bytes()

    result = train(small_config(restored, max_steps=3, ckpt={"interval": 1, "keep": 0, "resume_step": -1}, **tiny))
    assert result.final_step == 3
    steps = [json.loads(line)["step"] for line in (restored / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
