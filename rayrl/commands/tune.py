"""Run a Ray Tune sweep from the champion, then the promotion gate, for one or more iterations.

Each trial is a full rayrl run from the current champion's weights, with the base experiment plus the
sweep's [overrides] and one draw of its [param_space]; it reserves every actor's resources in one
placement group and reports metrics and a checkpoint at each evaluation. The best trials face the
champion on the confirmation split; every decision is appended to OUTPUT_DIR/lineage.jsonl and an
adopted candidate becomes the champion (OUTPUT_DIR/champion) that the next iteration starts from.
Results stay in the Tune experiment folders (STORAGE_PATH/NAME-iterN), readable with
ray.tune.Tuner.restore(path, trainable).get_results() or ray.tune.ExperimentAnalysis.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep TOML file (e.g. experiments/sweeps/promotion_demo.toml)")
    parser.add_argument("--champion", help="starting champion: RUN_DIR/checkpoints/step_N (replaces the file's)")
    parser.add_argument("--iterations", type=int, help="iterations (replaces the file's)")
    parser.add_argument("--num-samples", type=int, dest="num_samples", help="Tune num_samples (replaces the file's)")
    parser.add_argument("--storage-path", dest="storage_path", help="Tune storage: folder or URI (s3://, gs://)")
    parser.add_argument("--output-dir", dest="output_dir", help="lineage folder (default runs/sweeps/NAME)")
    parser.add_argument("--quiet", action="store_true", help="no Tune progress tables, only the summaries")


def run(args: argparse.Namespace) -> int:
    from rayrl.tuning.runner import run_sweep
    from rayrl.tuning.sweep import load_sweep

    settings = {k: getattr(args, k) for k in ("champion", "iterations", "num_samples", "storage_path", "output_dir")}
    sweep = load_sweep(args.sweep, **settings)  # every trial config is checked before Ray starts
    results = run_sweep(sweep, echo=print, verbose=0 if args.quiet else 1)
    champion = results[-1].champion if results else None
    if champion:
        print(f"done: {len(results)} iteration(s); champion {champion['name']} at {champion['checkpoint']}")
    return 0
