"""`rayrl export`: a checkpoint becomes a Hugging Face model folder that generates what the checkpoint does,
and the next experiment can start from it (the seeds' finish, export, train-again workflow)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rayrl.cli import main
from rayrl.driver import train
from rayrl.errors import CheckpointError
from rayrl.models.export import export_model
from rayrl.tracking import read_metrics

NO_EVAL = {"eval": {"interval": 0, "at_start": False}}


@pytest.fixture(scope="module")
def finished_run(ray_cluster, base_model_path, model_cache, tmp_path_factory):
    from conftest import SMALL, merge

    from rayrl.config import Config

    out = tmp_path_factory.mktemp("export") / "run"
    raw = merge(SMALL, {"output_dir": str(out), "max_steps": 2, "model": {"cache_dir": str(model_cache)},
                        "ckpt": {"interval": 0, "at_end": True}, **NO_EVAL})
    train(Config.model_validate(raw))
    return out


def greedy(model_dir, dtype=torch.float32, prompts=("12+34=", "7+58=", "90+9=")):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for prompt in prompts:
        ids = torch.tensor([tok(prompt).input_ids])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_generates_the_checkpoints_greedy_tokens(finished_run, tmp_path, dtype, capsys):
    ckpt = finished_run / "checkpoints" / "step_2"
    assert main(["export", str(finished_run), str(tmp_path / "hf"), "--dtype", dtype]) == 0  # the run's latest
    assert "exported step 2" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "rayrl_export.json"} <= files
    assert "optimizer.pt" not in files and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    info = json.loads((tmp_path / "hf" / "rayrl_export.json").read_text())
    assert info["step"] == 2 and info["dtype"] == dtype
    torch_dtype = getattr(torch, dtype)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert next(exported.parameters()).dtype == torch_dtype  # config.json records the export's dtype
    assert greedy(tmp_path / "hf", torch_dtype) == greedy(ckpt, torch_dtype)


def test_an_exported_model_starts_the_next_experiment(finished_run, small_config, tmp_path):
    export_model(str(finished_run / "checkpoints" / "step_2"), tmp_path / "hf")
    result = train(small_config(tmp_path / "next", max_steps=1, model={"name": str(tmp_path / "hf")},
                                warmstart={"enabled": False}, ckpt={"interval": 0, "at_end": False}, **NO_EVAL))
    assert [m["step"] for m in read_metrics(result.output_dir / "metrics.jsonl")] == [1]


def test_export_refuses_damaged_checkpoints_and_a_non_empty_output(finished_run, tmp_path, capsys):
    damaged = tmp_path / "step_2"
    shutil.copytree(finished_run / "checkpoints" / "step_2", damaged)
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"step_2: model.safetensors differ from the checksums"):
        export_model(str(damaged), tmp_path / "out")
    (damaged / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors missing"):
        export_model(str(damaged), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["export", str(finished_run), str(tmp_path / "taken")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "taken" / "notes.txt").exists()
    assert main(["export", str(tmp_path / "nothing-here"), str(tmp_path / "out")]) == 2
    assert "neither a run folder" in capsys.readouterr().err
