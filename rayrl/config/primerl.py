"""prime-rl's command line and its three config files, read as one rayrl config.

``rayrl train --trainer @ train.toml --orchestrator @ orch.toml --inference @ infer.toml
[--inference-gpu-ids 0,1,2,3,4,5 --trainer-gpu-ids 6,7] [--inference.parallel.dp 6] --output-dir DIR``
is prime-rl's ``uv run rl`` line with ``rayrl train`` in front. Each file's keys are mapped onto rayrl's
one config (:data:`KEY_MAP`): prime-rl runs three processes, rayrl runs one Ray program, so keys that
appear in several files (``max_steps``, ``[model] name``, ``[ckpt]``, ``[wandb]``) become one key. Rules:

- a key of :data:`KEY_MAP` sets its rayrl key; ``[[env]]`` entries are taken whole;
- a key that is not prime-rl's but is a rayrl key at the same place (``[model.tiny]``, ``[warmstart]``; in the
  inference file also rayrl's ``[inference]`` keys at its top, ``--inference.threads 2``) is taken as it is,
  so the files can hold what only rayrl has;
- any other key has no rayrl meaning: one warning names it (file, line) and it is ignored;
- a key set differently in two files is an error when it changes what is trained (:data:`MUST_AGREE`),
  else the first file's value (trainer, orchestrator, inference) wins with a warning;
- ``--trainer.K V`` / ``--orchestrator.K V`` / ``--inference.K V`` set ``K`` in that file (kebab-case as
  prime-rl writes it, ``--trainer.ckpt.resume-step -1``; a bare ``--role.flag`` is true, ``--role.no-flag``
  false); ``--inference-gpu-ids`` / ``--trainer-gpu-ids`` set how many replicas and learners of one GPU each
  (Ray places them: the ids are counted, not pinned); any other ``--key value`` is a rayrl override, last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrl.config.loading import _override_value, _set_path, anchor_paths, apply_overrides, deep_merge
from rayrl.config.located import KeyPath, TomlFile, annotation_at, join, read_toml, validate
from rayrl.config.models import Config
from rayrl.errors import ConfigError

log = logging.getLogger("rayrl")

ROLES = ("trainer", "orchestrator", "inference")
FILE_FLAGS = tuple(f"--{role}" for role in ROLES)
SHARED = "shared"  # the top-level keys of a combined ``@ rl.toml`` (its [trainer] etc. tables go to their role)
GPU_FLAGS = ("--inference-gpu-ids", "--trainer-gpu-ids")
HINT = "prime-rl's files are mapped as docs/prime-rl.md lists"

_COMMON = {
    "max_steps": "max_steps", "seed": "seed", "model.name": "model.name",
    "ckpt.interval": "ckpt.interval", "ckpt.keep": "ckpt.keep", "ckpt.resume_step": "ckpt.resume_step",
    "wandb.project": "wandb.project", "wandb.name": "wandb.name", "log.level": "log.level",
}
# prime-rl key (dotted, as in that role's file) -> rayrl key
KEY_MAP: dict[str, dict[str, str]] = {
    "trainer": {
        **_COMMON,
        "model.dtype": "model.dtype",
        "optim.lr": "optim.lr", "optim.weight_decay": "optim.weight_decay", "optim.max_norm": "optim.max_norm",
        "scheduler.warmup_steps": "optim.warmup_steps", "micro_batch_size": "learner.micro_batch_size",
        "model.lora.rank": "lora.rank", "model.lora.alpha": "lora.alpha", "model.lora.dropout": "lora.dropout",
        "model.lora.target_modules": "lora.target_modules",
        "model.experimental.lora.rank": "lora.rank", "model.experimental.lora.alpha": "lora.alpha",
        "model.experimental.lora.dropout": "lora.dropout",
        "model.experimental.lora.target_modules": "lora.target_modules",
    },
    "orchestrator": {
        **_COMMON,
        "batch_size": "batch_size", "rollouts_per_example": "rollouts_per_example", "group_size": "rollouts_per_example",
        "seq_len": "seq_len", "micro_batch_size": "learner.micro_batch_size",
        "mask_truncated_completions": "algorithm.mask_truncated_completions",
        "async_level": "algorithm.max_off_policy_steps", "max_async_level": "algorithm.max_off_policy_steps",
        "sampling.max_tokens": "sampling.max_tokens", "sampling.temperature": "sampling.temperature",
        "sampling.top_p": "sampling.top_p",
    },
    "inference": {
        "model.name": "model.name", "model.dtype": "model.dtype", "seed": "seed", "parallel.dp": "inference.replicas",
    },
}
KEY_MAP[SHARED] = {**KEY_MAP["inference"], **KEY_MAP["trainer"], **KEY_MAP["orchestrator"]}
# rayrl keys whose values must agree when several files set them (they change what is trained)
MUST_AGREE = ("model.name", "max_steps", "seq_len", "batch_size", "rollouts_per_example", "optim.lr")
# prime-rl values that mean "rayrl's default"
DEFAULT_WORDS = {"model.dtype": ("auto",)}
# prime-rl keys rayrl has no meaning for, silent at a value that is what rayrl does anyway
SAME_AS_RAYRL = {("parallel", "tp"): 1, ("parallel", "pp"): 1}
# prime-rl spellings of values rayrl spells otherwise
VALUE_FIXES = {"log.level": lambda v: v.upper() if isinstance(v, str) else v}


@dataclass
class Setting:
    value: Any
    origin: str  # "orch.toml line 3 (batch_size)" or "command line (--trainer.optim.lr)"


@dataclass
class TrioArgs:
    """The prime-rl part of a command line, split."""

    # role -> its @ files in order, each with the table it reads (() = the whole file; ("trainer",) = the
    # [trainer] table of a combined rl.toml)
    files: dict[str, list[tuple[str, KeyPath]]] = field(default_factory=dict)
    role_overrides: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)  # role -> [(dotted key, value)]
    gpu_ids: dict[str, list[int]] = field(default_factory=dict)  # "inference" / "trainer" -> ids
    overrides: dict[str, str] = field(default_factory=dict)  # plain rayrl --key value
    output_dir: str | None = None


def is_trio(tokens: list[str]) -> bool:
    """Whether a command line uses prime-rl's ``--trainer @ FILE`` (or combined ``@ rl.toml``) form."""
    return bool(tokens) and tokens[0].startswith("@") or any(
        t in FILE_FLAGS and tokens[i + 1 : i + 2] and tokens[i + 1].startswith("@") for i, t in enumerate(tokens)
    )


