"""Export a checkpoint as a plain Hugging Face model folder (the seeds' "finish, export, start the next run").

The source is a checkpoint folder (``RUN/checkpoints/step_N``), a run folder (its latest checkpoint), a
storage URI of either, or any Hugging Face model folder (an SFT output). A checkpoint is checked against
the sha256 sums its manifest recorded before anything is read. The output holds the weights (a LoRA
adapter, when the folder has one, merged into its base), ``config.json``, the tokenizer and
``rayrl_export.json`` (where it came from); no optimizer state. It is written beside ``out`` under a
temporary name and renamed into place once complete, and checked: every exported tensor equals the
source's, cast to the export dtype. A new experiment can name it as its ``model.name``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rayrl.errors import CheckpointError
from rayrl.storage.checkpoints import INFO_FILE, LATEST_FILE, CheckpointStore, verify_folder
from rayrl.storage.location import exists, open_location, read_bytes

EXPORT_INFO = "rayrl_export.json"
ADAPTER_CONFIG = "adapter_config.json"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ExportResult:
    out_dir: Path
    source: str
    step: int | None
    dtype: str
    tensors: int
    bytes: int


def resolve_checkpoint(source: str) -> tuple[str, int | None]:
    """The checkpoint (path or URI) that ``source`` names, and its step (None for a plain model folder).

    A run folder means its latest checkpoint; a checkpoint is verified against its manifest."""
    loc = open_location(source)
    if exists(loc.child("checkpoints").child(LATEST_FILE)):  # a run folder
        store = CheckpointStore(loc.child("checkpoints").uri)
        step = store.latest_step()
        store.verify(step)
        return store.uri_of(step), step
    if exists(loc.child(INFO_FILE)):  # one checkpoint (a remote one is checked as it is downloaded)
        info = json.loads(read_bytes(loc.child(INFO_FILE)).decode())
        if loc.is_local:
            verify_folder(Path(loc.path), info.get("files") or {}, loc.uri)
        return loc.uri, int(info["step"])
    if exists(loc.child("config.json")) or exists(loc.child(ADAPTER_CONFIG)):  # a model or an adapter folder
        return loc.uri, None
    raise CheckpointError(
        f"{source}: neither a run folder (checkpoints/latest), a checkpoint (training_info.json) nor a model "
        "or adapter folder (config.json, adapter_config.json): pass RUN_DIR, RUN_DIR/checkpoints/step_N or a "
        "Hugging Face model folder"
    )


def load_for_export(directory: str, dtype: str):
    """The model and tokenizer of ``directory``; a LoRA adapter folder is loaded onto its base and merged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if (Path(directory) / ADAPTER_CONFIG).exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(directory, dtype=torch_dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype)
    return model, AutoTokenizer.from_pretrained(directory)


def export_model(source: str, out: str | Path, dtype: str = "float32", force: bool = False) -> ExportResult:
    """Write ``source`` (see :func:`resolve_checkpoint`) as a Hugging Face model folder at ``out``."""
    import torch
    from transformers.utils import logging as hf_logging

    from rayrl.models.source import local_model_dir, model_source

    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise CheckpointError(f"{out} exists and is not empty: choose another OUT_DIR, or pass --force to replace it")
    hf_logging.disable_progress_bar()
    checkpoint, step = resolve_checkpoint(str(source))
    directory = local_model_dir(model_source(checkpoint))  # a URI is downloaded (and checked) here
    model, tokenizer = load_for_export(directory, dtype)
    model.config.dtype = getattr(torch, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-export-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {"source": str(source), "checkpoint": checkpoint, "step": step, "dtype": dtype}
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        tensors, size = check_export(model, staging)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out, str(source), step, dtype, tensors, size)


def check_export(model, folder: Path) -> tuple[int, int]:
    """Reload ``folder`` and compare every tensor with ``model``'s; returns (tensors, bytes)."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=next(model.parameters()).dtype).state_dict()
    expected = model.state_dict()
    wrong = [k for k, v in expected.items() if k not in reloaded or not torch.equal(reloaded[k], v)]
    if wrong:
        raise CheckpointError(f"the exported model differs from the source in {', '.join(wrong[:5])}: export aborted")
    return len(expected), sum(v.numel() * v.element_size() for v in expected.values())


def merged_model_dir(directory: str, cache: str | Path | None = None) -> str:
    """``directory`` itself, or for a LoRA adapter folder a model folder with the adapter merged into its base
    (exported once into ``cache``, default a temporary folder, keyed by the adapter's content)."""
    import hashlib

    folder = Path(directory)
    if not (folder / ADAPTER_CONFIG).exists():
        return directory
    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.name.startswith("adapter_")):
        digest.update(name.encode() + (folder / name).read_bytes())
    root = Path(cache) if cache is not None else Path(tempfile.gettempdir()) / "rayrl-merged"
    target = root / digest.hexdigest()[:16]
    if not (target / EXPORT_INFO).exists():
        export_model(directory, target, force=True)
    return str(target)
