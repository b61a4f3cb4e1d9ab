"""Load a TOML experiment file plus ``--section.key value`` overrides into :class:`Config`.

Every problem becomes one :class:`ConfigError` whose message names the file, the line and
the dotted key, and says what was expected: a TOML syntax error quotes the line with a caret,
an unknown key names the closest valid one, a wrong type names the expected type.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
from pathlib import Path
from typing import Any, Iterator, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from rayrl.config import Config
from rayrl.errors import ConfigError

HINT = "See README.md (configuration reference) or run: rayrl config --reference"
_ATOM = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = rf"{_ATOM}(?:\s*\.\s*{_ATOM})*"
_KEY_LINE = re.compile(rf"^\s*({_KEY})\s*=\s*(.*?)\s*$")
_TABLE = re.compile(rf"^\s*\[\s*({_KEY})\s*\]")
_ARRAY_TABLE = re.compile(rf"^\s*\[\[\s*({_KEY})\s*\]\]")
_TOML_POS = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
_INVALID = object()  # "not a TOML value"
Loc = tuple[Any, ...]


def load_config(path: str | os.PathLike | None, overrides: list[str] | dict[str, str] | None = None) -> Config:
    """Read ``path`` (None = defaults only), apply ``overrides`` and validate into a :class:`Config`."""
    raw, text = ({}, "") if path is None else _read_toml(path)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    cli_keys = _apply_overrides(raw, overrides or {})
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        source, lines = (None if path is None else str(path)), _key_lines(text)
        problems = [_describe(err, source, lines, cli_keys) for err in e.errors(include_url=False)]
        raise ConfigError(_join(problems)) from None
    if path is not None:
        anchor_reward_files(cfg, Path(path).resolve().parent)
    return cfg


def anchor_reward_files(cfg: Config, experiment_dir: Path) -> None:
    """Make ``[[env]] path`` and ``[[env]] reward = "file.py:fn"`` paths absolute: relative to the
    experiment file's folder (a reward file only when it exists there; else relative to the working
    directory)."""
    for env in cfg.env:
        if env.path is not None and not Path(env.path).is_absolute():
            env.path = str((experiment_dir / env.path).resolve())
        if env.reward is None:
            continue
        from rayrl.envs.custom_reward import resolve_reward_spec
        from rayrl.errors import RewardFunctionError

        try:
            env.reward = resolve_reward_spec(env.reward, experiment_dir)
        except RewardFunctionError as e:
            raise ConfigError(_join([str(e)])) from None


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--optim.lr", "1e-4", "--max_steps=5"]`` -> ``{"optim.lr": "1e-4", "max_steps": "5"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or not key:
            raise _cli_error(f"unexpected argument {arg!r}; overrides look like --section.key value")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise _cli_error(f"--{key} needs a value, e.g. --{key} VALUE")
            value, i = args[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def config_reference_markdown() -> str:
    """A Markdown table of every key: dotted key | type | default | description."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, field in _walk(Config, ""):
        ann, optional = _unwrap_optional(field.annotation)
        kind = _type_name(ann) + (" or None" if optional else "")
        default = _literal(field.get_default(call_default_factory=True))
        cells = [f"`{key}`", kind, f"`{default}`", field.description or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _read_toml(path: str | os.PathLike) -> tuple[dict, str]:
    """The parsed document and its text; a missing, unreadable or malformed file is a ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        cwd = f" (working directory {os.getcwd()})" if not p.is_absolute() else ""
        raise ConfigError(f"experiment file not found: {path}{cwd}{_similar_files(p)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read experiment file {path}: {e}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntax_message(str(path), text, str(e))) from None


def _similar_files(p: Path) -> str:
    """``; did you mean ...?`` naming close ``.toml`` files next to a missing one, or nothing."""
    siblings = [f.name for f in p.parent.glob("*.toml")] if p.parent.is_dir() else []
    match = difflib.get_close_matches(p.name, siblings, n=1)
    return f"; did you mean {p.parent / match[0]}?" if match else ""


def _syntax_message(source: str, text: str, msg: str) -> str:
    """File, line and column of a TOML error, the line with a caret, and a suggested fix."""
    lines = text.splitlines() or [""]
    m = _TOML_POS.search(msg)
    reason = msg[: m.start()] if m else msg
    if m and m[1]:
        lineno, col = int(m[1]), int(m[2])
    else:  # "at end of document": point just past the last line's text
        lineno, col = len(lines), len(lines[-1]) + 1
    line = lines[lineno - 1] if lineno <= len(lines) else ""
    caret = "".join(c if c == "\t" else " " for c in line[: col - 1]) + "^"
    out = [f"{source}, line {lineno}, column {col}: TOML syntax error: {reason}", f"    {line}", f"    {caret}"]
    fix = _suggest_fix(line)
    return _join(out + ([fix] if fix else []), numbered=False)


def _suggest_fix(line: str) -> str | None:
    """For ``key = value`` whose value is no TOML value, suggest quoting it (or lower-casing True/False)."""
    m = _KEY_LINE.match(line)
    if not m:
        return None
    key, value = m[1], re.sub(r"\s+#.*$", "", m[2])
    if not value or value[0] in "\"'[{" or _parse_value(value) is not _INVALID:
        return None
    if value in ("True", "False"):
        return f"did you mean: {key} = {value.lower()}? (TOML booleans are lowercase)"
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"did you mean: {key} = {quoted}? (strings need quotes in TOML)"


def _parse_value(text: str) -> Any:
    """``text`` parsed as the TOML value in ``v = text``, or ``_INVALID``."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return _INVALID
    return doc["v"] if list(doc) == ["v"] else _INVALID


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line number of every key path the TOML text defines (first definition wins).

    Understands ``[a.b]`` tables, the Nth ``[[env]]`` block as path ``("env", "N")``, and
    dotted keys written inline (``optim.lr = 1e-4``); lines inside multi-line strings are skipped.
    """
    found: dict[tuple[str, ...], int] = {}
    arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> index of its latest block
    table: tuple[str, ...] = ()
    in_string = False
    for n, line in enumerate(text.splitlines(), 1):
        toggles = line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1
        in_string, was_in_string = in_string != toggles, in_string
        if was_in_string:
            continue
        if m := _ARRAY_TABLE.match(line):
            parts = _split_key(m[1])
            base = _resolve(parts[:-1], arrays) + parts[-1:]
            arrays[base] = arrays.get(base, -1) + 1
            path = table = base + (str(arrays[base]),)
        elif m := _TABLE.match(line):
            path = table = _resolve(_split_key(m[1]), arrays)
        elif m := _KEY_LINE.match(line):
            path = table + _split_key(m[1])
        else:
            continue
        for i in range(1, len(path) + 1):  # a.b.c = 1 also defines tables a and a.b
            found.setdefault(path[:i], n)
    return found


def _split_key(key: str) -> tuple[str, ...]:
    """``model. "tiny".x`` -> ``("model", "tiny", "x")``."""
    return tuple(atom.strip("\"'") for atom in re.findall(_ATOM, key))


def _resolve(parts: tuple[str, ...], arrays: dict[tuple[str, ...], int]) -> tuple[str, ...]:
    """Insert the current block index after every array-of-tables prefix (``env.args`` -> ``env.0.args``)."""
    out: tuple[str, ...] = ()
    for part in parts:
        out += (part,)
        if out in arrays:
            out += (str(arrays[out]),)
    return out


def _apply_overrides(raw: dict, overrides: dict[str, Any]) -> set[tuple[str, ...]]:
    """Set each dotted override in ``raw`` (in place); return the key paths they set."""
    keys = set()
    for dotted, text in overrides.items():
        parts = tuple(p.strip() for p in dotted.split("."))
        if not all(parts):
            raise _cli_error(f"malformed key {dotted!r}")
        field = Config.model_fields.get(parts[0])
        if len(parts) > 1 and parts[0] not in raw and field is not None:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):  # index into the default list, e.g. --env.0.args.digits 3
                raw[parts[0]] = [v.model_dump() if isinstance(v, BaseModel) else v for v in default]
        _set_path(raw, parts, _override_value(parts, text))
        keys.add(parts)
    return keys


def _set_path(raw: dict, parts: tuple[str, ...], value: Any) -> None:
    """``raw[a][b]... = value``, creating missing tables and indexing (never growing) lists."""
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = node[_list_index(node, parts[: i + 1])] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            got = f"{'.'.join(parts[: i + 1])}' is {node!r} ({type(node).__name__})"
            raise _cli_error(f"cannot set '{'.'.join(parts)}': '{got}, not a table")
    if isinstance(node, list):
        node[_list_index(node, parts)] = value
    else:
        node[parts[-1]] = value


def _list_index(items: list, path: tuple[str, ...]) -> int:
    """The list index named by ``path[-1]``; it must already exist."""
    if path[-1].isdigit() and int(path[-1]) < len(items):
        return int(path[-1])
    key, n = ".".join(path[:-1]), len(items)
    entries = f"{n} entr{'y' if n == 1 else 'ies'} (index 0 to {n - 1})"
    raise _cli_error(f"'{'.'.join(path)}': no entry {path[-1]} in '{key}', which has {entries}")


def _override_value(parts: tuple[str, ...], text: Any) -> Any:
    """A command-line string as a TOML value (``5``, ``1e-4``, ``[1,2]``), else the raw string.

    String fields keep the raw text (``--name 2024``); ``none``/``null`` clears an optional field.
    """
    if not isinstance(text, str):
        return text
    ann, optional = _unwrap_optional(_annotation_at(parts))
    if optional and text.lower() in ("none", "null"):
        return None
    value = _parse_value(text)
    return text if value is _INVALID or (ann is str and not isinstance(value, str)) else value


def _is_model(ann: Any) -> bool:
    """Whether ``ann`` is a pydantic model class (a config section)."""
    return get_origin(ann) is None and isinstance(ann, type) and issubclass(ann, BaseModel)


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; anything else -> ``(ann, False)``."""
    if get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann):
        rest = tuple(a for a in get_args(ann) if a is not type(None))
        return (rest[0] if len(rest) == 1 else Union[rest]), True
    return ann, False