def parse_trio_args(tokens: list[str]) -> TrioArgs:
    """Split ``tokens`` (after ``rayrl train``) into files, per-role overrides, GPU ids and rayrl overrides."""
    out = TrioArgs()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag, eq, inline = token.partition("=")
        if flag in FILE_FLAGS or token.startswith("@"):
            role, paths = (flag[2:] if flag in FILE_FLAGS else SHARED), []
            i += int(flag in FILE_FLAGS)
            while i < len(tokens) and tokens[i].startswith("@"):
                path = tokens[i][1:] or (tokens[i + 1] if i + 1 < len(tokens) else "")
                if not path or path.startswith("--"):
                    raise ConfigError(f"command line: {flag} @ needs a file after '@', e.g. {flag} @ {role}.toml")
                paths.append(path)
                i += 1 if tokens[i][1:] else 2
            if not paths:
                raise ConfigError(f"command line: {flag} needs '@ FILE' (prime-rl's form), e.g. {flag} @ {role}.toml")
            if role == SHARED:  # a combined file: its [trainer], [orchestrator], [inference] tables, its top keys
                for path in paths:
                    out.files.setdefault(SHARED, []).append((path, ()))
                    for each in ROLES:
                        out.files.setdefault(each, []).append((path, (each,)))
            else:
                out.files.setdefault(role, []).extend((path, ()) for path in paths)
            continue
        if not token.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {token!r}; with --trainer @ FILE the experiment is "
                              "given by the three files, overrides look like --trainer.optim.lr 1e-5")
        has_value = not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        value = inline if eq else (tokens[i + 1] if has_value else None)
        i += 1 + int(has_value)
        if flag in GPU_FLAGS:
            out.gpu_ids[flag[2:].split("-")[0]] = gpu_id_list(flag, value)
        elif flag == "--output-dir":
            if value is None:
                raise ConfigError("command line: --output-dir needs a folder or storage URI")
            out.output_dir = value
        elif flag.split(".")[0] in FILE_FLAGS and "." in flag:
            role, key = flag[2:].split(".", 1)
            key = snake(key)
            if value is None:  # prime-rl's boolean flags: --x.flag / --x.no-flag
                last = key.rsplit(".", 1)
                negated = last[-1].startswith("no_")
                key = ".".join([*last[:-1], last[-1][3:]]) if negated else key
                parsed: Any = not negated
            else:
                parsed = value
            out.role_overrides.setdefault(role, []).append((key, parsed))
        else:
            if value is None:
                raise ConfigError(f"command line: {flag} needs a value, e.g. {flag} VALUE")
            out.overrides[snake(flag[2:])] = value
    missing = [r for r in ("trainer", "orchestrator") if r not in out.files]
    if missing and out.files and SHARED not in out.files:
        raise ConfigError(f"command line: --{missing[0]} @ FILE is missing; prime-rl's form gives --trainer @ "
                          "train.toml --orchestrator @ orch.toml (and optionally --inference @ infer.toml)")
    return out


