"""The ``rayrl`` command: ``rayrl train EXPERIMENT.toml [--section.key value ...] [--output-dir DIR]``.

``train`` and ``config`` live here; every other subcommand is a module in :data:`COMMANDS` that defines
``add_arguments(parser)`` and ``run(args) -> int`` and keeps its top-level imports light (the parser
imports it). Errors users can fix (``rayrl.errors.RayrlError`` and its kinds) print one ``error:`` line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from rayrl.errors import RayrlError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("rayrl.commands.eval", "evaluate a run's checkpoints on held-out data (never touches training)"),
    "tune": ("rayrl.commands.tune", "run a Ray Tune sweep from the champion, then the promotion gate"),
    "lineage": ("rayrl.commands.lineage", "print the history of champions and promotion decisions"),
    "archive": ("rayrl.commands.archive", "copy a run folder to a storage URI (local, file://, s3://, gs://)"),
    "restore": ("rayrl.commands.restore", "copy a run folder back from a storage URI"),
    "export": ("rayrl.commands.export", "write a checkpoint as a Hugging Face model folder (adapter merged)"),
    "du": ("rayrl.commands.du", "show what a run folder holds on disk: checkpoints, leftovers, logs, free space"),
    "plan": ("rayrl.commands.plan", "print the CPUs, GPUs and placement a run reserves, and where it fits on a cluster"),
    "gate": ("rayrl.commands.gate", "the promotion gate's tools: `rayrl gate plan SWEEP.toml` (its power and cost)"),
}


EXPERIMENT_COMMANDS = ("train", "sft", "config")  # EXPERIMENT.toml then --section.key value overrides


def experiment_and_overrides(tokens: list[str]) -> tuple[str | None, list[str]]:
    """The experiment file and the override tokens among a command's arguments (``tokens``, after the
    subcommand). argparse alone would take an override's value for the experiment (``rayrl train
    --max_steps 5``); here every ``--key`` without ``=`` owns the token after it, and the first token no flag
    owns is the experiment. ``--output-dir`` and ``--reference`` (argparse's) are left out."""
    experiment, overrides, i = None, [], 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            takes_value = "=" not in token and token != "--reference"
            owned = tokens[i + 1 : i + 2] if takes_value and i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else []
            if token.split("=", 1)[0] not in ("--output-dir", "--reference"):
                overrides += [token, *owned]
            i += 1 + len(owned)
            continue
        if experiment is None:
            experiment = token
        else:
            overrides.append(token)  # a stray value: parse_overrides names it
        i += 1
    return experiment, overrides


def user_message(error: RayrlError) -> str:
    """The message of a user-facing error; raised inside an actor, Ray wraps it with the remote traceback:
    the original's message alone."""
    cause = getattr(error, "cause", None)
    return str(cause if isinstance(cause, RayrlError) else error)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


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
    sft = sub.add_parser(
        "sft",
        allow_abbrev=False,
        help="supervised fine-tuning on Ray Train; its output's model/ is a model.name for rayrl train",
        description="Fine-tune [model] on [sft] prompt/response data (JSONL or Parquet; default: the [[env]] "
        "entries' reference answers). Any config key can be overridden: --sft.lr 1e-4 --sft.epochs 2.",
    )
    sft.add_argument("experiment", nargs="?", help="experiment TOML file (default: built-in defaults)")
    sft.add_argument("--output-dir", help="run folder (default runs/<name>-sft-<timestamp>)")
    config = sub.add_parser("config", help="print the resolved config, or the reference of every key")
    config.add_argument("experiment", nargs="?")
    config.add_argument("--reference", action="store_true", help="print the Markdown table of every config key")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # not built yet
        command = sub.add_parser(name, allow_abbrev=False, help=help_text, description=module.__doc__)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in EXPERIMENT_COMMANDS:
        tokens = list(sys.argv[1:] if argv is None else argv)
        args.experiment, rest = experiment_and_overrides(tokens[tokens.index(args.command) + 1 :])
    if hasattr(args, "run"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        setup_logging()
        try:
            return args.run(args)
        except RayrlError as e:
            print(f"error: {user_message(e)}", file=sys.stderr)
            return 2
    from rayrl.config.loading import config_reference_markdown, load_config, parse_overrides
    from rayrl.config.primerl import is_trio, load_trio, parse_trio_args

    tokens = list(sys.argv[1:] if argv is None else argv)
    own = tokens[tokens.index(args.command) + 1 :]
    trio = args.command in ("train", "config") and is_trio(own)
    try:
        if trio:  # prime-rl's --trainer @ train.toml --orchestrator @ orch.toml --inference @ infer.toml
            cfg, warnings = load_trio(own)
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
            files = parse_trio_args(own).files
            args.experiment = (files.get("orchestrator") or files["shared"])[-1][0]  # where [[env]] is
        else:
            overrides = parse_overrides(rest)
            if getattr(args, "output_dir", None):
                overrides["output_dir"] = args.output_dir
            if args.command == "config" and args.reference:
                print(config_reference_markdown())
                return 0
            cfg = load_config(args.experiment, overrides)
    except RayrlError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(cfg.model_dump_json(indent=2))
        return 0
    setup_logging(cfg.log.level)
    from rayrl.errors import EnvError

    if args.command == "sft":
        return _sft(cfg)
    from rayrl.driver import train

    try:
        result = train(cfg)
    except EnvError as e:  # names the [[env]] entry: say which file it is in
        print(f"error: {args.experiment or 'the configuration'}: {user_message(e)}", file=sys.stderr)
        return 2
    except RayrlError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the loop started (in the loop it stops cleanly)
        print("stopped: interrupted before training started; nothing to resume", file=sys.stderr)
        return 130
    if result.stopped_by is not None:
        if result.final_step == 0:
            print(f"stopped by {result.stopped_by} before the first step; start again with: {command_text(tokens)}")
        else:
            where = f"checkpoint {result.last_checkpoint}" if result.last_checkpoint else "its newest checkpoint"
            print(f"stopped by {result.stopped_by} at step {result.final_step} of {cfg.max_steps} ({where}); "
                  f"resume with: {resume_command(tokens, result.output_uri, trio)}")
        return 128 + signal.Signals[result.stopped_by].value
    print(f"done: {result.final_step} steps, run folder {result.output_dir}")
    return 0


def argv_without_resume(tokens: list[str]) -> list[str]:
    """``tokens`` without ``--output-dir`` and ``--ckpt.resume_step`` (either ``--key value`` or ``--key=value``)."""
    out, i = [], 0
    while i < len(tokens):
        key = tokens[i].split("=", 1)[0]
        if key in ("--output-dir", "--ckpt.resume_step"):
            i += 1 if "=" in tokens[i] else 2
            continue
        out.append(tokens[i])
        i += 1
    return out


def command_text(tokens: list[str]) -> str:
    import shlex

    return shlex.join(["rayrl", *tokens])


def resume_command(tokens: list[str], output_dir: str, trio: bool = False) -> str:
    """The command that continues a stopped ``rayrl train`` run: its own arguments, the run folder and
    ``--ckpt.resume_step -1`` (prime-rl's ``--trainer.ckpt.resume-step -1`` on a prime-rl command line)."""
    if trio:
        from rayrl.config.primerl import resume_tokens

        return command_text([*resume_tokens(tokens), "--trainer.ckpt.resume-step", "-1", "--output-dir", str(output_dir)])
    return command_text([*argv_without_resume(tokens), "--output-dir", str(output_dir), "--ckpt.resume_step", "-1"])


def _sft(cfg) -> int:
    from rayrl.sft import run_sft

    try:
        result = run_sft(cfg)
    except RayrlError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    print(f"done: {result.steps} supervised steps{val}; model {result.model_dir}")
    print(f"train from it with: rayrl train EXPERIMENT --model.name {result.model_dir} --warmstart.enabled false")
    return 0


if __name__ == "__main__":
    sys.exit(main())
