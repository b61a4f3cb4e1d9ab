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

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rayrl.checkpoint import LATEST_FILE, CheckpointStore
from rayrl.errors import StorageError

MARKER = "_COMPLETE"
FORMAT = "rayrl-archive/1"
SCHEMES = ("file", "s3", "gs", "gcs")
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "lineage.jsonl")  # any one makes a folder a run folder
CHUNK = 8 << 20
GCS_RETRY_LIMIT_S = 60  # unless the URI sets ?retry_limit_seconds=
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials), "
    "or AWS_PROFILE; the region from AWS_DEFAULT_REGION or ?region=...; an S3-compatible server needs "
    "?endpoint_override=HOST:PORT (and &scheme=http without TLS)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file) or `gcloud auth application-default login`",
}
CREDENTIAL_HINTS = ("access denied", "access_denied", "credential", "forbidden", "403", "signature", "accesskey",
                    "unauthorized", "401", "token")  # fmt: skip


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem: ``fs`` and its ``path`` there, plus the URI users see."""

    fs: Any  # pyarrow.fs.FileSystem
    path: str
    uri: str
    scheme: str  # "file" for plain paths

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    def child(self, name: str) -> Location:
        if "://" not in self.uri:
            uri = os.path.join(self.uri, name)
        else:
            parts = urlsplit(self.uri)
            uri = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", uri, self.scheme)


def open_location(uri: str) -> Location:
    """Resolve ``uri`` (a plain path, file://, s3://, gs://) to a filesystem and a path on it."""
    from pyarrow import fs as pafs

    if "://" in uri:
        scheme = uri.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise StorageError(
                f"{uri}: unsupported URI scheme '{scheme}://'; use a local path, file://, s3:// or gs://"
            )
        target = uri
    else:
        scheme, target = "file", os.path.abspath(os.path.expanduser(uri))
        uri = target
    scheme = "gs" if scheme == "gcs" else scheme
    if scheme == "gs" and "retry_limit_seconds=" not in target:  # GCS retries for 15 minutes by default
        target += ("&" if "?" in target else "?") + f"retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    try:
        fs, path = pafs.FileSystem.from_uri(target)
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise storage_error(uri, scheme, e) from e
    return Location(fs, path.rstrip("/") or "/", uri, scheme)


def storage_error(uri: str, scheme: str, error: Exception) -> StorageError:
    """A StorageError for a failed filesystem call, naming the credentials settings when they may be the cause."""
    message = f"{uri}: {error}"
    if scheme in CREDENTIALS and any(hint in str(error).lower() for hint in CREDENTIAL_HINTS):
        message += f"\n  check the credentials: {CREDENTIALS[scheme]}"
    elif scheme in CREDENTIALS:
        message += f"\n  (if this is a credentials problem: {CREDENTIALS[scheme]})"
    return StorageError(message)


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


# ---- copying --------------------------------------------------------------------------------------
def copy_stream(source, sink, progress: Callable[[int], Any]) -> tuple[int, str]:
    """Copy ``source`` to ``sink`` in chunks; return (bytes, sha256 hex) of what was copied."""
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(CHUNK):
        sink.write(chunk)
        digest.update(chunk)
        size += len(chunk)
        progress(len(chunk))
    return size, digest.hexdigest()


def progress_bar(total: int, what: str, enabled: bool | None):
    from tqdm import tqdm

    # enabled=None: a bar on a terminal only, so logs and job output stay clean.
    return tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None if enabled is None else not enabled)  # fmt: skip


def exists(loc: Location) -> bool:
    from pyarrow import fs as pafs

    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def listing(loc: Location) -> dict[str, int]:
    """Relative path -> size of every file under ``loc``."""
    from pyarrow import fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    prefix = loc.path.rstrip("/") + "/"
    return {i.path[len(prefix) :]: i.size for i in infos if i.type == pafs.FileType.File}


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
    sizes = {name: (run_dir / name).stat().st_size for name in files}
    entries = {}
    for folder in sorted({os.path.dirname(name) for name in files} | {""}):  # local filesystems need them
        target.fs.create_dir(target.child(folder).path if folder else target.path, recursive=True)
    with progress_bar(sum(sizes.values()), f"archive {run_dir.name}", progress) as bar:
        for name in files:
            with open(run_dir / name, "rb") as source, target.fs.open_output_stream(target.child(name).path) as sink:
                size, sha = copy_stream(source, sink, bar.update)
            entries[name] = {"size": size, "sha256": sha}  # what was sent, even if the file grew meanwhile
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
    latest = store.latest_step() if (store.root / LATEST_FILE).exists() else None
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
        for name, entry in sorted(manifest["files"].items()):
            local = staging / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise StorageError(f"{source.uri}/{MARKER}: file name {name!r} leaves the run folder")
            local.parent.mkdir(parents=True, exist_ok=True)
            with source.fs.open_input_stream(source.child(name).path) as src, open(local, "wb") as sink:
                size, sha = copy_stream(src, sink, bar.update)
            if (size, sha) != (entry["size"], entry["sha256"]):
                raise StorageError(
                    f"{source.child(name).uri}: {size} bytes with sha256 {sha[:12]}..., but the manifest "
                    f"says {entry['size']} bytes, sha256 {entry['sha256'][:12]}..."
                )