def _annotation_at(loc: Loc) -> Any:
    """The annotation of the value at ``loc`` (a pydantic error loc or key path), or None if unknown."""
    ann: Any = Config
    for part in loc:
        ann = _unwrap_optional(ann)[0]
        origin, args = get_origin(ann), get_args(ann)
        if _is_model(ann):
            field = ann.model_fields.get(str(part))
            ann = field.annotation if field else None
        elif origin is list:
            ann = args[0]
        elif origin is dict:
            ann = args[1]
        elif origin is tuple and str(part).isdigit():
            i = int(part)
            ann = args[0] if args[-1] is Ellipsis else (args[i] if i < len(args) else None)
        else:
            return None
    return ann


def _type_name(ann: Any) -> str:
    """Human name of an annotation: ``float``, ``one of 'a', 'b'``, ``array [float, float]``, ``table``..."""
    ann = _unwrap_optional(ann)[0]
    origin, args = get_origin(ann), get_args(ann)
    if ann in (int, float, bool):
        return ann.__name__
    if ann is str:
        return "string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_model(ann) or origin is dict:
        return "table"
    if origin is tuple:
        return "array [" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is list:
        return "array of tables" if _is_model(args[0]) else f"array of {_type_name(args[0])}"
    return "any value" if ann is Any else str(ann)