def gpu_id_list(flag: str, value: str | None) -> list[int]:
    try:
        ids = [int(p) for p in (value or "").split(",") if p.strip()]
    except ValueError:
        ids = []
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ConfigError(f"command line: {flag} {value or ''} is not a list of distinct GPU ids; e.g. {flag} 0,1,2")
    return ids


def snake(key: str) -> str:
    return key.replace("-", "_")


def flatten(data: Mapping[str, Any], prefix: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    """Leaf key paths of a TOML table; arrays of tables (``[[env]]``) and inline ``args`` tables stay whole."""
    out: list[tuple[KeyPath, Any]] = []
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and key != "args":
            out.extend(flatten(value, path))
        else:
            out.append((path, value))
    return out


def rayrl_key(role: str, path: KeyPath) -> str | None:
    """The rayrl key a prime-rl key of ``role`` sets (None: no rayrl meaning)."""
    dotted = ".".join(path)
    mapped = KEY_MAP[role].get(dotted)
    if mapped is not None:
        return mapped
    if path and path[0] == "env":
        return "env"
    if annotation_at(Config, path) is not None:
        return dotted
    if role == "inference" and annotation_at(Config, ("inference", *path)) is not None:
        return f"inference.{dotted}"  # rayrl's [inference] keys, e.g. --inference.threads 2
    return None


def read_role_files(entries: list[tuple[str, KeyPath]]) -> tuple[dict, dict[KeyPath, str]]:
    """The role's files (or their tables) deep-merged left to right, and where each leaf key was set."""
    data: dict = {}
    where: dict[KeyPath, str] = {}
    for path, table in entries:
        toml: TomlFile = read_toml(path, what="prime-rl config file", hint=HINT)
        part: Any = toml.data
        for key in table:
            part = part.get(key, {}) if isinstance(part, dict) else {}
        if not table:  # the whole file: a combined file's role tables are read by their roles
            part = {k: v for k, v in part.items() if k not in ROLES}
        if not isinstance(part, dict):
            raise ConfigError(join([f"{path}: '{'.'.join(table)}' must be a table ([{'.'.join(table)}])"], HINT))
        data = deep_merge(data, part)
        name = Path(path).name
        for key, _ in flatten(part):
            line = toml.lines.get((*table, *key))
            where[key] = f"{name}{f' line {line}' if line else ''} ({'.'.join((*table, *key))})"
    return data, where


def collect(args: TrioArgs) -> tuple[dict[str, list[Setting]], list[str]]:
    """Every rayrl key the trio sets, with each value and its origin, and the warnings about ignored keys."""
    settings: dict[str, list[Setting]] = {}
    warnings: list[str] = []
    for role in (SHARED, *ROLES):
        data, where = read_role_files(args.files.get(role, []))
        cli_where: dict[KeyPath, str] = {}
        for dotted, text in args.role_overrides.get(role, []):
            # set in the role's table as rayrl's own overrides are (into [[env]] entries too: env.0.args.x),
            # the text read as the rayrl key it sets expects (a string key keeps it: --trainer.wandb.name 2024)
            path = tuple(dotted.split("."))
            target = rayrl_key(role, path)
            typed_as = path if target is None or target == "env" else tuple(target.split("."))
            where_set = cli_where[path] = f"command line (--{role}.{dotted.replace('_', '-')})"
            _set_path(data, path, _override_value(typed_as, text), where_set)
        for path, value in flatten(data):
            origin = cli_where.get(path) or where.get(path) or f"--{role} ({'.'.join(path)})"
            target = rayrl_key(role, path)
            if target is None and SAME_AS_RAYRL.get(path, object()) == value:
                continue
            if target is None:
                whose = "top-level" if role == SHARED else role
                warnings.append(f"{origin}: prime-rl's {whose} key '{'.'.join(path)}' has no rayrl meaning; ignored")
                continue
            if isinstance(value, str) and value in DEFAULT_WORDS.get(target, ()):
                continue
            if role in ("trainer", SHARED) and target.startswith("lora."):
                settings.setdefault("lora.enabled", []).append(Setting(True, origin))
            value = VALUE_FIXES.get(target, lambda v: v)(value)
            settings.setdefault(target, []).append(Setting(value, origin))
    return settings, warnings


def resolve(settings: dict[str, list[Setting]]) -> tuple[dict[str, Setting], list[str]]:
    """One value per rayrl key: a disagreement on :data:`MUST_AGREE` is an error, elsewhere the first wins."""
    chosen: dict[str, Setting] = {}
    warnings, problems = [], []
    for key, candidates in settings.items():
        typed = [c for c in candidates if c.origin.startswith("command line")]
        if typed:  # a command-line value overrides the files, as in prime-rl
            chosen[key] = typed[-1]
            continue
        first = candidates[0]
        others = [c for c in candidates[1:] if c.value != first.value]
        if others:
            said = "; ".join(f"{c.origin} says {c.value!r}" for c in [first, *others])
            if key in MUST_AGREE:
                problems.append(f"'{key}' differs between the files: {said}. rayrl runs one loop with one value: "
                                "make them agree (or set it in one file only)")
            else:
                warnings.append(f"'{key}': {said}; rayrl keeps one value: {first.value!r}")
        chosen[key] = first
    if problems:
        raise ConfigError(join(problems, HINT))
    return chosen, warnings


def apply_gpus(args: TrioArgs, chosen: dict[str, Setting], raw: dict) -> list[str]:
    """``--inference-gpu-ids`` / ``--trainer-gpu-ids``: replicas and learners of one GPU each."""
    notes = []
    inference, trainer = args.gpu_ids.get("inference"), args.gpu_ids.get("trainer")
    if inference and trainer and set(inference) & set(trainer):
        both = ",".join(map(str, sorted(set(inference) & set(trainer))))
        raise ConfigError(f"command line: GPU {both} is in both --inference-gpu-ids and --trainer-gpu-ids; "
                          "give each GPU to one side")
    if inference:
        dp = chosen.get("inference.replicas")
        if dp is not None and dp.value != len(inference):
            raise ConfigError(f"{dp.origin}: {dp.value} replicas, but --inference-gpu-ids lists {len(inference)} "
                              "GPUs; rayrl runs one replica per GPU (tensor parallelism is not supported): make them "
                              "agree")
        raw.setdefault("inference", {}).update(replicas=len(inference), gpus_per_replica=1)
        notes.append(f"{len(inference)} inference replica(s) of 1 GPU each")
    if trainer:
        raw.setdefault("learner", {}).update(workers=len(trainer), gpus_per_worker=1)
        notes.append(f"{len(trainer)} learner(s) of 1 GPU each")
    if notes:
        notes = ["--inference-gpu-ids/--trainer-gpu-ids: " + " and ".join(notes)
                 + "; Ray chooses the devices (the ids are counted, not pinned)"]
    return notes


def load_trio(tokens: list[str]) -> tuple[Config, list[str]]:
    """The rayrl config a prime-rl command line (``tokens`` after ``rayrl train``) describes, and the
    warnings to show (ignored keys, values kept from one file of several)."""
    args = parse_trio_args(tokens)
    settings, warnings = collect(args)
    chosen, more = resolve(settings)
    warnings += more + check_room(chosen)
    raw: dict = {}
    origins: dict[KeyPath, str] = {}
    for key, setting in chosen.items():
        path = tuple(key.split("."))
        _set_path(raw, path, setting.value, setting.origin)
        origins[path] = setting.origin
    warnings += apply_gpus(args, chosen, raw)
    if args.output_dir is not None:
        raw["output_dir"] = args.output_dir
    origins.update(apply_overrides(raw, args.overrides, {}))
    cfg = validate(Config, raw, TomlFile(None), origins, hint=HINT)
    anchor = args.files.get("orchestrator") or args.files[SHARED]
    anchor_paths(cfg, Path(anchor[-1][0]).resolve().parent)
    return cfg, warnings


def check_room(chosen: dict[str, Setting]) -> list[str]:
    """prime-rl lets ``[sampling] max_tokens`` reach ``seq_len`` (its trainer cuts the sample at seq_len); rayrl
    cuts each completion at the room the prompt leaves under seq_len, so any max_tokens >= seq_len samples the
    same as seq_len - 1, the largest value rayrl's config accepts: that value is used, with a note."""
    seq_len, max_tokens = chosen.get("seq_len"), chosen.get("sampling.max_tokens")
    if seq_len is None or max_tokens is None or not all(isinstance(s.value, int) for s in (seq_len, max_tokens)):
        return []
    if max_tokens.value < seq_len.value:
        return []
    chosen["sampling.max_tokens"] = Setting(seq_len.value - 1, max_tokens.origin)
    return [f"{max_tokens.origin}: max_tokens {max_tokens.value} is not below seq_len {seq_len.value} "
            f"({seq_len.origin}); rayrl cuts every completion at seq_len minus its prompt, so it samples as "
            f"max_tokens {seq_len.value - 1} (used)"]


def resume_tokens(tokens: list[str]) -> list[str]:
    """``tokens`` without ``--output-dir`` and any ``--*.ckpt.resume-step``: the base of a resume command."""
    out, i = [], 0
    while i < len(tokens):
        key = tokens[i].split("=", 1)[0]
        if key == "--output-dir" or snake(key).endswith("ckpt.resume_step"):
            i += 1 if "=" in tokens[i] else 2
            continue
        out.append(tokens[i])
        i += 1
    return out
