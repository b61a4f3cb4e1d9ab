"""Disk space: a checkpoint save checked against the free space before it starts, a full disk met while
writing turned into one clear error, and writes the run can do without (plots) that only warn when they fail.

Sizes are in decimal units, as ``ckpt.min_free_gb`` counts them: 1 GB = 10^9 bytes.
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rayrl.errors import DiskSpaceError

GB = 10**9
# How a full disk reads when the OSError is wrapped: torch.save's C++ stream fails with "basic_ios::clear",
# safetensors with "StorageFull", a Ray task error carries the remote traceback as text.
NO_SPACE_TEXT = ("no space left on device", "basic_ios::clear", "storagefull", "[errno 28]")

log = logging.getLogger(__name__)
T = TypeVar("T")


def human_size(n: int) -> str:
    """``n`` bytes in decimal units: '812 B', '3.4 kB', '1.2 GB'."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def free_bytes(folder: str | Path) -> int:
    """Bytes this user may write on the filesystem of ``folder`` (of its nearest existing parent while it
    does not exist yet, as before a run's first checkpoint)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(folder: str | Path, sizes: dict[int, int], keep: int, margin_gb: float,
                     estimate_bytes: int = 0, free: int | None = None) -> None:  # fmt: skip
    """Raise DiskSpaceError unless the filesystem of the checkpoint folder ``folder`` has room for the next
    checkpoint plus ``margin_gb`` GB to spare.

    ``sizes``: bytes of each complete checkpoint there, by step; the next one is expected to be as big as the
    newest, or ``estimate_bytes`` while there is none. ``keep`` (``ckpt.keep``) names in the message the
    checkpoints that rotation deletes after the next save anyway, which could be deleted now to make room.
    ``free``: the free bytes, measured when None."""
    expected = sizes[max(sizes)] if sizes else estimate_bytes
    needed = expected + int(margin_gb * GB)
    free = free_bytes(folder) if free is None else free
    if free >= needed:
        return
    basis = f"the size of step_{max(sizes)}" if sizes else "estimated from the model"
    margin = ", or lower ckpt.min_free_gb" if free >= expected else ""  # the checkpoint alone would fit
    then = "then resume with --ckpt.resume_step -1" if sizes else "then run again"
    raise DiskSpaceError(
        f"checkpoint folder {folder}: the next checkpoint needs {human_size(needed)} free ({human_size(expected)}, "
        f"{basis}, plus ckpt.min_free_gb {margin_gb:g} GB) but its filesystem has {human_size(free)} free; "
        f"{reclaim_hint(sizes, keep)}{margin}; {then}"
    )


def reclaim_hint(sizes: dict[int, int], keep: int) -> str:
    """What deleting old checkpoints would free, never the newest (the one a resume starts from): first those
    ``keep`` rotation deletes anyway once the next save is committed, else any older one."""
    older = sorted(sizes)[:-1]
    if not older:
        return "free space on that filesystem"
    doomed = older[: max(len(older) + 2 - keep, 0)] if keep else []  # keep - 1 of them stay beside the new one
    chosen = doomed or older
    names, freed = ", ".join(f"step_{s}" for s in chosen), human_size(sum(sizes[s] for s in chosen))
    if doomed:
        count, them = (f"the {len(doomed)} oldest checkpoints", "them") if len(doomed) > 1 else ("the oldest checkpoint", "it")
        return (f"deleting {count} ({names}; ckpt.keep {keep} deletes {them} after the next save anyway) would free "
                f"{freed}, or free space on that filesystem")  # fmt: skip
    kept = f"ckpt.keep {keep} keeps {'them' if len(older) > 1 else 'it'}" if keep else "ckpt.keep 0 keeps every checkpoint"
    return f"deleting older checkpoints by hand ({names}; {kept}) would free {freed}, or free space on that filesystem"


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` or an error it wraps (``__cause__``, ``__context__``, a Ray task error's ``cause``) is a
    full disk: an OSError with errno ENOSPC, or a message that says so."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        e = pending.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        try:
            text = str(e).lower()
        except Exception:  # noqa: BLE001 - a broken __str__ says nothing either way
            text = ""
        if any(marker in text for marker in NO_SPACE_TEXT):
            return True
        pending += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return False


def no_space_error(exc: BaseException, where: str, latest: str | None = None) -> DiskSpaceError | None:
    """A DiskSpaceError for ``exc`` if it is (or wraps) a full disk met while writing ``where``, else None.
    ``latest``: the newest complete checkpoint (path or URI), which the failed write left intact."""
    if not is_no_space(exc):
        return None
    if latest is None:
        kept, then = "no complete checkpoint was saved before it", "then run again"
    else:
        kept, then = f"the newest complete checkpoint is {latest} (kept intact)", "then resume with --ckpt.resume_step -1"
    return DiskSpaceError(
        f"no space left on device while writing {where}; {kept}; free space (`rayrl du RUN_DIR` shows what the "
        f"run holds) or lower ckpt.keep, {then} (the partial checkpoint is removed when the run starts)"
    )


def best_effort(fn: Callable[[], T], what: str) -> T | None:
    """``fn()``, or None and one warning line when it fails for want of disk (an OSError, or a wrapped full
    disk): for writes a run can do without, such as its plots."""
    try:
        return fn()
    except Exception as e:
        if not (isinstance(e, OSError) or is_no_space(e)):
            raise
        log.warning("could not write %s: %s", what, (e.strerror if isinstance(e, OSError) else None) or e)
        return None
