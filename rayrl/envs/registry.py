"""Resolve ``[[env]] id`` and ``args`` to an Environment, with errors that say what to do."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from rayrl.envs.base import Environment


def _arithmetic() -> type[Environment]:
    from rayrl.envs.arithmetic import ArithmeticEnv

    return ArithmeticEnv


BUILTIN_ENVS: dict[str, Callable[[], type[Environment]]] = {"arithmetic": _arithmetic}


def make_env(env_id: str, args: dict[str, Any] | None = None) -> Environment:
    """Build environment ``env_id`` with keyword ``args``; unknown ids and arguments are named."""
    args = dict(args or {})
    if env_id not in BUILTIN_ENVS:
        close = difflib.get_close_matches(env_id, BUILTIN_ENVS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown environment id '{env_id}'. Built-in ids: {', '.join(sorted(BUILTIN_ENVS))}.{hint}")
    cls = BUILTIN_ENVS[env_id]()
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in args if k not in accepted]
    if unknown:
        raise ValueError(
            f"environment '{env_id}' got unknown argument(s) {', '.join(repr(k) for k in unknown)}; "
            f"it accepts: {', '.join(accepted)}"
        )
    return cls(**args)
