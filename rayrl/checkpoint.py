"""CheckpointStore: atomic step checkpoints, a ``latest`` pointer written last, rotation, resume lookup.

Layout under ``<output_dir>/checkpoints``::

    step_50/   model.safetensors config.json tokenizer files optimizer.pt scheduler.pt training_info.json
    latest     text file naming the newest complete checkpoint ("step_50")

A checkpoint is written into ``.tmp-step_N-*`` and renamed into place once complete; ``latest`` is
replaced atomically after that. A crash at any moment leaves either the old or the new checkpoint
marked as latest, never a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rayrl.errors import CheckpointError

INFO_FILE = "training_info.json"
LATEST_FILE = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")

log = logging.getLogger(__name__)


class CheckpointStore:
    def __init__(self, root: str | Path, keep: int = 0):
        self.root = Path(root)
        self.keep = keep  # 0 keeps every checkpoint

    def path(self, step: int) -> Path:
        return self.root / f"step_{step}"

    def steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending."""
        if not self.root.is_dir():
            return []
        found = [int(m.group(1)) for p in self.root.iterdir() if (m := STEP_DIR.match(p.name))]
        return sorted(s for s in found if (self.path(s) / INFO_FILE).exists())

    def latest_step(self) -> int | None:
        pointer = self.root / LATEST_FILE
        if not pointer.exists():
            return None
        match = STEP_DIR.match(pointer.read_text().strip())
        if not match or not (self.root / match.group(0) / INFO_FILE).exists():
            raise CheckpointError(f"{pointer} names '{pointer.read_text().strip()}', which is not a complete checkpoint")
        return int(match.group(1))

    def resolve(self, resume_step: int | None) -> Path | None:
        """Directory to resume from: None for a fresh run, -1 for the latest, N for step N."""
        if resume_step is None:
            return None
        if resume_step == -1:
            latest = self.latest_step()
            if latest is None:
                raise CheckpointError(f"ckpt.resume_step = -1 but {self.root} holds no checkpoint to resume from")
            return self.path(latest)
        if resume_step not in self.steps():
            raise CheckpointError(
                f"ckpt.resume_step = {resume_step}: no checkpoint {self.path(resume_step)}; "
                f"available steps: {self.steps() or 'none'}"
            )
        return self.path(resume_step)

    def staging(self, step: int) -> Path:
        """A fresh temporary directory to write checkpoint ``step`` into."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-step_{step}-", dir=self.root))

    def commit(self, staging: Path, step: int, training_info: dict[str, Any]) -> Path:
        """Finish ``staging`` as checkpoint ``step``: info file, rename, then the latest pointer."""
        write_json_atomic(staging / INFO_FILE, training_info)
        final = self.path(step)
        if final.exists():  # re-saving a step (after a resume): move the old one aside first
            aside = self.root / f".old-step_{step}"
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        staging.rename(final)
        write_text_atomic(self.root / LATEST_FILE, final.name + "\n")
        self.rotate()
        return final

    def rotate(self) -> None:
        """Delete the oldest checkpoints beyond ``keep``; never the one ``latest`` names."""
        if not self.keep:
            return
        latest = self.latest_step()
        for step in self.steps()[: -self.keep]:
            if step != latest:
                shutil.rmtree(self.path(step), ignore_errors=True)

    def remove_stale_staging(self) -> list[str]:
        """Remove leftovers of interrupted saves (never marked latest, never complete)."""
        if not self.root.is_dir():
            return []
        stale = [p for p in self.root.iterdir() if p.name.startswith((".tmp-step_", ".old-step_"))]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return [p.name for p in stale]

    @staticmethod
    def read_info(directory: Path) -> dict[str, Any]:
        return json.loads((Path(directory) / INFO_FILE).read_text())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the whole new one, never a part:
    a temporary file of its own beside it (concurrent writers never share one; permissions as a plain
    ``open`` would give), fsync, rename, then fsync of the folder so the rename survives a crash."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it private
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make renames inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
