"""Copy a run folder to a storage URI: RUN_DIR lands at URI/<run name>/, with a _COMPLETE manifest written last.

URI is a local path, file:///abs/path, s3://bucket/prefix or gs://bucket/prefix. An S3-compatible server
(MinIO, Ceph, moto) is reached with s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http.
Credentials come from the usual environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_PROFILE, AWS_DEFAULT_REGION for s3://; GOOGLE_APPLICATION_CREDENTIALS for gs://.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder to archive")
    parser.add_argument("uri", metavar="URI", help="destination folder: the archive is URI/<name of RUN_DIR>")
    parser.add_argument("--force", action="store_true", help="replace an archive of the same name at URI")
    parser.add_argument(
        "--keep-latest", type=int, metavar="N", default=None,
        help="after a verified upload, delete the run's local checkpoints except the newest N "
        "(never the one `latest` names)",
    )  # fmt: skip
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar over bytes (default: on a terminal only)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from rayrl.errors import CommandError, StorageError
    from rayrl.storage.archive import archive

    try:
        result = archive(args.run_dir, args.uri, force=args.force, keep_latest=args.keep_latest, progress=args.progress)
    except StorageError as e:
        raise CommandError(str(e)) from e
    print(f"archived {result.files} files ({result.bytes / 2**20:.1f} MiB) to {result.uri}")
    if args.keep_latest is not None:
        deleted, kept = ", ".join(result.deleted) or "none", ", ".join(result.kept) or "none"
        print(f"deleted local checkpoints: {deleted}; kept: {kept}")
    return 0
