"""Folders on any filesystem through ``pyarrow.fs``: local paths, ``file://``, ``s3://`` (also
S3-compatible servers: ``?endpoint_override=HOST:PORT&scheme=http``), ``gs://``.

A :class:`Location` is a folder there; files are copied in chunks with their size and sha256 recorded,
so a copy can be checked against what was written. Errors name the URI and, for object stores, the
credential settings that may be missing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from rayrl.errors import StorageError

SCHEMES = ("file", "s3", "gs", "gcs")
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

    def parent(self) -> Location:
        """The folder holding this one (the URI keeps its query, e.g. an S3 endpoint)."""
        if "://" not in self.uri:
            uri = os.path.dirname(self.uri.rstrip("/"))
        else:
            parts = urlsplit(self.uri)
            uri = urlunsplit(parts._replace(path=parts.path.rstrip("/").rpartition("/")[0]))
        return Location(self.fs, self.path.rstrip("/").rpartition("/")[0] or "/", uri, self.scheme)


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


def is_uri(target: str) -> bool:
    """Whether ``target`` is a storage URI (``scheme://...``) rather than a plain path."""
    return "://" in str(target)


def is_local(target: str) -> bool:
    """A plain path or a ``file://`` URI: a folder of the machine it is read on."""
    return not is_uri(target) or str(target).lower().startswith("file://")


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as source:
        return source.read()


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole file. Readers see the old or the new content, never a part: on an object store a PUT
    is atomic; locally the file is written beside and renamed (see :func:`rayrl.storage.files.write_text_atomic`)."""
    if loc.is_local:
        from rayrl.storage.files import write_bytes_atomic

        write_bytes_atomic(Path(loc.path), data)
        return
    with loc.fs.open_output_stream(loc.path) as sink:
        sink.write(data)


def delete_tree(loc: Location) -> None:
    """Delete the folder ``loc`` and everything under it (nothing if it does not exist)."""
    if exists(loc):
        loc.fs.delete_dir(loc.path)


def upload_files(local_dir: Path, names: list[str], target: Location,
                 progress: Callable[[int], Any] = lambda n: None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Copy ``names`` (relative paths) of ``local_dir`` under ``target``; return each file's size and sha256."""
    for folder in sorted({os.path.dirname(name) for name in names} | {""}):  # local filesystems need them
        target.fs.create_dir(target.child(folder).path if folder else target.path, recursive=True)
    entries = {}
    for name in names:
        with open(local_dir / name, "rb") as source, target.fs.open_output_stream(target.child(name).path) as sink:
            size, sha = copy_stream(source, sink, progress)
        entries[name] = {"size": size, "sha256": sha}  # what was sent, even if the file grew meanwhile
    return entries


def download_files(source: Location, entries: dict[str, dict[str, Any]], local_dir: Path,
                   progress: Callable[[int], Any] = lambda n: None) -> None:  # fmt: skip
    """Copy the files of ``entries`` (relative path -> size, sha256) from ``source`` into ``local_dir``,
    checking each against its entry; a mismatch is a StorageError naming the file."""
    for name, entry in sorted(entries.items()):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise StorageError(f"{source.uri}: file name {name!r} leaves the folder")
        local = local_dir / name
        local.parent.mkdir(parents=True, exist_ok=True)
        with source.fs.open_input_stream(source.child(name).path) as src, open(local, "wb") as sink:
            size, sha = copy_stream(src, sink, progress)
        if (size, sha) != (entry["size"], entry["sha256"]):
            raise StorageError(
                f"{source.child(name).uri}: {size} bytes with sha256 {sha[:12]}..., but the manifest says "
                f"{entry['size']} bytes, sha256 {entry['sha256'][:12]}..."
            )


def file_entries(local_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of files already on local disk (what :func:`upload_files` returns for uploads)."""
    entries = {}
    for name in names:
        digest = hashlib.sha256()
        with open(local_dir / name, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        entries[name] = {"size": (local_dir / name).stat().st_size, "sha256": digest.hexdigest()}
    return entries
