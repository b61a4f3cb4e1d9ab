"""`rayrl sft`: supervised fine-tuning on Ray Train's TorchTrainer (the learner group's FSDP2 workers, LoRA
through peft) from JSONL or Parquet prompt/response files; its model starts RL, whose checkpoint exports and
reloads (the seeds' SFT -> RL -> export round trip). Bad data gives errors naming file, column and row."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM

from rayrl.cli import experiment_and_overrides, main
from rayrl.config import Config
from rayrl.driver import train
from rayrl.envs.registry import build_envs
from rayrl.errors import ConfigError, DataError
from rayrl.models.export import export_model
from rayrl.sft import run_sft
from rayrl.storage.tables import read_pairs
from rayrl.tracking import read_metrics
from test_export import greedy

NO_EVAL = {"eval": {"interval": 0, "at_start": False}}


def addition_pairs(n: int, start: int = 0) -> list[dict[str, str]]:
    env = build_envs(Config.model_validate({"env": [{"id": "arithmetic", "args": {"digits": 2}}]}))[0]
    return [{"prompt": e.prompt, "response": env.sft_completion(e)} for e in env.examples("train")[start : start + n]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sft_config(small_config, out, **sft):
    return small_config(out, warmstart={"enabled": False}, sft={"lr": 3e-3, "batch_size": 32, "micro_batch_size": 16,
                                                                "eval_interval": 0, **sft})


@pytest.mark.slow
def test_sft_then_rl_then_export_round_trip(ray_cluster, small_config, tmp_path):
    """SFT on a JSONL file over 2 FSDP workers lowers the validation loss by a margin; its model/ is the
    model.name of an RL run; that run's checkpoint exports to a folder that reloads and generates the
    checkpoint's greedy tokens."""
    data = write_jsonl(tmp_path / "add.jsonl", addition_pairs(640))
    sft = run_sft(sft_config(small_config, tmp_path / "sft", train_files=[data], epochs=2).model_copy(
        update={"learner": small_config().learner.model_copy(update={"workers": 2})}))
    first, last = sft.metrics[0]["val_loss"], sft.val_loss
    assert sft.steps == 2 * 19 and first > 1.5 and last < 0.8 * first, (first, last)  # 608 rows / 32 a batch
    assert (sft.output_dir / "metrics.png").is_file() and (sft.model_dir / "model.safetensors").is_file()
    rl = train(small_config(tmp_path / "rl", max_steps=2, model={"name": str(sft.model_dir)}, warmstart={"enabled": False},
                            ckpt={"interval": 0, "at_end": True}, **NO_EVAL))
    assert [m["step"] for m in read_metrics(rl.output_dir / "metrics.jsonl")] == [1, 2]
    export_model(str(tmp_path / "rl"), tmp_path / "hf")
    assert greedy(tmp_path / "hf") == greedy(tmp_path / "rl" / "checkpoints" / "step_2")
    assert greedy(tmp_path / "hf") != greedy(sft.model_dir)  # RL changed the model (or the check proves nothing)


@pytest.mark.slow
def test_sft_with_lora_on_parquet_merges_its_adapter(ray_cluster, small_config, tmp_path):
    """Parquet files with other column names, a separate validation file, LoRA: the output is a full model
    folder (adapter merged) whose validation loss fell."""
    rows = addition_pairs(400)
    table = pa.table({"question": [r["prompt"] for r in rows], "answer": [r["response"] for r in rows]})
    pq.write_table(table.slice(0, 320), tmp_path / "train.parquet")
    pq.write_table(table.slice(320), tmp_path / "val.parquet")
    cfg = sft_config(small_config, tmp_path / "sft", train_files=[str(tmp_path / "train.parquet")],
                     val_files=[str(tmp_path / "val.parquet")], prompt_key="question", response_key="answer",
                     epochs=2, lr=3e-3)
    sft = run_sft(cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True, "rank": 8, "alpha": 16})}))
    assert sft.val_loss < 0.9 * sft.metrics[0]["val_loss"]
    files = {p.name for p in sft.model_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.startswith("adapter") for f in files)
    AutoModelForCausalLM.from_pretrained(sft.model_dir)


def test_sft_refuses_bad_data_naming_file_column_and_row(tmp_path, small_config):
    good = write_jsonl(tmp_path / "ok.jsonl", addition_pairs(3))
    assert len(read_pairs(good, "prompt", "response")) == 3
    with pytest.raises(DataError, match=r"ok.jsonl: no column 'text' \(columns: prompt, response\).*sft.prompt_key"):
        read_pairs(good, "text", "response")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": 7}])
    with pytest.raises(DataError, match="bad.jsonl"):
        read_pairs(bad, "prompt", "response")  # pyarrow refuses a column of mixed types; the file is named
    nums = write_jsonl(tmp_path / "nums.jsonl", [{"prompt": "a", "response": 1}, {"prompt": "c", "response": 2}])
    with pytest.raises(DataError, match=r"nums.jsonl, row 1: column 'response' holds int"):
        read_pairs(nums, "prompt", "response")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": \n')
    with pytest.raises(DataError, match="broken.jsonl: cannot read it as JSON"):
        read_pairs(str(tmp_path / "broken.jsonl"), "prompt", "response")
    with pytest.raises(DataError, match="missing.parquet: file not found"):
        read_pairs(str(tmp_path / "missing.parquet"), "prompt", "response")
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        read_pairs(str(tmp_path / "data.csv"), "prompt", "response")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="already holds a fine-tuning run"):
        run_sft(sft_config(small_config, tmp_path / "taken", train_files=[good]))


def test_an_override_value_is_never_taken_for_the_experiment_file():
    assert experiment_and_overrides(["--max_steps", "5"]) == (None, ["--max_steps", "5"])
    assert experiment_and_overrides(["--max_steps", "5", "e.toml", "--output-dir", "o"]) == ("e.toml", ["--max_steps", "5"])
    assert experiment_and_overrides(["e.toml", "--a.b=1"]) == ("e.toml", ["--a.b=1"])


def test_the_sft_command_line_reports_data_errors(tmp_path, capsys):
    assert main(["sft", "--sft.train_files", f'["{tmp_path}/none.jsonl"]', "--output-dir", str(tmp_path / "o")]) == 2
    assert "none.jsonl: file not found" in capsys.readouterr().err
