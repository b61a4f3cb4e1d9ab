"""Peak memory of the default experiment: the whole process tree (driver, Ray's daemons, every actor).

    .venv/bin/python bench/memory.py [--max_steps 100] [extra rayrl overrides ...]

Starts `rayrl train experiments/default.toml` as a child process and samples, twice a second, the
summed PSS (proportional set size: shared pages such as the object store's weights count once, split
among the processes that map them) and RSS of it and all its descendants. Prints the peaks and the
largest processes at the peak.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def sample(root: psutil.Process) -> tuple[int, int, list[tuple[int, str]]]:
    pss = rss = 0
    per_process = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
            name = " ".join(proc.cmdline()[:2])[-60:] or proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss += info.pss
        rss += info.rss
        per_process.append((info.pss, name))
    return pss, rss, sorted(per_process, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max_steps", type=int, default=100)
    args, extra = ap.parse_known_args()
    out = tempfile.mkdtemp(prefix="bench-memory-")
    cmd = [str(ROOT / ".venv" / "bin" / "rayrl"), "train", str(ROOT / "experiments" / "default.toml"),
           "--max_steps", str(args.max_steps), "--output-dir", out, "--log.progress", "false", *extra]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(child.pid)
    peak_pss = peak_rss = 0
    top: list[tuple[int, str]] = []
    start = time.time()
    while child.poll() is None:
        pss, rss, procs = sample(root)
        if pss > peak_pss:
            peak_pss, top = pss, procs[:8]
        peak_rss = max(peak_rss, rss)
        time.sleep(0.5)
    mib = 2**20
    print(f"default experiment, {args.max_steps} steps, exit code {child.returncode}, {time.time() - start:.0f} s")
    print(f"peak total PSS {peak_pss / mib:.0f} MiB (peak summed RSS {peak_rss / mib:.0f} MiB, which counts shared pages "
          "once per process)")
    print("largest processes at the PSS peak:")
    for pss, name in top:
        print(f"  {pss / mib:7.0f} MiB  {name}")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
