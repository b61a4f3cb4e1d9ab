"""RunFolder: where a run writes, a local folder or a storage URI.

``metrics.jsonl`` (appended every step) and ``metrics.png`` are written in a local folder: ``output_dir``
itself, or, when ``output_dir`` is a URI, a working folder ``<cache>/runs/<name>-<hash>`` on the driver's
machine whose files are uploaded after every checkpoint and when the run ends (a resumed run downloads
them first). Checkpoints go to ``ckpt.dir``, by default ``<output_dir>/checkpoints`` (a URI when the
output is one), written by the learners and committed by the driver (:mod:`rayrl.storage.checkpoints`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from rayrl.storage.location import Location, exists, is_local, open_location, read_bytes, write_bytes

log = logging.getLogger(__name__)

SYNCED_FILES = ("metrics.jsonl", "metrics.png")


class RunFolder:
    def __init__(self, output_dir: str, checkpoints: str | None = None):
        loc = open_location(output_dir)
        self.uri = loc.uri  # absolute path or URI: what the user is told
        self.remote: Location | None = None if is_local(output_dir) else loc
        self.name = loc.path.rstrip("/").split("/")[-1] or "run"
        if self.remote is None:
            self.local = Path(loc.path)
        else:
            cache = Path(os.environ.get("RAYRL_CACHE_DIR") or Path.home() / ".cache" / "rayrl").expanduser()
            self.local = cache / "runs" / f"{self.name}-{hashlib.sha256(self.uri.encode()).hexdigest()[:8]}"
        self.checkpoints = checkpoints or loc.child("checkpoints").uri

    def create(self) -> None:
        """Make the local folder; a file in its place or a folder this process cannot write is a StorageError
        naming the path and the fix."""
        from rayrl.errors import StorageError

        if self.local.exists() and not self.local.is_dir():
            raise StorageError(f"--output-dir {self.local} is a file: name a folder (new or a run's)")
        try:
            self.local.mkdir(parents=True, exist_ok=True)
            probe = self.local / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StorageError(
                f"--output-dir {self.local}: cannot write there ({e.strerror or e}); choose a folder you can write"
            ) from None

    def set_aside_stale_metrics(self) -> Path | None:
        """A fresh run in a folder holding another run's ``metrics.jsonl`` (one that crashed before its first
        checkpoint): that file is renamed ``metrics.jsonl.<n>.old``, never appended to or lost. Returns the new name."""
        old = self.local / "metrics.jsonl"
        if not old.exists():
            return None
        n = 1
        while (self.local / f"metrics.jsonl.{n}.old").exists():
            n += 1
        target = self.local / f"metrics.jsonl.{n}.old"
        old.rename(target)
        log.warning("%s held the metrics of an earlier run without checkpoints: kept as %s", self.local, target.name)
        return target

    def fetch(self) -> None:
        """Before a resume: the remote copies of the synced files replace the working folder's."""
        if self.remote is None:
            return
        self.create()
        for name in SYNCED_FILES:
            if exists(self.remote.child(name)):
                (self.local / name).write_bytes(read_bytes(self.remote.child(name)))

    def sync(self) -> None:
        """Upload the synced files of the working folder (a no-op for a local output folder)."""
        if self.remote is None:
            return
        for name in SYNCED_FILES:
            if (self.local / name).exists():
                write_bytes(self.remote.child(name), (self.local / name).read_bytes())
