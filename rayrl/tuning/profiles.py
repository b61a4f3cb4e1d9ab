"""A champion's per-example history on the confirmation split: what the sequential gate allocates samples by.

```
ROOT/profiles/<champion name>.json   {env: {"example_ids": [...], "sum": [...], "squares": [...], "count": [...]}}
```

Written when a champion is crowned (the initial one from its first confirmation scores, an adopted one
from its samples in the gate's looks), read by the next iteration's gate: its first look can then give
more samples to the examples the champion is unsure of instead of spreading them evenly. Only the
allocation uses it, never the test (the looks' samples are always fresh), so an outdated or biased
profile can cost power but never validity. Written atomically; unreadable or mismatched profiles are
ignored with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rayrl.storage.files import write_text_atomic

log = logging.getLogger(__name__)

PROFILES = "profiles"


def profile_path(root: str | Path, name: str) -> Path:
    return Path(root) / PROFILES / f"{name}.json"


def save_profile(root: str | Path, name: str, ids: Mapping[str, Sequence[str]], stats: Mapping[str, np.ndarray]) -> Path:
    """Save a champion's per-example ``stats`` (env -> ``[3, n]``: sum, sum of squares, count) by example id."""
    body = {env: {"example_ids": [str(i) for i in ids[env]], "sum": s[0].tolist(), "squares": s[1].tolist(),
                  "count": s[2].tolist()} for env, s in stats.items()}
    path = profile_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(body))
    return path


def load_profile(root: str | Path, name: str, ids: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray] | None:
    """The champion's stats (env -> ``[3, n]``) in the order of ``ids`` (env -> the split's example ids), or None
    when there is no profile or it does not cover these examples."""
    path = profile_path(root, name)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        out = {}
        for env, wanted in ids.items():
            saved = body[env]
            row = {str(i): j for j, i in enumerate(saved["example_ids"])}
            order = [row[str(i)] for i in wanted]
            out[env] = np.array([saved["sum"], saved["squares"], saved["count"]], np.float64)[:, order]
        return out
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s does not fit this confirmation split (%s: %s): the gate's first look spreads its samples "
                    "evenly", path, type(e).__name__, e)
        return None


def stats_of(scores: np.ndarray) -> np.ndarray:
    """``[3, n]`` sum, sum of squares and count per example of ``[n, K]`` scores (NaN = no sample)."""
    x = np.nan_to_num(np.asarray(scores, np.float64), nan=0.0)
    return np.stack([x.sum(axis=1), (x * x).sum(axis=1), np.isfinite(scores).sum(axis=1).astype(np.float64)])
