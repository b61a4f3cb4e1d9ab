"""Print the history of a tuning root: every promotion decision, adopted or rejected, and the current champion.

Reads ROOT/lineage.jsonl and ROOT/champion (written by the promotion gate at the end of each iteration).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("iter", "candidate", "decision", "gain", "CI", "p-value", "alpha", "look", "samples", "reason")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="tuning root: the folder holding lineage.jsonl and champion")
    parser.add_argument("--json", action="store_true", help="print the records as JSON lines instead of a table")
    parser.add_argument("--diff", action="store_true", help="under each decision, the config keys it changed")


def run(args: argparse.Namespace) -> int:
    from rayrl.errors import CommandError
    from rayrl.tuning.lineage import LINEAGE_FILE, Lineage

    root = Path(args.root)
    if root.name == LINEAGE_FILE and root.is_file():
        root = root.parent
    lineage = Lineage(root)
    if not lineage.exists():
        what = "does not exist" if not root.exists() else f"has no {LINEAGE_FILE}"
        raise CommandError(f"{root} {what}: give the root folder of a tuning run (`rayrl tune` writes it)")
    records = lineage.records()
    if args.json:
        for record in records:
            print(json.dumps(record))
        return 0
    print(format_history(records, lineage.champion(repair=False), diff=args.diff))
    return 0


def format_history(records: Sequence[dict[str, Any]], champion: dict[str, Any] | None, diff: bool = False) -> str:
    """The records as an aligned text table (reason last, unpadded), then the current champion.

    ``diff``: under each row, the config keys the candidate changed against its parent.
    """
    rows = [
        (str(r.get("iteration", "-")), str(r.get("candidate", "-")), str(r.get("decision", "-")),
         _number(r.get("mean_gain"), "+.4f"), _interval(r.get("effect_ci")), _number(r.get("p_value"), ".4g"),
         _number(r.get("alpha"), ".4g"),
         f"{r['look']}/{r['looks']}" if r.get("looks") else "-",
         str((r.get("samples") or {}).get("candidate", "-")),
         str(r.get("reason", "")))
        for r in records
    ]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS) - 1)]
    right = {0, 3, 5, 6, 8}  # numbers align right

    def line(row: Sequence[str]) -> str:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join([*cells, row[-1]]).rstrip()

    out = [line(COLUMNS), line(["-" * w for w in widths] + ["-" * len(COLUMNS[-1])])]
    for row, record in zip(rows, records):
        out.append(line(row))
        if diff and record.get("config_diff"):
            changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in record["config_diff"].items())
            out.append(f"{'':{widths[0]}}  {changes}")
    if not rows:
        out.append("(no decisions recorded)")
    out.append("")
    if champion is None:
        out.append("champion: none")
    else:
        out.append(f"champion: {champion.get('name')} since iteration {champion.get('iteration')} "
                   f"({champion.get('since')}): {champion.get('checkpoint')}")
        metrics = champion.get("metrics") or {}
        if metrics:
            out.append("  " + ", ".join(f"{env} {_number(v, '.4f')}" for env, v in metrics.items()))
    return "\n".join(out)


def _number(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)  # "inf", written for a non-finite statistic


def _interval(value: Any) -> str:
    """``[low, high]`` of a recorded confidence interval, or "-"."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return "-"
    return f"[{_number(value[0], '+.3f')}, {_number(value[1], '+.3f')}]"
