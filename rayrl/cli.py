"""The ``rayrl`` command: ``rayrl train EXPERIMENT.toml [--section.key value ...] [--output-dir DIR]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayrl", description="Ray-native RL post-training of language models.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="run an experiment end to end",
        description="Run an experiment. Any config key can be overridden: --optim.lr 1e-4 --max_steps 50.",
    )
    train.add_argument("experiment", nargs="?", help="experiment TOML file (default: built-in defaults)")
    train.add_argument("--output-dir", help="run folder (default runs/<name>-<timestamp>)")
    config = sub.add_parser("config", help="print the resolved config, or the reference of every key")
    config.add_argument("experiment", nargs="?")
    config.add_argument("--reference", action="store_true", help="print the Markdown table of every config key")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args, rest = _parser().parse_known_args(argv)
    from rayrl.config_loading import ConfigError, config_reference_markdown, load_config, parse_overrides

    try:
        overrides = parse_overrides(rest)
        if getattr(args, "output_dir", None):
            overrides["output_dir"] = args.output_dir
        if args.command == "config" and args.reference:
            print(config_reference_markdown())
            return 0
        cfg = load_config(args.experiment, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":

        print(cfg.model_dump_json(indent=2))
        return 0
    logging.basicConfig(level=cfg.log.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from rayrl.checkpoint import CheckpointError
    from rayrl.driver import train
    from rayrl.envs.registry import EnvError

    try:
        result = train(cfg)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except EnvError as e:
        print(f"error: {args.experiment or 'the configuration'}: {e}", file=sys.stderr)
        return 2
    print(f"done: {result.final_step} steps, run folder {result.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