def _with_article(name: str) -> str:
    """``float`` -> ``a float``, ``int`` -> ``an int``; ``one of ...`` stays as is."""
    if name.startswith(("one of", "any")):
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def _walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf field as (reference key, FieldInfo); lists of models are documented as ``[[env]] id``."""
    for name, field in model.model_fields.items():
        ann = _unwrap_optional(field.annotation)[0]
        if _is_model(ann):
            yield from _walk(ann, f"{prefix}{name}.")
        elif get_origin(ann) is list and _is_model(get_args(ann)[0]):
            yield from _walk(get_args(ann)[0], f"[[{prefix}{name}]] ")
        else:
            yield prefix + name, field


def _literal(value: Any) -> str:
    """A default value written the way TOML would write it (``None`` where TOML has no way)."""
    return "None" if value is None else json.dumps(value)


def _describe(err: dict, source: str | None, lines: dict, cli_keys: set) -> str:
    """One line for one pydantic error: where it is, which key, what was expected."""
    loc, etype = tuple(err["loc"]), err["type"]
    if etype == "missing" and len(loc) > 1:  # e.g. a too short tuple: describe the container
        loc, etype = loc[:-1], "tuple_type"
    key, msg = ".".join(map(str, loc)), err["msg"].removeprefix("Value error, ")
    if not loc:  # a model-level validator
        return f"{source or 'command line'}: {msg}"
    where = _where(loc, source, lines, cli_keys)
    if etype == "extra_forbidden":
        return f"{where}: unknown key {key!r}{_suggest_key(loc)}"
    ann = _annotation_at(loc)
    if ann is not None and (etype.endswith(("_type", "_parsing")) or etype in ("literal_error", "int_from_float")):
        expected, got = _with_article(_type_name(ann)), err["input"]
        return f"{where}: key {key!r} expects {expected}, got {_short(got)} ({type(got).__name__})"
    return f"{where}: key {key!r}: {msg}, got {_short(err['input'])}"


def _where(loc: Loc, source: str | None, lines: dict, cli_keys: set) -> str:
    """``command line`` if an override set (part of) ``loc``, else ``file, line N``, else the file."""
    path = tuple(map(str, loc))
    if any(k[: len(path)] == path or path[: len(k)] == k for k in cli_keys):
        return "command line"
    for end in range(len(path), 0, -1):  # the key itself, else the closest enclosing key or table
        if path[:end] in lines:
            return f"{source}, line {lines[path[:end]]}"
    return source or "command line"


def _suggest_key(loc: Loc) -> str:
    """``; did you mean 'optim.lr'?``, or the valid keys of that section."""
    parent, name = loc[:-1], str(loc[-1])
    model = _annotation_at(parent)
    if not _is_model(model):
        return ""
    prefix = "".join(f"{p}." for p in parent)
    fields = list(model.model_fields)
    if match := difflib.get_close_matches(name, fields, n=1):
        return f"; did you mean '{prefix}{match[0]}'?"
    elsewhere = [k for k, _ in _walk(Config, "") if re.split(r"[. ]", k)[-1] == name]
    if elsewhere:
        return "; did you mean " + " or ".join(f"'{k}'" for k in elsewhere) + "?"
    names = [str(p) for p in parent if not str(p).isdigit()]
    section = f"[[{'.'.join(names)}]]" if parent and str(parent[-1]).isdigit() else f"[{'.'.join(names)}]"
    return f"; valid keys {'in ' + section if parent else 'at the top level'}: {', '.join(fields)}"


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cli_error(problem: str) -> ConfigError:
    """A ConfigError about the command line."""
    return ConfigError(_join([f"command line: {problem}"]))


def _join(problems: list[str], numbered: bool = True) -> str:
    """The message: one problem as is, several under a count; always ends with the hint."""
    if numbered and len(problems) > 1:
        problems = [f"{len(problems)} config errors:"] + [f"  {p}" for p in problems]
    return "\n".join(problems + [HINT])
