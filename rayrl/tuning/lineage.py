"""The lineage of a tuning root: every promotion decision, and a pointer to the current champion.

```
ROOT/lineage.jsonl   append-only, one JSON object per decision (initial, adopted or rejected)
ROOT/champion        the current champion (JSON: name, checkpoint, iteration, since, metrics, config),
                     replaced atomically (temporary file, fsync, os.replace)
```

A record holds: time, iteration, parent, candidate, checkpoint, decision, reason, mean_gain, test,
statistic, p_value, alpha, metrics (per environment: champion, candidate, delta, n), config_diff (dotted
key -> [champion value, candidate value]), and for a new champion its whole config; the gate's design,
the look at which the decision fell of the looks planned, effect_ci (the gain's repeated confidence
interval, level 1 - 2 alpha), boundary and stage_z (the combined Z's boundary and each look's z) and samples
(scored for the candidate and for the champion, whose samples every candidate of the iteration shares). Records are written
(and fsync'd) before the pointer moves, so a crash between the two leaves a pointer older than the
record; :meth:`Lineage.champion` notices and repairs it from the record. A crash in the middle of an
append leaves a torn last line: reading skips it with a warning, and the next append starts on a new line.

Standard library only: ``rayrl lineage`` imports this.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rayrl.storage.files import write_text_atomic

logger = logging.getLogger(__name__)

LINEAGE_FILE = "lineage.jsonl"
CHAMPION_FILE = "champion"


class _Missing:
    """A key one side of config_diff lacks (shown as None)."""


_MISSING = _Missing()


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Keys whose values differ between two nested config dicts: dotted key -> [old, new], sorted by key.

    Dicts recurse (``optim.lr``); lists of equal length recurse by index, as overrides spell them
    (``env.0.args.digits``); a key present on one side only shows ``None`` on the other.
    """
    out: dict[str, list[Any]] = {}
    _diff(_plain(old), _plain(new), "", out)
    return dict(sorted(out.items()))


