"""Inference engines: the interface replicas serve (``Engine``, ``SamplingParams``, ``Completion``),
the transformers engine, and weight bundles (one flat buffer plus an index per policy version).

Light on purpose: importing the package imports no engine; :func:`make_engine` imports the one named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayrl.engines.base import Engine

ENGINES = ("transformers",)


def make_engine(engine: str, model_path: str, dtype: str, device: str, max_batch_size: int) -> "Engine":
    """Explicit factory: the engine named in ``inference.engine``."""
    if engine == "transformers":
        from rayrl.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_pretrained(model_path, dtype=dtype, device=device, max_batch_size=max_batch_size)
    raise ValueError(f"inference.engine: unknown engine '{engine}' (available: {', '.join(ENGINES)})")
