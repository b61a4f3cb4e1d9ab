"""Archive a run folder to a storage URI and restore it, through ``pyarrow.fs``.

Destinations: a local path, ``file:///abs/path``, ``s3://bucket/prefix`` (S3-compatible servers with
``?endpoint_override=HOST:PORT&scheme=http``), ``gs://bucket/prefix``.

``archive(run_dir, uri)`` writes ``<uri>/<run name>/`` holding every file of the run folder and, last,
``_COMPLETE``: a manifest of every file's size and sha256. ``restore`` refuses an archive without it and
checks every file against it. On a local filesystem the archive is first written to
``<run name>.tmp-<id>`` and renamed into place; object stores have no rename, so there the marker written
last is what makes an archive complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rayrl.errors import StorageError
from rayrl.storage.checkpoints import CheckpointStore
from rayrl.storage.location import (
    Location, download_files, exists, listing, open_location, progress_bar, storage_error, upload_files,
)

MARKER = "_COMPLETE"
FORMAT = "rayrl-archive/1"
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "lineage.jsonl")  # any one makes a folder a run folder


# ---- the run folder -------------------------------------------------------------------------------
def check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise StorageError(f"{run_dir} does not exist")
    if not run_dir.is_dir():
        raise StorageError(f"{run_dir} is not a folder")
    if not any((run_dir / name).exists() for name in RUN_MARKERS):
        raise StorageError(f"{run_dir} is not a rayrl run folder: it holds none of {', '.join(RUN_MARKERS)}")


def run_files(run_dir: Path) -> list[str]:
    """Relative paths of the files to archive, sorted; leftovers of interrupted checkpoint saves are skipped."""
    found = []
    for root, dirs, files in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".tmp-step_", ".old-step_")))
        for name in files:
            found.append(Path(root, name).relative_to(run_dir).as_posix())
    return sorted(found)


# ---- archive --------------------------------------------------------------------------------------
@dataclass
class ArchiveResult:
    uri: str
    files: int
    bytes: int
    deleted: list[str]  # local checkpoints removed by keep_latest
    kept: list[str]


def archive(run_dir: str | Path, uri: str, force: bool = False, keep_latest: int | None = None,
            progress: bool | None = None) -> ArchiveResult:  # fmt: skip
    """Copy ``run_dir`` to ``<uri>/<run name>``, verify it, then optionally prune local checkpoints."""
    run_dir = Path(run_dir).resolve()
    check_run_dir(run_dir)
    if keep_latest is not None and keep_latest < 0:
        raise StorageError(f"--keep-latest must be 0 or more, not {keep_latest}")
    parent = open_location(uri)
    final = parent.child(run_dir.name)
    if parent.is_local and Path(final.path).is_relative_to(run_dir):
        raise StorageError(f"{final.uri} is inside the run folder {run_dir}; archive it somewhere else")
    staging = parent.child(f"{run_dir.name}.tmp-{uuid.uuid4().hex[:8]}") if parent.is_local else None
    try:
        if exists(final) and not force:
            state = "a complete archive" if exists(final.child(MARKER)) else f"an incomplete archive (no {MARKER})"
            raise StorageError(f"{final.uri} already holds {state}; pass --force to replace it")
        files = run_files(run_dir)
        if staging is None:  # no rename on object stores: unmark, clear, write in place, mark last
            if exists(final.child(MARKER)):
                final.fs.delete_file(final.child(MARKER).path)
            if exists(final):
                final.fs.delete_dir(final.path)
        manifest = upload(run_dir, files, staging or final, progress)
        verify_listing(staging or final, manifest)
        if staging is not None:  # written beside the destination: rename into place now that it is complete
            move_into_place(staging, final)
    except OSError as e:
        raise storage_error(final.uri, final.scheme, e) from e
    finally:
        if staging is not None and exists(staging):
            staging.fs.delete_dir(staging.path)
    deleted, kept = [], []
    if keep_latest is not None:
        deleted, kept = prune_checkpoints(run_dir, keep_latest, set(manifest["files"]))
    return ArchiveResult(final.uri, len(files), manifest["total_bytes"], deleted, kept)


def upload(run_dir: Path, files: list[str], target: Location, progress: bool | None) -> dict[str, Any]:
    """Copy ``files`` of ``run_dir`` under ``target``, then write the manifest as the marker; return it."""
    total = sum((run_dir / name).stat().st_size for name in files)
    with progress_bar(total, f"archive {run_dir.name}", progress) as bar:
        entries = upload_files(run_dir, files, target, bar.update)
    manifest = {
        "format": FORMAT,
        "run": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "total_bytes": sum(e["size"] for e in entries.values()),
        "files": entries,
    }
    with target.fs.open_output_stream(target.child(MARKER).path) as sink:
        sink.write((json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


def verify_listing(target: Location, manifest: dict[str, Any]) -> None:
    """Every file of the manifest is at ``target`` with its size, and the marker reads back as written."""
    found = listing(target)
    wrong = [name for name, entry in manifest["files"].items() if found.get(name) != entry["size"]]
    if wrong:
        raise StorageError(f"{target.uri}: after upload, {len(wrong)} file(s) are missing or of the wrong size: "
                           f"{', '.join(wrong[:5])}")  # fmt: skip
    if read_manifest(target) != manifest:
        raise StorageError(f"{target.uri}/{MARKER} does not read back as written")


def move_into_place(staging: Location, final: Location) -> None:
    """Rename a finished local archive to ``final``; an older archive there is moved aside, then deleted."""
    aside = None
    if exists(final):
        aside = f"{final.path}.old-{uuid.uuid4().hex[:8]}"
        final.fs.move(final.path, aside)
    final.fs.move(staging.path, final.path)
    if aside:
        final.fs.delete_dir(aside)


def prune_checkpoints(run_dir: Path, keep: int, archived: set[str]) -> tuple[list[str], list[str]]:
    """Delete local checkpoints except the newest ``keep`` and the one ``latest`` names; only archived ones.

    Returns (deleted, kept) checkpoint folder names.
    """
    store = CheckpointStore(run_dir / "checkpoints")
    steps = store.steps()
    latest = store.latest_step()
    keep_steps = set(steps[-keep:] if keep else []) | ({latest} if latest is not None else set())
    deleted = []
    for step in steps:
        name = store.path(step).name
        mine = {n for n in archived if n.startswith(f"checkpoints/{name}/")}
        local = {f"checkpoints/{name}/{f}" for f in run_files(store.path(step))}
        if step in keep_steps or not local or not local <= mine:  # never delete what the archive lacks
            continue
        shutil.rmtree(store.path(step))
        deleted.append(name)
    kept = [store.path(s).name for s in store.steps()]
    return deleted, kept


# ---- restore --------------------------------------------------------------------------------------
def read_manifest(loc: Location) -> dict[str, Any]:
    marker = loc.child(MARKER)
    if not exists(marker):
        what = "no archive" if not exists(loc) else f"no {MARKER} marker: an incomplete upload or not a rayrl archive"
        raise StorageError(f"{loc.uri}: {what}; refusing to restore it")
    with loc.fs.open_input_stream(marker.path) as source:
        manifest = json.loads(source.read().decode())
    if manifest.get("format") != FORMAT:
        raise StorageError(f"{marker.uri}: unknown archive format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


@dataclass
class RestoreResult:
    run_dir: Path
    files: int
    bytes: int


def restore(uri: str, run_dir: str | Path, force: bool = False, progress: bool | None = None) -> RestoreResult:
    """Copy the archive at ``uri`` to ``run_dir``, checking every file's size and sha256 against its manifest."""
    source = open_location(uri)
    run_dir = Path(run_dir).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise StorageError(f"{run_dir} exists and is not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise StorageError(f"{run_dir} exists and is not empty; pass --force to replace it")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = run_dir.parent / f".{run_dir.name}.restore-{uuid.uuid4().hex[:8]}"
    try:
        manifest = read_manifest(source)
        download(source, manifest, staging, progress)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(source.uri, source.scheme, e) from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = run_dir.parent / f".{run_dir.name}.old-{uuid.uuid4().hex[:8]}"
    if run_dir.exists():
        run_dir.rename(aside)
    staging.rename(run_dir)
    shutil.rmtree(aside, ignore_errors=True)
    return RestoreResult(run_dir, len(manifest["files"]), manifest["total_bytes"])


def download(source: Location, manifest: dict[str, Any], staging: Path, progress: bool | None) -> None:
    with progress_bar(manifest["total_bytes"], f"restore {manifest['run']}", progress) as bar:
        download_files(source, manifest["files"], staging, bar.update)
