"""Disk space: the check before a checkpoint save, a full disk met while writing, and ``rayrl du``."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from pathlib import Path

import pytest

from rayrl.cli import main
from rayrl.errors import DiskSpaceError
from rayrl.storage.checkpoints import CheckpointStore
from rayrl.storage.disk import (
    best_effort,
    check_free_space,
    human_size,
    is_no_space,
    no_space_error,
)
from rayrl.storage.location import file_entries

GB = 10**9
DEV_FULL = Path("/dev/full")  # every write fails with ENOSPC (Linux)
needs_dev_full = pytest.mark.skipif(
    not (DEV_FULL.exists() and stat.S_ISCHR(DEV_FULL.stat().st_mode)), reason="no /dev/full device"
)


def save(store: CheckpointStore, step: int, model_bytes: int = 1000) -> str:
    """A checkpoint as the learner and driver write it, with small stand-in files."""
    target = Path(store.begin(step))
    (target / "model.safetensors").write_bytes(os.urandom(model_bytes))
    (target / "optimizer.pt").write_bytes(os.urandom(2 * model_bytes))
    files = file_entries(target, ["model.safetensors", "optimizer.pt"])
    return store.commit(str(target), step, {"step": step, "files": files})


def write_to_full_disk() -> OSError:
    try:
        with open(DEV_FULL, "wb") as f:  # a plain write: never replaces the device node
            f.write(b"weights")
    except OSError as e:
        return e
    raise AssertionError("a write to /dev/full succeeded")


# ---- the check before a save -----------------------------------------------------------------------
def test_a_save_is_refused_when_the_checkpoint_and_margin_exceed_the_free_space(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")  # keep all three (as after ckpt.keep was lowered)
    for step in (10, 20, 30):
        save(store, step, model_bytes=1000 * step)
    store.keep = 2
    store.check_space(min_free_gb=0)  # a few kB: fits
    with pytest.raises(DiskSpaceError) as info:
        store.check_space(min_free_gb=10**6)
    message, sizes = str(info.value), store.sizes()
    assert sorted(sizes) == [10, 20, 30]
    assert f"checkpoint folder {tmp_path / 'checkpoints'}:" in message
    assert f"needs {human_size(sizes[30] + 10**6 * GB)} free ({human_size(sizes[30])}, the size of step_30" in message
    assert "plus ckpt.min_free_gb 1e+06 GB" in message
    # keep 2: after the next save step_10 and step_20 go anyway; step_30 (the newest) is never offered
    assert (f"deleting the 2 oldest checkpoints (step_10, step_20; ckpt.keep 2 deletes them after the next save "
            f"anyway) would free {human_size(sizes[10] + sizes[20])}") in message  # fmt: skip
    assert message.endswith("then resume with --ckpt.resume_step -1")


def test_the_first_save_is_checked_against_the_estimate(tmp_path):
    store = CheckpointStore(tmp_path / "not-made-yet" / "checkpoints", keep=3)
    store.check_space(min_free_gb=0, estimate_bytes=10**6)
    with pytest.raises(DiskSpaceError) as info:
        store.check_space(min_free_gb=1, estimate_bytes=10**18)
    message = str(info.value)
    assert f"needs {human_size(10**18 + GB)} free ({human_size(10**18)}, estimated from the model" in message
    assert message.endswith(" free; free space on that filesystem; then run again")


@pytest.mark.parametrize("keep, sizes, hint", [
    (2, {10: 2 * GB, 20: 2 * GB}, ("deleting the oldest checkpoint (step_10; ckpt.keep 2 deletes it after the "
                                   "next save anyway) would free 2.0 GB, or free space on that filesystem")),
    (1, {10: 2 * GB, 20: 2 * GB}, "deleting the oldest checkpoint (step_10;"),  # never step_20, the newest
    (3, {10: 2 * GB, 20: 2 * GB}, "deleting older checkpoints by hand (step_10; ckpt.keep 3 keeps it) would free 2.0 GB"),
    (9, {5: GB, 10: 2 * GB, 20: 2 * GB}, "by hand (step_5, step_10; ckpt.keep 9 keeps them) would free 3.0 GB"),
    (0, {10: 2 * GB, 20: 2 * GB}, "by hand (step_10; ckpt.keep 0 keeps every checkpoint) would free 2.0 GB"),
    (2, {20: 2 * GB}, "free space on that filesystem, or lower"),  # the only checkpoint is never offered
])  # fmt: skip
def test_the_message_says_what_deleting_old_checkpoints_would_free(keep, sizes, hint):
    with pytest.raises(DiskSpaceError) as info:
        check_free_space("/ckpt", sizes, keep, margin_gb=1, free=int(2.5 * GB))
    message = str(info.value)
    assert "needs 3.0 GB free (2.0 GB, the size of step_20, plus ckpt.min_free_gb 1 GB) but its filesystem has 2.5 GB free" in message
    assert hint in message
    assert "or lower ckpt.min_free_gb" in message  # 2.0 GB would fit without the margin
    check_free_space("/ckpt", sizes, keep, margin_gb=0.5, free=int(2.5 * GB))  # fits


def test_a_uri_root_is_not_checked_but_a_file_uri_is(tmp_path):
    # nothing listens there: a check that reached the store would fail, not pass
    remote = CheckpointStore("s3://rayrl/ckpt?endpoint_override=127.0.0.1:9&scheme=http")
    remote.check_space(min_free_gb=10**6)
    with pytest.raises(DiskSpaceError, match=str(tmp_path / "ckpt")):
        CheckpointStore(f"file://{tmp_path / 'ckpt'}").check_space(min_free_gb=10**6)


# ---- a full disk while writing ---------------------------------------------------------------------
@needs_dev_full
def test_a_real_enospc_names_the_checkpoint_and_the_one_kept(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    kept = save(store, 1)
    error = write_to_full_disk()
    assert error.errno == errno.ENOSPC
    translated = store.no_space_error(error, 2)
    assert isinstance(translated, DiskSpaceError)
    assert str(translated).startswith(f"no space left on device while writing checkpoint {store.uri_of(2)}; "
                                      f"the newest complete checkpoint is {kept} (kept intact); free space")  # fmt: skip
    assert "lower ckpt.keep" in str(translated) and "then resume with --ckpt.resume_step -1" in str(translated)


@needs_dev_full
def test_a_real_torch_save_on_a_full_disk_is_recognised():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError) as info:  # torch.save fails with "unexpected pos", from "basic_ios::clear"
        torch.save({"w": torch.zeros(4096)}, str(DEV_FULL))
    assert is_no_space(info.value)


def wrapped(outer: Exception, inner: Exception) -> Exception:
    """``outer`` as Python leaves it after ``raise outer from inner`` inside ``except inner``."""
    outer.__cause__ = outer.__context__ = inner
    return outer


def test_wrapped_full_disks_are_recognised_and_other_errors_are_not():
    from ray.exceptions import RayTaskError

    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert is_no_space(enospc)
    assert is_no_space(RuntimeError("[enforce fail at inline_container.cc:672] basic_ios::clear: iostream error"))
    assert is_no_space(wrapped(RuntimeError("saving the optimizer failed"), enospc))
    assert is_no_space(RayTaskError("save", "Traceback ...\nOSError: [Errno 28] No space left on device", enospc))
    assert is_no_space(RayTaskError("save", "Traceback (most recent call last): ...", enospc))  # its cause
    for other in (OSError(errno.EACCES, "Permission denied"), ValueError("bad"), wrapped(RuntimeError("x"), KeyError("y"))):
        assert not is_no_space(other)
        assert no_space_error(other, "checkpoint step_3") is None
    first = no_space_error(enospc, "checkpoint step_3")
    assert "while writing checkpoint step_3; no complete checkpoint was saved before it" in str(first)
    assert "then run again" in str(first)


@needs_dev_full
def test_best_effort_warns_once_on_a_full_disk_and_lets_other_errors_through(tmp_path, caplog):
    from rayrl.plotting import plot_training_curves

    png = tmp_path / "metrics.png"
    png.symlink_to(DEV_FULL)  # matplotlib would write "/dev/full.png" for a path without the suffix
    metrics = [{"step": s, "reward_mean": 0.1 * s} for s in range(1, 4)]
    with caplog.at_level(logging.WARNING, logger="rayrl.storage.disk"):
        assert best_effort(lambda: plot_training_curves(metrics, png), "metrics.png") is None
    assert [r.getMessage() for r in caplog.records] == ["could not write metrics.png: No space left on device"]
    assert best_effort(lambda: 7, "x") == 7
    with pytest.raises(ValueError):
        best_effort(lambda: int("x"), "x")


# ---- rayrl du -------------------------------------------------------------------------------------
def test_du_lists_checkpoints_leftovers_logs_plots_and_totals(tmp_path, capsys):
    run = tmp_path / "run"
    store = CheckpointStore(run / "checkpoints")
    for step in (5, 10):
        save(store, step, model_bytes=10_000)
    (run / "checkpoints" / "step_15").mkdir()  # files without a commit
    (run / "checkpoints" / "step_15" / "model.safetensors").write_bytes(b"w" * 500)
    leftover = Path(store.begin(20))  # an interrupted save
    (leftover / "model.safetensors").write_bytes(b"p" * 700)
    (run / "metrics.jsonl").write_bytes(b"m" * 300)
    (run / "metrics.png").write_bytes(b"g" * 4000)
    (run / "sft").mkdir()
    (run / "sft" / "model.bin").write_bytes(b"s" * 2000)

    assert main(["du", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines}
    assert lines[0] == str(run)
    sizes = store.sizes()
    assert rows["checkpoints/step_5/"].split()[1:] == [*human_size(sizes[5]).split(), "complete"]
    assert rows["checkpoints/step_10/"].split()[1:] == [*human_size(sizes[10]).split(), "complete,", "latest"]
    assert rows["checkpoints/step_15/"].split()[1:] == ["500", "B", "incomplete"]
    assert rows[f"checkpoints/{leftover.name}/"].split()[1:3] == ["700", "B"]
    assert rows["metrics.jsonl"].split()[1:] == ["300", "B"] and rows["metrics.png"].split()[1:] == ["4.0", "kB"]
    assert rows["sft/"].split()[1:] == ["2.0", "kB"]
    assert [line.split(" (")[0] for line in lines if not line.startswith(" ")][1:6] == [
        "checkpoints", "staging leftovers", "logs", "plots", "other"]  # fmt: skip
    total = sizes[5] + sizes[10] + 500 + 700 + 300 + 4000 + 2000
    assert rows["total"].split()[1:] == human_size(total).split()
    assert rows["free"].split()[3:] == ["on", "the", "filesystem", "of", str(run)]
    size_ends = {re.search(r"\d [kMGT]?B\b", line).end() for line in lines if line.startswith(("  ", "total", "free"))}
    assert len(size_ends) == 1  # one column of right-aligned sizes


def test_du_refuses_a_missing_folder_and_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["du", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: no such folder; name a run folder"
    assert main(["du", str(tmp_path)]) == 2
    assert "is not a rayrl run folder" in capsys.readouterr().err


@pytest.fixture
def small_disk(tmp_path):
    """A real small filesystem (tmpfs) at tmp_path/disk, unmounted afterwards; skipped where mounting is not
    permitted. ``shrink()`` lowers its size to what it holds plus ``spare`` bytes."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a tmpfs (a real filesystem that can fill up)")

    class Disk:
        path = mount

        @staticmethod
        def shrink(spare: int) -> None:
            import shutil

            used = shutil.disk_usage(mount).used
            subprocess.run(["mount", "-o", f"remount,size={used + spare}", str(mount)], check=True)

    yield Disk
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_disk_that_fills_during_a_save_stops_with_one_message_and_keeps_the_newest_checkpoint(
    ray_cluster, small_config, base_model_path, small_disk, monkeypatch
):
    from rayrl.driver import train

    run = small_disk.path / "run"
    train(small_config(run, max_steps=2, eval={"interval": 0}, ckpt={"interval": 2, "keep": 0, "min_free_gb": 0}))
    store = CheckpointStore(run / "checkpoints")
    checkpoint = store.sizes()[2]
    small_disk.shrink(checkpoint // 3)  # the next checkpoint cannot fit
    resume = dict(max_steps=4, eval={"interval": 0}, ckpt={"interval": 2, "keep": 0, "resume_step": -1, "min_free_gb": 0})
    with monkeypatch.context() as m:  # the check passes, as when another writer fills the disk after it
        m.setattr(CheckpointStore, "check_space", lambda *args, **kwargs: None)
        with pytest.raises(DiskSpaceError, match="no space left on device while writing checkpoint") as raised:
            train(small_config(run, **resume))
    assert "step_2 (kept intact)" in str(raised.value)
    assert store.latest_step() == 2 and store.steps() == [2]
    store.verify(2)  # the newest complete checkpoint is intact
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]  # space given back

    # asked for a margin the disk does not have, the save is refused before anything is written
    resume["ckpt"]["min_free_gb"] = 0.01
    with pytest.raises(DiskSpaceError, match=r"the next checkpoint needs .* free .* but its filesystem has"):
        train(small_config(run, **resume))
    assert store.steps() == [2]
