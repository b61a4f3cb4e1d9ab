"""Resolve ``[[env]] id`` and ``args`` to an Environment, with errors that say what to do.

Ids, in the order they are tried:
- a built-in id: ``arithmetic``, ``sat`` (also ``affine:sat``), ``openspiel``, ``affine:abd``, ``affine:ded``;
- ``gymnasium:<EnvId>`` (e.g. ``gymnasium:FrozenLake-v1``): a gymnasium environment through the text adapter;
- ``verifiers:<id>`` or any other id: a verifiers environment, ``verifiers.load_environment(id, **args)``
  (verifiers 0.3, ``rayrl.envs.verifiers_env``), or with verifiers >= 0.4 the ``verifiers.v1`` environment of
  the taskset ``id`` (``rayrl.envs.verifiers_v1``).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from rayrl.envs.base import Environment
from rayrl.envs.ids import BUILTIN_IDS, GYMNASIUM_PREFIX, VERIFIERS_PREFIX, unknown_id_message
from rayrl.errors import EnvError

if TYPE_CHECKING:
    from rayrl.config import Config, EnvConfig


def _arithmetic() -> type[Environment]:
    from rayrl.envs.arithmetic import ArithmeticEnv

    return ArithmeticEnv


def _sat() -> type[Environment]:
    from rayrl.envs.sat import SatEnv

    return SatEnv


def _openspiel() -> type[Environment]:
    try:
        from rayrl.envs.openspiel_env import OpenSpielEnv
    except ModuleNotFoundError as e:
        reraise_unless_missing(e, "pyspiel")
        raise EnvError(_missing("openspiel", e.name, "open-spiel")) from e
    return OpenSpielEnv


def _abd() -> type[Environment]:
    from rayrl.envs.programs import AbductionEnv

    return AbductionEnv


def _ded() -> type[Environment]:
    from rayrl.envs.programs import DeductionEnv

    return DeductionEnv


BUILTIN_ENVS: dict[str, Callable[[], type[Environment]]] = dict(
    zip(BUILTIN_IDS, (_arithmetic, _sat, _openspiel, _sat, _abd, _ded))
)


def reraise_unless_missing(error: ModuleNotFoundError, package_module: str) -> None:
    """Re-raise ``error`` unless it says the third-party module ``package_module`` is not installed
    (a missing module of rayrl's own, or one imported by that package, is a bug to show as it is)."""
    if (error.name or "").split(".")[0] != package_module:
        raise error


def _missing(env_id: str, module: str | None, package: str) -> str:
    return (
        f"environment '{env_id}' needs the Python package '{package}' (module '{module}' is not installed); "
        f"install it with: pip install -c constraints.txt -e '.[envs]'  (or: pip install {package})"
    )


def build_envs(cfg: "Config") -> list[Environment]:
    """Every ``[[env]]`` entry of ``cfg``; a failure names the entry (1-based) and its id."""
    envs = []
    for n, entry in enumerate(cfg.env, start=1):
        try:
            envs.append(build_env(entry))
        except EnvError as e:
            raise EnvError(f"[[env]] entry {n} (id '{entry.id}'): {e}") from e.__cause__
    return envs


def build_env(cfg: "EnvConfig") -> Environment:
    """The environment of one ``[[env]]`` entry, with its custom reward function when one is set."""
    if cfg.path:
        add_import_path(cfg.path)
    env = make_env(cfg.id, cfg.args)
    if cfg.reward:
        from rayrl.envs.custom_reward import with_reward

        env = with_reward(env, cfg.reward, cfg.reward_timeout_s)
    return env


def add_import_path(folder: str) -> None:
    """Put ``folder`` first on sys.path (once), so an environment module there can be imported."""
    import importlib
    import sys
    from pathlib import Path

    if not Path(folder).is_dir():
        raise EnvError(f"path '{folder}' is not a folder (set [[env]] path to the folder holding the module)")
    if folder not in sys.path:
        sys.path.insert(0, folder)
        importlib.invalidate_caches()


def make_env(env_id: str, args: dict[str, Any] | None = None) -> Environment:
    """Build environment ``env_id`` with keyword ``args``; unknown ids and arguments are named."""
    args = dict(args or {})
    if env_id in BUILTIN_ENVS:
        return construct(env_id, BUILTIN_ENVS[env_id](), args)
    if env_id.startswith(GYMNASIUM_PREFIX):
        try:
            from rayrl.envs.gymnasium_env import GymnasiumEnv
        except ModuleNotFoundError as e:
            reraise_unless_missing(e, "gymnasium")
            raise EnvError(_missing(env_id, e.name, "gymnasium")) from e
        return construct(env_id, GymnasiumEnv, args, env_id[len(GYMNASIUM_PREFIX):])
    name = env_id.removeprefix(VERIFIERS_PREFIX)
    if verifiers_version() >= (0, 4):  # the verifiers.v1 API, over rayrl's HTTP endpoint
        from rayrl.envs.verifiers_v1 import load_verifiers_v1_env

        return load_verifiers_v1_env(name, args, explicit=env_id.startswith(VERIFIERS_PREFIX))
    try:
        from rayrl.envs.verifiers_env import load_verifiers_env
    except ModuleNotFoundError as e:
        reraise_unless_missing(e, "verifiers")
        if env_id.startswith(VERIFIERS_PREFIX):
            raise EnvError(_missing(env_id, e.name, "verifiers")) from e
        raise EnvError(unknown_id_message(env_id, verifiers_installed=False)) from e
    return load_verifiers_env(name, args, explicit=env_id.startswith(VERIFIERS_PREFIX))


def verifiers_version() -> tuple[int, ...]:
    """The installed verifiers' (major, minor), (0, 0) when it is not installed (read without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version("verifiers").split(".")[:2]
    except PackageNotFoundError:
        return (0, 0)
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


def construct(env_id: str, cls: type[Environment], args: dict[str, Any], *positional: Any) -> Environment:
    """``cls(*positional, **args)`` after checking every key of ``args`` is an argument ``cls`` accepts."""
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in list(params)[1 + len(positional):] if params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in args if k not in accepted]
        if unknown:
            raise EnvError(
                f"environment '{env_id}' got unknown argument(s) {', '.join(repr(k) for k in unknown)}; "
                f"it accepts: {', '.join(accepted) or '(no arguments)'}"
            )
    try:
        return cls(*positional, **args)
    except (TypeError, ValueError) as e:
        if isinstance(e, EnvError):
            raise
        raise EnvError(f"environment '{env_id}': {e}") from e