def _diff(old: Any, new: Any, key: str, out: dict[str, list[Any]]) -> None:
    if isinstance(old, dict) or isinstance(new, dict):
        if isinstance(old, dict | _Missing) and isinstance(new, dict | _Missing):
            a, b = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
            for k in {**a, **b}:
                _diff(a.get(k, _MISSING), b.get(k, _MISSING), f"{key}.{k}" if key else str(k), out)
            return
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and key:
        for i, (a, b) in enumerate(zip(old, new)):
            _diff(a, b, f"{key}.{i}", out)
        return
    if old != new:
        out[key] = [None if isinstance(old, _Missing) else old, None if isinstance(new, _Missing) else new]


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses and pydantic models to dicts, tuples to lists, numpy scalars to Python,
    non-finite floats to strings ("inf"), so the file stays strict JSON."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    elif is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Lineage:
    """Reads and appends ``ROOT/lineage.jsonl`` and moves the ``ROOT/champion`` pointer."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.path = self.root / LINEAGE_FILE
        self.champion_path = self.root / CHAMPION_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    # ---- reading -------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every readable record, oldest first; torn or corrupt lines are skipped with a warning."""
        if not self.path.is_file():
            return []
        out = []
        for number, line in enumerate(self.path.read_bytes().split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError):
                logger.warning("%s line %d is torn or corrupt (a crash while writing?): skipped", self.path, number)
                continue
            out.append(record)
        return out

    def next_iteration(self) -> int:
        """1 + the highest iteration recorded (the initial champion is iteration 0)."""
        return 1 + max((int(r.get("iteration", 0)) for r in self.records()), default=-1)

    def champion(self, repair: bool = True) -> dict[str, Any] | None:
        """The current champion (name, checkpoint, iteration, since, metrics, config), or None before start.

        The pointer normally says; if the newest initial/adopted record is newer than the pointer (a crash
        between appending the record and moving the pointer) or the pointer is unreadable, the record wins
        and (with ``repair``) the pointer is rewritten from it.
        """
        pointer = self._read_pointer()
        crowned = [r for r in self.records() if r.get("decision") in ("initial", "adopted")]
        if not crowned:
            return pointer
        last = crowned[-1]
        if pointer is not None and (pointer.get("checkpoint"), pointer.get("iteration")) == (
            last.get("checkpoint"), last.get("iteration")
        ):
            return pointer
        logger.warning("%s is missing or older than %s; %s it from the last adopted record", self.champion_path,
                       self.path, "repairing" if repair else "reading")
        metrics = {env: m.get("candidate") for env, m in (last.get("metrics") or {}).items()}
        args = (last["candidate"], last["checkpoint"], last["iteration"], metrics, last.get("config"))
        if not repair:
            return _plain(dict(zip(("name", "checkpoint", "iteration", "metrics", "config"), args),
                               since=last.get("time")))
        return self._write_pointer(*args, since=last.get("time"))

    def _read_pointer(self) -> dict[str, Any] | None:
        try:
            pointer = json.loads(self.champion_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            logger.warning("%s is unreadable", self.champion_path)
            return None
        return pointer if isinstance(pointer, dict) else None

    # ---- writing -------------------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record (``time`` added when absent) as one line, flushed and fsync'd."""
        record = _plain({"time": _now(), **record})
        line = json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() > 0 and not self._ends_with_newline():
                f.write(b"\n")  # close a torn last line, so this record is not glued onto it
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        return record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def set_champion(
        self,
        name: str,
        checkpoint: str | os.PathLike[str],
        iteration: int,
        metrics: Mapping[str, float] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Point ``ROOT/champion`` at a checkpoint (atomic replace); returns the pointer's content."""
        return self._write_pointer(name, checkpoint, iteration, metrics, config)

    def _write_pointer(self, name, checkpoint, iteration, metrics, config, since: str | None = None) -> dict[str, Any]:
        pointer = _plain({"name": name, "checkpoint": str(checkpoint), "iteration": int(iteration),
                          "since": since or _now(), "metrics": dict(metrics or {}), "config": config})
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.champion_path, json.dumps(pointer, indent=2, allow_nan=False) + "\n")
        return pointer

    def start(
        self,
        checkpoint: str | os.PathLike[str],
        name: str = "initial",
        metrics: Mapping[str, float] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Record the first champion (decision "initial", iteration 0) and point at it.

        Idempotent for the same checkpoint; raises ValueError if ROOT already has a different champion.
        """
        current = self.champion()
        if current is not None:
            if current.get("checkpoint") == str(checkpoint) and current.get("iteration") == 0:
                return current
            raise ValueError(f"{self.root} already has a champion ({current.get('name')}, "
                             f"{current.get('checkpoint')}): continue from it, or use a new root")
        self.append({"iteration": 0, "parent": None, "candidate": name, "checkpoint": str(checkpoint),
                     "decision": "initial", "reason": "initial champion",
                     "metrics": {env: {"candidate": v} for env, v in (metrics or {}).items()},
                     "config_diff": {}, "config": config})
        return self.set_champion(name, checkpoint, 0, metrics, config)

    def record(
        self,
        decisions: Sequence[Any],
        iteration: int,
        checkpoints: Mapping[str, str | os.PathLike[str]],
        configs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any] | None:
        """Append one iteration's gate decisions, then move the pointer if one was adopted.

        ``decisions``: ``rayrl.evaluation.gate.Decision`` objects; ``checkpoints``: candidate -> its
        checkpoint folder; ``configs``: candidate -> its whole config (diffed against the champion's,
        and kept in the pointer of a new champion). Returns the new champion's pointer, or None.
        """
        configs = configs or {}
        parent = self.champion()
        if parent is None:
            raise ValueError(f"{self.root} has no champion yet: call start(checkpoint) first")
        parent_config = parent.get("config") or {}
        for d in decisions:
            if d.parent != parent.get("name"):
                logger.warning("decision on %s names parent %r, but the champion is %r",
                               d.candidate, d.parent, parent.get("name"))
        adopted = None
        for d in decisions:
            config = configs.get(d.candidate)
            record = {
                "iteration": iteration, "parent": d.parent, "candidate": d.candidate,
                "checkpoint": str(checkpoints[d.candidate]), "decision": "adopted" if d.adopted else "rejected",
                "reason": d.reason, "mean_gain": d.mean_gain, "test": d.test, "statistic": d.statistic,
                "p_value": d.p_value, "alpha": d.alpha, "metrics": d.per_env,
                "design": d.design, "look": d.look, "looks": d.looks,
                "effect_ci": list(d.effect_ci) if d.effect_ci else None, "boundary": d.boundary,
                "stage_z": list(d.stage_z), "samples": dict(d.samples),
                "config_diff": config_diff(parent_config, config) if config is not None else {},
            }
            if d.adopted:
                if adopted is not None:
                    raise ValueError(f"two candidates adopted in iteration {iteration}: "
                                     f"{adopted.candidate} and {d.candidate}")
                adopted, record["config"] = d, config
            self.append(record)
        if adopted is None:
            return None
        metrics = {env: m["candidate"] for env, m in adopted.per_env.items()}
        return self.set_champion(adopted.candidate, checkpoints[adopted.candidate], iteration, metrics,
                                 configs.get(adopted.candidate))
