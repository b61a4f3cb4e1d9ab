"""Located config errors, for any root model: TOML files and their key lines, pydantic errors described
by file, line and dotted key, with the expected type and the closest valid key.

Experiment files (:mod:`rayrl.config.loading`) and sweep files (:mod:`rayrl.tuning.sweep`) both validate
through :func:`validate`: one machine, one message format. A value set by something other than the
file (a command-line override, a sweep's ``[overrides]`` table) is located by its *origin*: a mapping
from the key path it set to where it was set (``"command line"``, ``"sweep.toml, line 12"``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from rayrl.errors import ConfigError

HINT = "See docs/configuration.md or run: rayrl config --reference"
_ATOM = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY = rf"{_ATOM}(?:\s*\.\s*{_ATOM})*"
_KEY_LINE = re.compile(rf"^\s*({_KEY})\s*=\s*(.*?)\s*$")
_TABLE = re.compile(rf"^\s*\[\s*({_KEY})\s*\]")
_ARRAY_TABLE = re.compile(rf"^\s*\[\[\s*({_KEY})\s*\]\]")
_TOML_POS = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
INVALID = object()  # "not a TOML value"
Loc = tuple[Any, ...]
KeyPath = tuple[str, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass
class TomlFile:
    """A parsed TOML file: its data, and the line on which each key path is defined."""

    source: str | None  # the path as the user gave it; None = no file (defaults only)
    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[KeyPath, int] = field(default_factory=dict)


def read_toml(path: str | os.PathLike, what: str = "experiment file", hint: str = HINT) -> TomlFile:
    """The parsed file; a missing, unreadable or malformed file is a ConfigError naming line and column."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        cwd = f" (working directory {os.getcwd()})" if not p.is_absolute() else ""
        raise ConfigError(f"{what} not found: {path}{cwd}{_similar_files(p)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntax_message(str(path), text, str(e), hint)) from None
    return TomlFile(str(path), data, key_lines(text))


def validate(model: type[M], raw: dict, toml: TomlFile, origins: Mapping[KeyPath, str] | None = None,
             hint: str = HINT) -> M:  # fmt: skip
    """``model.model_validate(raw)``; every error becomes one line of one ConfigError, located in ``toml``
    or at the origin of the override that set the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        problems = [describe(err, model, toml, origins or {}) for err in e.errors(include_url=False)]
        raise ConfigError(join(problems, hint)) from None


def describe(err: dict, root: type[BaseModel], toml: TomlFile, origins: Mapping[KeyPath, str]) -> str:
    """One line for one pydantic error: where it is, which key, what was expected."""
    loc, etype = tuple(err["loc"]), err["type"]
    parent = annotation_at(root, loc[:-1]) if etype == "missing" and loc else None
    if parent is not None and is_model(unwrap_optional(parent)[0]):  # a required key left out of a table
        field = unwrap_optional(parent)[0].model_fields[str(loc[-1])]
        table = ".".join(map(str, loc[:-1]))
        return (f"{locate(key_path(loc[:-1]), toml, origins)}: {table!r} has no key {str(loc[-1])!r}, which is "
                f"required: {field.description or ''}".rstrip(": "))
    if etype == "missing" and len(loc) > 1:  # e.g. a too short tuple: describe the container
        loc, etype = loc[:-1], "tuple_type"
    key, msg = ".".join(map(str, loc)), err["msg"].removeprefix("Value error, ")
    if not loc:  # a model-level validator
        return f"{toml.source or 'command line'}: {msg}"
    where = locate(key_path(loc), toml, origins)
    if etype == "extra_forbidden":
        return f"{where}: unknown key {key!r}{suggest_key(root, loc)}"
    ann = annotation_at(root, loc)
    if ann is not None and (etype.endswith(("_type", "_parsing")) or etype in ("literal_error", "int_from_float")):
        expected, got = _with_article(type_name(ann)), err["input"]
        example = getattr(unwrap_optional(ann)[0], "TOML_EXAMPLE", None)
        like = f" like {example}" if example else ""
        return f"{where}: key {key!r} expects {expected}{like}, got {short(got)} ({type(got).__name__})"
    return f"{where}: key {key!r}: {msg}, got {short(err['input'])}"


def key_path(loc: Loc) -> KeyPath:
    """A pydantic loc as a TOML key path: dotted keys of a table of dotted keys split (sweep files)."""
    return tuple(part for item in loc for part in str(item).split("."))


def locate(path: KeyPath, toml: TomlFile, origins: Mapping[KeyPath, str] | None = None) -> str:
    """Where ``path`` was set: an override's origin, else ``file, line N`` (the key or its closest
    enclosing table), else the file."""
    for key, origin in (origins or {}).items():
        if key[: len(path)] == path or path[: len(key)] == key:
            return origin
    for end in range(len(path), 0, -1):
        if path[:end] in toml.lines:
            return f"{toml.source}, line {toml.lines[path[:end]]}"
    return toml.source or "command line"


def suggest_key(root: type[BaseModel], loc: Loc) -> str:
    """``; did you mean 'optim.lr'?``, or the valid keys of that section."""
    parent, name = loc[:-1], str(loc[-1])
    model = annotation_at(root, parent)
    if not is_model(model):
        return ""
    prefix = "".join(f"{p}." for p in parent)
    fields = list(model.model_fields)
    # the exact key in another section says more than a near spelling here ('lr' is optim.lr, not lora)
    elsewhere = [k for k, _ in walk(root, "") if re.split(r"[. ]", k)[-1] == name]
    if elsewhere:
        names = [f"'{k}'" for k in elsewhere]
        return "; did you mean " + (", ".join(names[:-1]) + " or " if len(names) > 1 else "") + names[-1] + "?"
    if match := difflib.get_close_matches(name, fields, n=1):
        return f"; did you mean '{prefix}{match[0]}'?"
    names = [str(p) for p in parent if not str(p).isdigit()]
    section = f"[[{'.'.join(names)}]]" if parent and str(parent[-1]).isdigit() else f"[{'.'.join(names)}]"
    return f"; valid keys {'in ' + section if parent else 'at the top level'}: {', '.join(fields)}"


# ---- types ---------------------------------------------------------------------------------------
def is_model(ann: Any) -> bool:
    """Whether ``ann`` is a pydantic model class (a config section)."""
    return get_origin(ann) is None and isinstance(ann, type) and issubclass(ann, BaseModel)


def unwrap_optional(ann: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; anything else -> ``(ann, False)``."""
    if get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann):
        rest = tuple(a for a in get_args(ann) if a is not type(None))
        return (rest[0] if len(rest) == 1 else Union[rest]), True
    return ann, False


