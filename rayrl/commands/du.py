"""Show what a local run folder holds on disk: each checkpoint (latest, complete or incomplete), leftovers of
interrupted saves, logs, plots and anything else, with totals and the space free on its filesystem.

Sizes are in decimal units (1 GB = 10^9 bytes), as ckpt.min_free_gb counts them. Checkpoints are read from
RUN_DIR/checkpoints (a run whose ckpt.dir is elsewhere: pass --checkpoints).
"""

from __future__ import annotations

import argparse
from pathlib import Path

SECTIONS = ("checkpoints", "staging leftovers", "logs", "plots", "other")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (local)")
    parser.add_argument("--checkpoints", metavar="DIR", default=None,
                        help="the run's checkpoint folder when ckpt.dir put it elsewhere (default RUN_DIR/checkpoints)")  # fmt: skip


def tree_bytes(path: Path) -> int:
    """Bytes of the file ``path``, or of every file under the folder ``path`` (links are not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(tree_bytes(child) for child in path.iterdir())


def usage(run_dir: Path, checkpoints: Path) -> list[tuple[str, list[tuple[str, int, str]]]]:
    """(section, [(name, bytes, note)]) for the run folder: checkpoints, staging leftovers, logs, plots, other."""
    from rayrl.errors import CheckpointError
    from rayrl.storage.checkpoints import STAGING_PREFIXES, STEP_DIR, CheckpointStore

    sections: dict[str, list[tuple[str, int, str]]] = {s: [] for s in SECTIONS}
    if checkpoints.is_dir():
        store = CheckpointStore(checkpoints)
        complete = set(store.steps())
        try:
            latest = store.latest_step()
        except CheckpointError:  # `latest` names no complete checkpoint: the steps still show what is there
            latest = None
        for entry in sorted(checkpoints.iterdir(), key=_step_order):
            size, name = tree_bytes(entry), _display(entry, run_dir)
            if (m := STEP_DIR.match(entry.name)) and entry.is_dir():
                step = int(m.group(1))
                note = ("complete" if step in complete else "incomplete") + (", latest" if step == latest else "")
                sections["checkpoints"].append((name, size, note))
            elif entry.name.startswith(STAGING_PREFIXES):
                sections["staging leftovers"].append((name, size, "interrupted save, removed when the run starts"))
            elif entry.name != "latest":
                sections["other"].append((name, size, ""))
    for entry in sorted(run_dir.iterdir()):
        if entry == checkpoints:
            continue
        kind = "other"
        if entry.is_file() and (entry.name.startswith("metrics.jsonl") or entry.suffix == ".log"):
            kind = "logs"
        elif entry.is_file() and entry.suffix == ".png":
            kind = "plots"
        sections[kind].append((_display(entry, run_dir), tree_bytes(entry), ""))
    return [(section, rows) for section, rows in sections.items() if rows]


def _step_order(entry: Path) -> tuple[int, str]:
    from rayrl.storage.checkpoints import STEP_DIR

    m = STEP_DIR.match(entry.name)
    return (int(m.group(1)), "") if m else (-1, entry.name)


def _display(entry: Path, run_dir: Path) -> str:
    """The entry's path relative to the run folder (a folder ends with '/')."""
    try:
        name = entry.relative_to(run_dir).as_posix()
    except ValueError:  # --checkpoints outside the run folder
        name = str(entry)
    return name + "/" if entry.is_dir() else name


def run(args: argparse.Namespace) -> int:
    from rayrl.errors import CommandError
    from rayrl.storage.archive import RUN_MARKERS
    from rayrl.storage.disk import free_bytes, human_size
    from rayrl.storage.location import is_uri

    if is_uri(args.run_dir) and not args.run_dir.lower().startswith("file://"):
        raise CommandError(f"{args.run_dir}: rayrl du reads local run folders only (restore it first: rayrl restore)")
    run_dir = Path(args.run_dir.removeprefix("file://")).expanduser().absolute()
    checkpoints = Path(args.checkpoints).expanduser().absolute() if args.checkpoints else run_dir / "checkpoints"
    if not run_dir.is_dir():
        raise CommandError(f"{run_dir}: {'not a folder' if run_dir.exists() else 'no such folder'}; name a run folder")
    if not args.checkpoints and not any((run_dir / name).exists() for name in RUN_MARKERS):
        raise CommandError(f"{run_dir} is not a rayrl run folder: it holds none of {', '.join(RUN_MARKERS)}")
    if args.checkpoints and not checkpoints.is_dir():
        raise CommandError(f"--checkpoints {checkpoints}: no such folder")

    sections = usage(run_dir, checkpoints)
    rows = [row for _, section_rows in sections for row in section_rows]
    width = max([len(name) for name, _, _ in rows] + [len("total")]) + 2
    print(f"{run_dir}")
    for section, section_rows in sections:
        print(f"{section} ({human_size(sum(size for _, size, _ in section_rows))})")
        for name, size, note in section_rows:
            print(f"  {name:<{width}}{human_size(size):>10}  {note}".rstrip())
    print(f"{'total':<{width + 2}}{human_size(sum(size for _, size, _ in rows)):>10}")
    print(f"{'free':<{width + 2}}{human_size(free_bytes(run_dir)):>10}  on the filesystem of {run_dir}")
    return 0
