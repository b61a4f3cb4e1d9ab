"""Resolve ``[model] name`` to a local Hugging Face directory, building and warm-starting when asked.

- ``builtin:tiny-qwen3``: built locally (no network) from ``[model.tiny]``.
- anything else: a local directory or a Hugging Face id, loaded with ``from_pretrained``.
With ``[warmstart] enabled`` the supervised warm-start runs once and its result is cached under
``<cache>/base/<name>-<hash of everything that shaped it>``, so later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from rayrl.config import Config, EnvConfig

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-qwen3",)
MARKER = "rayrl_base.json"

log = logging.getLogger(__name__)


def cache_root(cfg: Config) -> Path:
    root = cfg.model.cache_dir or os.environ.get("RAYRL_CACHE_DIR") or Path.home() / ".cache" / "rayrl"
    return Path(root).expanduser().resolve()


def needs_build(cfg: Config) -> bool:
    return cfg.model.name.startswith(BUILTIN_PREFIX) or cfg.warmstart.enabled


def base_model_key(cfg: Config) -> str:
    """Hash of every setting that shapes the base model: same settings, same cached model."""
    shaping = {
        "name": cfg.model.name,
        "dtype": cfg.model.dtype,
        "tiny": cfg.model.tiny.model_dump() if cfg.model.name.startswith(BUILTIN_PREFIX) else None,
        "warmstart": cfg.warmstart.model_dump() if cfg.warmstart.enabled else None,
        "env": warmstart_env(cfg).model_dump(include={"id", "args", "path"}) if cfg.warmstart.enabled else None,
        "max_tokens": cfg.sampling.max_tokens,
        "format": 1,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def warmstart_env(cfg: Config) -> EnvConfig:
    """The ``[[env]]`` entry the warm-start learns from: the first, scored by the environment's own reward
    (its reference answers); a custom reward function is for RL, not for checking the supervised pass."""
    return cfg.env[0].model_copy(update={"reward": None})


def resolve_base_model(cfg: Config) -> tuple[str, dict]:
    """Local directory of the starting model and a description of how it was made.

    Building and warm-starting run as a Ray task (the driver holds no weights), on whatever node has
    room; the task hands the finished folder back through the object store and the driver writes it
    into its cache under a temporary name and renames it, so an interrupted build is never reused.
    """
    if not needs_build(cfg):
        from rayrl.models.export import merged_model_dir

        # a LoRA adapter folder (a LoRA champion, say) starts the run as its base with the adapter merged
        merged = merged_model_dir(cfg.model.name, cache_root(cfg) / "merged")
        return merged, {"source": cfg.model.name, **({"merged_adapter": True} if merged != cfg.model.name else {})}
    name = cfg.model.name.removeprefix(BUILTIN_PREFIX).replace("/", "--")
    target = cache_root(cfg) / "base" / f"{name}-{base_model_key(cfg)}"
    if (target / MARKER).exists():
        return str(target), {**json.loads((target / MARKER).read_text()), "cached": True}
    import ray

    task = ray.remote(num_cpus=cfg.learner.cpus_per_worker)(build_base_model)
    files = ray.get(task.remote(cfg))
    install(files, target)
    return str(target), {**json.loads((target / MARKER).read_text()), "cached": False}


def install(files: dict[str, bytes], target: Path) -> None:
    """Write a built model's files at ``target`` atomically (another run may have built it meanwhile)."""
    from rayrl.models.source import write_files

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write_files(files, staging)
        try:
            staging.rename(target)
        except OSError:  # another run built the same model meanwhile: theirs is as good as ours
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_base_model(cfg: Config) -> dict[str, bytes]:
    """Build (or load) the model, warm-start it if enabled; return the model folder's files."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from rayrl.envs.registry import build_env
    from rayrl.models.source import read_files
    from rayrl.models.tiny import build_tiny_model
    from rayrl.models.warmstart import warm_start

    hf_logging.disable_progress_bar()
    torch.set_num_threads(cfg.learner.threads)
    with tempfile.TemporaryDirectory(prefix="rayrl-base-") as scratch:
        staging = Path(scratch)
        source = cfg.model.name
        if source.startswith(BUILTIN_PREFIX):
            builtin = source.removeprefix(BUILTIN_PREFIX)
            if builtin not in BUILTIN_MODELS:
                raise ValueError(f"model.name: unknown builtin model '{builtin}' (available: {', '.join(BUILTIN_MODELS)})")
            source = str(build_tiny_model(staging, cfg.model.tiny))
        info: dict = {"source": cfg.model.name}
        if cfg.warmstart.enabled:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, cfg.model.dtype))
            tokenizer = AutoTokenizer.from_pretrained(source)
            env = build_env(warmstart_env(cfg))
            report = warm_start(model, tokenizer, env, cfg.warmstart, cfg.sampling.max_tokens, cfg.seq_len)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            info["warmstart"] = {
                "env": cfg.env[0].id, "steps": report.steps, "validation_accuracy": report.accuracy,
                "reached_target": report.reached_target, "history": report.history,
            }
        (staging / MARKER).write_text(json.dumps(info, indent=2))
        return read_files(staging)
