"""Load a TOML experiment file plus ``--section.key value`` overrides into :class:`Config`.

Every problem becomes one :class:`~rayrl.errors.ConfigError` whose message names the file, the line
and the dotted key, and says what was expected (:mod:`rayrl.config.located`): a TOML syntax error
quotes the line with a caret, an unknown key names the closest valid one, a wrong type names the
expected type. An override's problem names where the override came from: the command line, or the
line of a sweep file that set it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rayrl.config.located import (
    INVALID, KeyPath, TomlFile, annotation_at, join, parse_value, read_toml, reference_markdown, unwrap_optional,
    validate,
)
from rayrl.config.models import Config
from rayrl.errors import ConfigError

COMMAND_LINE = "command line"


def load_config(
    path: str | os.PathLike | None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Read ``path`` (None = defaults only), apply ``overrides`` and validate into a :class:`Config`.

    ``overrides``: command-line words (``["--optim.lr", "1e-4"]``) or dotted keys to values (strings are
    parsed as TOML values). ``origins``: where each dotted override key was set, for error messages
    (default: the command line).
    """
    toml = TomlFile(None) if path is None else read_toml(path)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides or [])
    raw = dict(toml.data)
    set_paths = apply_overrides(raw, overrides, origins or {})
    cfg = validate(Config, raw, toml, {p: where for p, where in set_paths.items()})
    if path is not None:
        anchor_paths(cfg, Path(path).resolve().parent)
    return cfg


def config_reference_markdown() -> str:
    """A Markdown table of every key: dotted key | type | default | description."""
    return reference_markdown(Config)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--optim.lr", "1e-4", "--max_steps=5"]`` -> ``{"optim.lr": "1e-4", "max_steps": "5"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or not key:
            raise override_error(COMMAND_LINE, f"unexpected argument {arg!r}; overrides look like --section.key value")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise override_error(COMMAND_LINE, f"--{key} needs a value, e.g. --{key} VALUE")
            value, i = args[i + 1], i + 1
        out[key] = value
        i += 1
    return out


# ---- overrides -----------------------------------------------------------------------------------
def apply_overrides(raw: dict, overrides: Mapping[str, Any], origins: Mapping[str, str]) -> dict[KeyPath, str]:
    """Set each dotted override in ``raw`` (in place); return the key paths set, each with its origin."""
    set_paths: dict[KeyPath, str] = {}
    for dotted, text in overrides.items():
        where = origins.get(dotted, COMMAND_LINE)
        parts = tuple(p.strip() for p in dotted.split("."))
        if not all(parts):
            raise override_error(where, f"malformed key {dotted!r}")
        field = Config.model_fields.get(parts[0])
        if len(parts) > 1 and parts[0] not in raw and field is not None:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):  # index into the default list, e.g. --env.0.args.digits 3
                raw[parts[0]] = [v.model_dump() if isinstance(v, BaseModel) else v for v in default]
        _set_path(raw, parts, _override_value(parts, text), where)
        set_paths[parts] = where
    return set_paths


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict:
    """``base`` with ``overlay`` merged in: tables merged key by key, anything else replaced (neither changed)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _set_path(raw: dict, parts: KeyPath, value: Any, where: str) -> None:
    """``raw[a][b]... = value``, creating missing tables and indexing (never growing) lists."""
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = node[_list_index(node, parts[: i + 1], where)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            got = f"{'.'.join(parts[: i + 1])}' is {node!r} ({type(node).__name__})"
            raise override_error(where, f"cannot set '{'.'.join(parts)}': '{got}, not a table")
    if isinstance(node, list):
        node[_list_index(node, parts, where)] = value
    else:
        node[parts[-1]] = value


def _list_index(items: list, path: KeyPath, where: str) -> int:
    """The list index named by ``path[-1]``; it must already exist."""
    if path[-1].isdigit() and int(path[-1]) < len(items):
        return int(path[-1])
    key, n = ".".join(path[:-1]), len(items)
    entries = f"{n} entr{'y' if n == 1 else 'ies'} (index 0 to {n - 1})"
    raise override_error(where, f"'{'.'.join(path)}': no entry {path[-1]} in '{key}', which has {entries}")


def _override_value(parts: KeyPath, text: Any) -> Any:
    """A command-line string as a TOML value (``5``, ``1e-4``, ``[1,2]``), else the raw string.

    String fields keep the raw text (``--name 2024``); ``none``/``null`` clears an optional field.
    """
    if not isinstance(text, str):
        return text
    ann, optional = unwrap_optional(annotation_at(Config, parts))
    if optional and text.lower() in ("none", "null"):
        return None
    value = parse_value(text)
    return text if value is INVALID or (ann is str and not isinstance(value, str)) else value


def override_error(where: str, problem: str) -> ConfigError:
    return ConfigError(join([f"{where}: {problem}"]))


# ---- paths relative to the experiment file -------------------------------------------------------
def anchor_paths(cfg: Config, experiment_dir: Path) -> None:
    """Make ``[[env]] path`` and ``[[env]] reward = "file.py:fn"`` paths absolute: relative to the
    experiment file's folder (a reward file only when it exists there; else relative to the working
    directory)."""
    for env in cfg.env:
        if env.path is not None and not Path(env.path).is_absolute():
            env.path = str((experiment_dir / env.path).resolve())
        if env.reward is not None:
            env.reward = anchor_reward_spec(env.reward, experiment_dir)
    cfg.sft.train_files = [anchor_file(f, experiment_dir) for f in cfg.sft.train_files]
    cfg.sft.val_files = [anchor_file(f, experiment_dir) for f in cfg.sft.val_files]
    if cfg.lora.adapter_path is not None:
        cfg.lora.adapter_path = anchor_file(cfg.lora.adapter_path, experiment_dir)


def anchor_file(target: str, base_dir: Path) -> str:
    """A relative path that exists under the experiment file's folder, made absolute there; anything else
    (a URI, an absolute path, a path meant for the working directory) as it is."""
    if "://" in target or Path(target).expanduser().is_absolute():
        return target
    there = base_dir / target
    return str(there.resolve()) if there.exists() else target


def is_reward_file(target: str) -> bool:
    """Whether the part before ':' of a reward spec names a file (else a module)."""
    return target.endswith(".py") or "/" in target or os.sep in target


def reward_file_candidates(target: str, base_dir: Path | None) -> list[Path]:
    """Where the file ``target`` may be: itself if absolute, else under ``base_dir``, then the working directory."""
    path = Path(target).expanduser()
    if path.is_absolute():
        return [path]
    return ([Path(base_dir) / path] if base_dir is not None else []) + [Path.cwd() / path]


def find_reward_file(target: str, base_dir: Path | None) -> Path | None:
    return next((p.resolve() for p in reward_file_candidates(target, base_dir) if p.is_file()), None)


def anchor_reward_spec(spec: str, base_dir: Path | None) -> str:
    """``spec`` with its file made absolute (workers may run in another working directory)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not is_reward_file(target):
        return spec
    found = find_reward_file(target, base_dir)
    if found is None:
        tried = ", ".join(str(p) for p in reward_file_candidates(target, base_dir))
        raise ConfigError(join([f"reward {spec!r}: file not found; tried {tried}"]))
    return f"{found}:{name}"
