"""Export a checkpoint as a Hugging Face model folder: `rayrl export CHECKPOINT OUT_DIR [--dtype bfloat16]`.

CHECKPOINT is a checkpoint (RUN_DIR/checkpoints/step_N), a run folder (its latest checkpoint), a storage URI
of either, or a model folder. A checkpoint is checked against its recorded sha256 sums first; a LoRA adapter
is merged into its base. OUT_DIR then loads with AutoModelForCausalLM.from_pretrained and can be the
model.name of the next experiment (the seeds' iterative workflow: export, then train from it).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder, run folder, URI or model folder")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where to write the Hugging Face model folder")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="parameter dtype of the export (default float32)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from rayrl.models.export import export_model

    result = export_model(args.checkpoint, args.out_dir, dtype=args.dtype, force=args.force)
    where = f"step {result.step} of {result.source}" if result.step is not None else result.source
    print(f"exported {where} as {result.dtype} ({result.tensors} tensors, {result.bytes / 2**20:.1f} MiB, "
          f"checked against the source) to {result.out_dir}")
    print(f"train from it with: rayrl train EXPERIMENT --model.name {result.out_dir} --warmstart.enabled false")
    return 0
