"""CheckpointStore: step checkpoints on a local folder or a storage URI, committed by one writer.

Layout under the checkpoint root (``ckpt.dir``, default ``<output_dir>/checkpoints``)::

    step_50/   model.safetensors config.json tokenizer files optimizer.pt scheduler.pt training_info.json
    latest     names the newest complete checkpoint ("step_50")

Two writers, one commit. The learner (rank 0, on whatever node it runs) writes the model, optimizer and
scheduler files into the folder :meth:`CheckpointStore.begin` hands out and reports each file's size
and sha256. The driver then commits: ``training_info.json`` (with that manifest) is written last, and
only then does ``latest`` name the step. A checkpoint is complete when its ``training_info.json`` is
there and every file it lists is there with its size, the model and the optimizer state among them. A crash at any moment leaves ``latest`` naming a complete checkpoint (or none).

On a local root the files are written into ``.tmp-step_N-<id>/`` and the folder is renamed into place
after ``training_info.json``. Object stores have no rename: there the files go straight into
``step_N/``, and re-saving a step first un-commits the old one (``latest`` moves back to the newest other
complete checkpoint before its ``training_info.json`` is deleted).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rayrl.errors import CheckpointError, DiskSpaceError
from rayrl.storage.disk import check_free_space, no_space_error
from rayrl.storage.files import json_text
from rayrl.storage.location import (
    Location, delete_tree, exists, file_entries, listing, open_location, read_bytes, write_bytes,
)

INFO_FILE = "training_info.json"
LATEST_FILE = "latest"
MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE = "model.safetensors", "optimizer.pt", "scheduler.pt"
ADAPTER_FILE = "adapter_model.safetensors"  # a LoRA run's checkpoint holds its adapter instead of the model
VALUE_HEAD_FILE, VALUE_OPTIMIZER_FILE = "value_head.safetensors", "value_optimizer.pt"  # PPO's, beside the policy
DEEPSPEED_DIR = "deepspeed"  # learner.strategy = "deepspeed": its own checkpoint (ZeRO partitions) holds the optimizer
STEP_DIR = re.compile(r"^step_(\d+)$")
STAGING_PREFIXES = (".tmp-step_", ".old-step_")

log = logging.getLogger(__name__)


def verify_folder(folder: Path, manifest: dict[str, dict], name: str) -> None:
    """Check the files of a local checkpoint ``folder`` against ``manifest`` (name -> size and sha256, as
    ``training_info.json`` records them); raises CheckpointError naming what is missing or differs."""
    missing = [f for f in manifest if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{name}: {', '.join(missing)} missing (an incomplete or damaged checkpoint)")
    actual = file_entries(folder, list(manifest))
    wrong = [f for f, entry in manifest.items() if actual[f] != entry]
    if wrong:
        raise CheckpointError(f"{name}: {', '.join(wrong)} differ from the checksums recorded when it was saved "
                              "(the files changed or are damaged)")


class CheckpointStore:
    def __init__(self, root: str | Path, keep: int = 0):
        self.root: Location = open_location(str(root))
        self.keep = keep  # 0 keeps every checkpoint

    @property
    def uri(self) -> str:
        return self.root.uri

    def location(self, step: int) -> Location:
        return self.root.child(f"step_{step}")

    def uri_of(self, step: int) -> str:
        """Where checkpoint ``step`` lives: a local path, or a URI (what actors and ``from_pretrained`` read)."""
        return self.location(step).uri

    def path(self, step: int) -> Path:
        """The local folder of checkpoint ``step`` (local roots only)."""
        if not self.root.is_local:
            raise CheckpointError(f"{self.uri} is not a local folder: checkpoint {step} has no local path")
        return Path(self.location(step).path)

    # ---- reading ------------------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending."""
        return sorted(step for step, present in self._step_folders().items() if self._complete(step, present))

    def step_folders(self) -> list[int]:
        """Steps of every ``step_N`` folder holding files, complete or not."""
        return sorted(self._step_folders())

    def _step_folders(self) -> dict[int, dict[str, int]]:
        """step -> {file name inside its folder: size}."""
        files = listing(self.root)
        found: dict[int, dict[str, int]] = {}
        for name in files:
            folder, _, rest = name.partition("/")
            if (m := STEP_DIR.match(folder)) and rest:
                found.setdefault(int(m.group(1)), {})[rest] = files[name]
        return found

    def _complete(self, step: int, present: dict[str, int]) -> bool:
        if INFO_FILE not in present:
            return False
        try:
            manifest = self.read_info(step).get("files")
        except (OSError, ValueError):
            return False
        optimizer = OPTIMIZER_FILE in present or any(name.startswith(DEEPSPEED_DIR + "/") for name in present)
        if not optimizer or not (MODEL_FILE in present or ADAPTER_FILE in present):
            return False  # the weights (model or adapter) and the optimizer state, always
        return all(present.get(name) == entry["size"] for name, entry in (manifest or {}).items())

    def latest_step(self) -> int | None:
        pointer = self.root.child(LATEST_FILE)
        if not exists(pointer):
            return None
        text = read_bytes(pointer).decode().strip()
        match = STEP_DIR.match(text)
        if not match or int(match.group(1)) not in self.steps():
            raise CheckpointError(f"{pointer.uri} names '{text}', which is not a complete checkpoint")
        return int(match.group(1))

    def resolve(self, resume_step: int | None) -> str | None:
        """Checkpoint to resume from (path or URI): None for a fresh run, -1 for the newest intact one, N for
        step N. Every candidate is checked (:meth:`problem`): with -1 a damaged newer checkpoint is reported
        (which file, what is wrong), set aside as ``broken-step_N`` on a local root, and the newest intact one
        is used; a damaged step N is an error."""
        if resume_step is None:
            return None
        if resume_step == -1:
            found = self.step_folders()
            if not found:
                raise CheckpointError(f"ckpt.resume_step = -1 but {self.uri} holds no checkpoint to resume from")
            problems = {}
            for step in reversed(found):
                problem = self.problem(step)
                if problem is None:
                    if problems:
                        self._set_aside(problems)
                        write_bytes(self.root.child(LATEST_FILE), f"step_{step}\n".encode())
                    return self.uri_of(step)
                problems[step] = problem
                log.warning("checkpoint %s is damaged: %s; trying the one before it", self.uri_of(step), problem)
            raise CheckpointError(f"ckpt.resume_step = -1 but no checkpoint in {self.uri} is intact: "
                                  + "; ".join(f"step_{s}: {p}" for s, p in problems.items()))
        if resume_step not in self.step_folders():
            raise CheckpointError(
                f"ckpt.resume_step = {resume_step}: no checkpoint {self.uri_of(resume_step)}; "
                f"available steps: {self.steps() or 'none'}"
            )
        if (problem := self.problem(resume_step)) is not None:
            raise CheckpointError(f"ckpt.resume_step = {resume_step}: checkpoint {self.uri_of(resume_step)} is damaged: "
                                  f"{problem}; intact steps: {self.intact_steps() or 'none'}")
        return self.uri_of(resume_step)

    def problem(self, step: int) -> str | None:
        """What is wrong with checkpoint ``step`` (None: intact): an unreadable ``training_info.json``, a file
        it lists missing or of another size, the weights or optimizer state missing, and on a local root a
        sha256 that differs from the one recorded when it was saved."""
        present = self._step_folders().get(step, {})
        if INFO_FILE not in present:
            return f"{INFO_FILE} missing (a save that never finished)"
        try:
            info = self.read_info(step)
            manifest = info["files"]
            if not isinstance(manifest, dict) or not isinstance(info.get("step"), int):
                raise ValueError("no step number or file list")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{INFO_FILE} cannot be read ({type(e).__name__}: {e})"
        for name, entry in manifest.items():
            if name not in present:
                return f"{name} missing"
            if present[name] != entry.get("size"):
                return f"{name} is {present[name]} bytes, {entry.get('size')} when saved (truncated or overwritten)"
        if not (MODEL_FILE in present or ADAPTER_FILE in present):
            return f"neither {MODEL_FILE} nor {ADAPTER_FILE} is there"
        if not (OPTIMIZER_FILE in present or any(name.startswith(DEEPSPEED_DIR + "/") for name in present)):
            return f"{OPTIMIZER_FILE} missing"
        if self.root.is_local:
            try:
                verify_folder(self.path(step), manifest, f"step_{step}")
            except CheckpointError as e:
                return str(e).removeprefix(f"step_{step}: ")
        return None

    def intact_steps(self) -> list[int]:
        """Steps of the checkpoints :meth:`problem` finds nothing wrong with, ascending (reads every file)."""
        return [step for step in self.step_folders() if self.problem(step) is None]

    def _set_aside(self, damaged: dict[int, str]) -> None:
        """Rename damaged local checkpoints ``broken-step_N`` (kept for inspection, out of every listing)."""
        if not self.root.is_local:
            return
        for step in damaged:
            aside = Path(self.root.path) / f"broken-step_{step}"
            if aside.exists():
                shutil.rmtree(aside)
            self.path(step).rename(aside)
            log.warning("set the damaged checkpoint aside as %s", aside)

    def read_info(self, step: int | str) -> dict[str, Any]:
        """``training_info.json`` of checkpoint ``step`` (a step number, or the checkpoint's path or URI)."""
        loc = self.location(step) if isinstance(step, int) else open_location(str(step))
        return json.loads(read_bytes(loc.child(INFO_FILE)).decode())

    def verify(self, step: int) -> None:
        """Check every file of a local checkpoint against the sizes and sha256 sums its manifest records
        (a remote checkpoint is checked by whoever downloads it). Raises CheckpointError naming the file."""
        if self.root.is_local:
            verify_folder(self.path(step), self.read_info(step).get("files") or {}, self.uri_of(step))

    # ---- disk space ---------------------------------------------------------------------------------
    def sizes(self) -> dict[int, int]:
        """Bytes of each complete checkpoint (every file in its folder), by step."""
        folders = self._step_folders()
        return {step: sum(files.values()) for step, files in folders.items() if self._complete(step, files)}

    def check_space(self, min_free_gb: float, estimate_bytes: int = 0) -> None:
        """Before :meth:`begin`: raise DiskSpaceError unless a local root's filesystem has room for a checkpoint
        as big as the newest (``estimate_bytes`` while there is none) plus ``min_free_gb`` GB. URIs are not checked."""
        if self.root.is_local:
            check_free_space(self.root.path, self.sizes(), self.keep, min_free_gb, estimate_bytes)

    def no_space_error(self, exc: BaseException, step: int) -> DiskSpaceError | None:
        """A DiskSpaceError naming checkpoint ``step`` and the newest complete one if ``exc`` is (or wraps) a
        full disk met while saving it; None for any other error."""
        try:
            latest = self.latest_step()
        except (CheckpointError, OSError):
            latest = None
        return no_space_error(exc, f"checkpoint {self.uri_of(step)}", None if latest is None else self.uri_of(latest))

    # ---- writing ------------------------------------------------------------------------------------
    def begin(self, step: int) -> str:
        """A folder (path or URI) for the learner to write checkpoint ``step`` into, before :meth:`commit`."""
        if self.root.is_local:
            Path(self.root.path).mkdir(parents=True, exist_ok=True)
            return tempfile.mkdtemp(prefix=f".tmp-step_{step}-", dir=self.root.path)
        target = self.location(step)
        if exists(target):  # re-saving a step (after a resume from an earlier one): un-commit the old one
            self._uncommit(step)
        return target.uri

    def _uncommit(self, step: int) -> None:
        others = [s for s in self.steps() if s != step]
        pointer = self.root.child(LATEST_FILE)
        if exists(pointer) and read_bytes(pointer).decode().strip() == f"step_{step}":
            if others:
                write_bytes(pointer, f"step_{others[-1]}\n".encode())
            else:
                self.root.fs.delete_file(pointer.path)
        delete_tree(self.location(step))

    def commit(self, written: str, step: int, training_info: dict[str, Any]) -> str:
        """Finish the folder :meth:`begin` gave as checkpoint ``step``: ``training_info.json`` (it should list
        the files under ``"files"``), the rename into place on a local root, then ``latest``. Returns its URI."""
        final = self.location(step)
        if self.root.is_local:
            staging = Path(written)
            write_bytes(open_location(str(staging / INFO_FILE)), json_text(training_info).encode())
            if exists(final):  # re-saving a step (after a resume): move the old one aside first
                aside = Path(self.root.path) / f".old-step_{step}"
                shutil.rmtree(aside, ignore_errors=True)
                Path(final.path).rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            staging.rename(final.path)
        else:
            write_bytes(final.child(INFO_FILE), json_text(training_info).encode())
        write_bytes(self.root.child(LATEST_FILE), f"step_{step}\n".encode())
        self.rotate()
        return final.uri

    def rotate(self) -> None:
        """Delete the oldest checkpoints beyond ``keep``; never the one ``latest`` names."""
        if not self.keep:
            return
        latest = self.latest_step()
        for step in self.steps()[: -self.keep]:
            if step != latest:
                delete_tree(self.location(step))

    def remove_incomplete(self) -> list[str]:
        """Remove leftovers of interrupted saves (never complete, never named by ``latest``)."""
        leftovers = []
        if self.root.is_local:
            root = Path(self.root.path)
            if root.is_dir():
                leftovers = [p.name for p in root.iterdir() if p.name.startswith(STAGING_PREFIXES)]
        else:  # files written, never committed: no training_info.json (a damaged committed one stays)
            leftovers = [f"step_{step}" for step, present in self._step_folders().items() if INFO_FILE not in present]
        for name in leftovers:
            delete_tree(self.root.child(name))
        return sorted(leftovers)
