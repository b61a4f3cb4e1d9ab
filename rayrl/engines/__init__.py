"""Inference engines: the interface replicas serve (``Engine``, ``SamplingParams``, ``Completion``),
the transformers engine, and weight bundles (one flat buffer plus an index per policy version).

Light on purpose: importing the package imports no engine; :func:`make_engine` imports the one named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rayrl.engines.base import Engine, EngineSpec

ENGINES = ("transformers", "vllm")


def check_engine_installed(engine: str) -> None:
    """Raise ConfigError when the engine's package is not importable here (checked before any actor starts)."""
    import importlib.util

    from rayrl.errors import ConfigError

    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "inference.engine = 'vllm' needs vLLM, which this Python environment lacks: on CPU run "
            "`bash scripts/setup_vllm.sh` and use .venv-vllm/bin/rayrl; on GPUs pip install -c constraints-gpu.txt "
            "-e '.[gpu]' (see README.md, \"The vLLM engine\")"
        )


def make_engine(spec: "EngineSpec") -> "Engine":
    """Explicit factory: the engine named in ``inference.engine``."""
    if spec.engine == "transformers":
        from rayrl.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_pretrained(
            spec.model_path, dtype=spec.dtype, device=spec.device, max_batch_size=spec.max_batch_size
        )
    if spec.engine == "vllm":
        check_engine_installed("vllm")
        from rayrl.engines.vllm_engine import VllmEngine

        return VllmEngine(spec)
    raise ValueError(f"inference.engine: unknown engine '{spec.engine}' (available: {', '.join(ENGINES)})")
