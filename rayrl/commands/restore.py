"""Copy an archived run folder back from a storage URI (as printed by `rayrl archive`) into RUN_DIR.

Refuses an archive without its _COMPLETE manifest, checks every file's size and sha256 against it, and
writes into a temporary folder beside RUN_DIR that is renamed into place only when all is verified.
An existing non-empty RUN_DIR is replaced only with --force.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", metavar="URI", help="the archive: URI/<run name> as `rayrl archive` printed it")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="where to put the run folder")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty RUN_DIR")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar over bytes (default: on a terminal only)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from rayrl.errors import CommandError, StorageError
    from rayrl.storage.archive import restore

    try:
        result = restore(args.uri, args.run_dir, force=args.force, progress=args.progress)
    except StorageError as e:
        raise CommandError(str(e)) from e
    print(f"restored {result.files} files ({result.bytes / 2**20:.1f} MiB), checksums verified, to {result.run_dir}")
    print(f"resume with: rayrl train EXPERIMENT --output-dir {result.run_dir} --ckpt.resume_step -1")
    return 0