def annotation_at(root: type[BaseModel], loc: Loc) -> Any:
    """The annotation of the value at ``loc`` (a pydantic error loc or key path) under ``root``, or None."""
    ann: Any = root
    for part in loc:
        ann = unwrap_optional(ann)[0]
        origin, args = get_origin(ann), get_args(ann)
        if is_model(ann):
            found = ann.model_fields.get(str(part))
            ann = found.annotation if found else None
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


def type_name(ann: Any) -> str:
    """Human name of an annotation: ``float``, ``one of 'a', 'b'``, ``array [float, float]``, ``table``..."""
    ann = unwrap_optional(ann)[0]
    origin, args = get_origin(ann), get_args(ann)
    if ann in (int, float, bool):
        return ann.__name__
    if ann is str:
        return "string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if is_model(ann) or origin is dict:
        return "table"
    if origin is tuple:
        return "array [" + ", ".join(type_name(a) for a in args) + "]"
    if origin is list:
        return "array of tables" if is_model(args[0]) else f"array of {type_name(args[0])}"
    return "any value" if ann is Any else str(ann)


def walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf field as (reference key, FieldInfo); lists of models are documented as ``[[env]] id``."""
    for name, info in model.model_fields.items():
        ann = unwrap_optional(info.annotation)[0]
        if is_model(ann):
            yield from walk(ann, f"{prefix}{name}.")
        elif get_origin(ann) is list and is_model(get_args(ann)[0]):
            yield from walk(get_args(ann)[0], f"[[{prefix}{name}]] ")
        else:
            yield prefix + name, info


def reference_markdown(model: type[BaseModel]) -> str:
    """A Markdown table of every key of ``model``: dotted key | type | default | description."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, info in walk(model, ""):
        ann, optional = unwrap_optional(info.annotation)
        kind = type_name(ann) + (" or None" if optional else "")
        default = "required" if info.is_required() else f"`{_literal(info.get_default(call_default_factory=True))}`"
        cells = [f"`{key}`", kind, default, info.description or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


# ---- TOML text -----------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """``text`` parsed as the TOML value in ``v = text``, or ``INVALID``."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return INVALID
    return doc["v"] if list(doc) == ["v"] else INVALID


def key_lines(text: str) -> dict[KeyPath, int]:
    """Line number of every key path the TOML text defines (first definition wins).

    Understands ``[a.b]`` tables, the Nth ``[[env]]`` block as path ``("env", "N")``, and
    dotted keys written inline (``optim.lr = 1e-4``); lines inside multi-line strings are skipped.
    """
    found: dict[KeyPath, int] = {}
    arrays: dict[KeyPath, int] = {}  # array-of-tables path -> index of its latest block
    table: KeyPath = ()
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


def _split_key(key: str) -> KeyPath:
    """``model. "tiny".x`` -> ``("model", "tiny", "x")``."""
    return tuple(atom.strip("\"'") for atom in re.findall(_ATOM, key))


def _resolve(parts: KeyPath, arrays: dict[KeyPath, int]) -> KeyPath:
    """Insert the current block index after every array-of-tables prefix (``env.args`` -> ``env.0.args``)."""
    out: KeyPath = ()
    for part in parts:
        out += (part,)
        if out in arrays:
            out += (str(arrays[out]),)
    return out


def _similar_files(p: Path) -> str:
    """``; did you mean ...?`` naming close ``.toml`` files next to a missing one, or nothing."""
    siblings = [f.name for f in p.parent.glob("*.toml")] if p.parent.is_dir() else []
    match = difflib.get_close_matches(p.name, siblings, n=1)
    return f"; did you mean {p.parent / match[0]}?" if match else ""


def _syntax_message(source: str, text: str, msg: str, hint: str) -> str:
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
    return join(out + ([fix] if fix else []), hint, numbered=False)


def _suggest_fix(line: str) -> str | None:
    """For ``key = value`` whose value is no TOML value, suggest quoting it (or lower-casing True/False)."""
    m = _KEY_LINE.match(line)
    if not m:
        return None
    key, value = m[1], re.sub(r"\s+#.*$", "", m[2])
    if not value or value[0] in "\"'[{" or parse_value(value) is not INVALID:
        return None
    if value in ("True", "False"):
        return f"did you mean: {key} = {value.lower()}? (TOML booleans are lowercase)"
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"did you mean: {key} = {quoted}? (strings need quotes in TOML)"


# ---- messages ------------------------------------------------------------------------------------
def _with_article(name: str) -> str:
    """``float`` -> ``a float``, ``int`` -> ``an int``; ``one of ...`` stays as is."""
    if name.startswith(("one of", "any")):
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def _literal(value: Any) -> str:
    """A default value written the way TOML would write it (``None`` where TOML has no way)."""
    return "None" if value is None else json.dumps(value)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join(problems: list[str], hint: str = HINT, numbered: bool = True) -> str:
    """The message: one problem as is, several under a count; always ends with the hint."""
    if numbered and len(problems) > 1:
        problems = [f"{len(problems)} config errors:"] + [f"  {p}" for p in problems]
    return "\n".join(problems + [hint])
