"""What an ``[[env]] id`` names, and the error for an id that names nothing.

- a built-in id (:data:`BUILTIN_IDS`);
- ``gymnasium:<EnvId>``: a gymnasium environment through the text adapter;
- ``verifiers:<id>`` or any other id: a verifiers environment.
"""

from __future__ import annotations

import difflib

BUILTIN_IDS = ("arithmetic", "sat", "openspiel", "affine:sat", "affine:abd", "affine:ded")
GYMNASIUM_PREFIX, VERIFIERS_PREFIX = "gymnasium:", "verifiers:"


def unknown_id_message(env_id: str, verifiers_installed: bool) -> str:
    """The error for an id that is neither built-in, nor gymnasium, nor an installed verifiers module."""
    close = difflib.get_close_matches(env_id, BUILTIN_IDS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    module = env_id.removeprefix(VERIFIERS_PREFIX).split("/")[-1].replace("-", "_")
    where = (
        f"no installed verifiers environment module '{module}' either (install it with "
        f"`pip install <its package>` or `prime env install {env_id}`)"
        if verifiers_installed
        else "and verifiers is not installed (pip install -c constraints.txt -e '.[envs]')"
    )
    return (
        f"unknown environment id '{env_id}': not built-in ({', '.join(sorted(BUILTIN_IDS))}), not "
        f"'gymnasium:<EnvId>', {where}.{hint}"
    )
