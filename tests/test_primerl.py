"""prime-rl's command line and three files (the seeds' own, /work/shared/seeds 000 and 001) read as one
rayrl config, and a prime-rl trio adapted to the tiny model training a verifiers environment and resuming
with ``--trainer.ckpt.resume-step -1``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayrl.cli import main, resume_command
from rayrl.config.primerl import load_trio, parse_trio_args
from rayrl.errors import ConfigError
from rayrl.storage.checkpoints import INFO_FILE
from rayrl.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
VF_ENVS = ROOT / "experiments" / "vf_envs"

# /work/shared/seeds/001: configs/dakota_grammar_gym/rl/{train,orch,infer}.toml, verbatim
SEED_TRAIN = """max_steps = 1000

[model]
name = "Qwen/Qwen3-0.6B"

[optim]
lr = 3e-6
"""
SEED_ORCH = """batch_size = 128
rollouts_per_example = 16
seq_len = 2048
max_steps = 1000
mask_truncated_completions = false

[model]
name = "Qwen/Qwen3-0.6B"

[sampling]
max_tokens = 2048

[[env]]
id = "harleycooper/dakota1890"
"""
SEED_INFER = """[model]
name = "Qwen/Qwen3-0.6B"
"""
# /work/shared/seeds/000: experiment_v2, from a finished run's exported model (two wandb names, two [ckpt])
SEED_V2_TRAIN = """max_steps = 2000  # New max steps

[model]
name = "/workspace/prime-rl/outputs/dakota-v12-1000steps/hf_model"  # Local checkpoint path

[optim]
lr = 1e-6  # Lower learning rate for fine-tuning

[wandb]
project = "dakota-grammar-gym"
name = "dakota-v13-2000steps-experiment-v2"

[ckpt]
interval = 50
keep = 5
"""
SEED_V2_ORCH = """batch_size = 128
rollouts_per_example = 16
seq_len = 2048
max_steps = 2000

[model]
name = "/workspace/prime-rl/outputs/dakota-v12-1000steps/hf_model"  # Same checkpoint path

[sampling]
max_tokens = 2048

[[env]]
id = "harleycooper/dakota1890"
# args = { reward_scale = 2.0, difficulty = "hard" }  # Example

[[env]]
id = "harleycooper/dakota1890"
args = { difficulty = "hard" }

[wandb]
project = "dakota-grammar-gym"
name = "dakota-v13-2000steps-experiment-v2-orchestrator"

[ckpt]
interval = 50
keep = 5
"""


def write_trio(folder: Path, train: str, orch: str, infer: str | None = SEED_INFER) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.toml").write_text(train)
    (folder / "orch.toml").write_text(orch)
    tokens = ["--trainer", "@", str(folder / "train.toml"), "--orchestrator", "@", str(folder / "orch.toml")]
    if infer is not None:
        (folder / "infer.toml").write_text(infer)
        tokens += ["--inference", "@", str(folder / "infer.toml")]
    return tokens


def test_the_seed_command_line_maps_onto_one_config(tmp_path):
    tokens = write_trio(tmp_path, SEED_TRAIN, SEED_ORCH) + [
        "--inference-gpu-ids", "0,1,2,3,4,5", "--trainer-gpu-ids", "6,7", "--inference.parallel.dp", "6",
        "--output-dir", str(tmp_path / "outputs" / "dakota-v12-1000steps"),
    ]
    cfg, warnings = load_trio(tokens)
    assert cfg.model.name == "Qwen/Qwen3-0.6B" and cfg.max_steps == 1000 and cfg.optim.lr == 3e-6
    assert (cfg.batch_size, cfg.rollouts_per_example, cfg.seq_len) == (128, 16, 2048)
    assert cfg.algorithm.mask_truncated_completions is False
    assert [e.id for e in cfg.env] == ["harleycooper/dakota1890"]
    assert (cfg.inference.replicas, cfg.inference.gpus_per_replica) == (6, 1)
    assert (cfg.learner.workers, cfg.learner.gpus_per_worker) == (2, 1)
    assert cfg.output_dir == str(tmp_path / "outputs" / "dakota-v12-1000steps")
    # max_tokens = seq_len: rayrl cuts each completion at the prompt's room anyway, so seq_len - 1 samples the same
    assert cfg.sampling.max_tokens == 2047
    assert any("orch.toml line 11 (sampling.max_tokens)" in w and "2047" in w for w in warnings), warnings


def test_rayrl_config_prints_the_resolved_config_and_the_warnings(tmp_path, capsys):
    train = SEED_TRAIN + '\n[loss]\nratio_type = "token"\n'  # a prime-rl key rayrl has no meaning for
    tokens = write_trio(tmp_path, train, SEED_ORCH)
    assert main(["config", *tokens, "--trainer-gpu-ids", "1", "--inference-gpu-ids", "0"]) == 0
    out, err = capsys.readouterr()
    resolved = json.loads(out)
    assert resolved["optim"]["lr"] == 3e-6 and resolved["learner"]["workers"] == 1
    assert "warning: train.toml line 10 (loss.ratio_type): prime-rl's trainer key 'loss.ratio_type' has no rayrl " \
           "meaning; ignored" in err, err


def test_experiment_v2_files_keep_one_wandb_run_and_one_checkpoint_policy(tmp_path):
    cfg, warnings = load_trio(write_trio(tmp_path, SEED_V2_TRAIN, SEED_V2_ORCH, infer=None))
    assert cfg.model.name.endswith("dakota-v12-1000steps/hf_model") and cfg.max_steps == 2000 and cfg.optim.lr == 1e-6
    assert (cfg.ckpt.interval, cfg.ckpt.keep) == (50, 5)
    assert [e.args for e in cfg.env] == [{}, {"difficulty": "hard"}]
    assert cfg.wandb.project == "dakota-grammar-gym" and cfg.wandb.name == "dakota-v13-2000steps-experiment-v2"
    named = [w for w in warnings if w.startswith("'wandb.name'")]
    assert len(named) == 1 and "orch.toml line 22 (wandb.name)" in named[0], warnings


def test_prime_rl_command_line_overrides(tmp_path):
    tokens = write_trio(tmp_path, SEED_TRAIN, SEED_ORCH.replace("2048\n\n[[env]]", "1024\n\n[[env]]")) + [
        "--trainer.ckpt.resume-step", "-1", "--orchestrator.ckpt.resume-step", "-1",
        "--orchestrator.mask-truncated-completions", "--trainer.optim.lr", "1e-5", "--max_steps", "7",
        "--inference.threads", "3", "--orchestrator.env.0.args.difficulty", "3", "--trainer.wandb.name", "2024",
    ]
    cfg, _ = load_trio(tokens)
    assert cfg.env[0].args == {"difficulty": 3} and cfg.wandb.name == "2024"  # into [[env]]; a string stays one
    assert cfg.ckpt.resume_step == -1 and cfg.algorithm.mask_truncated_completions is True
    assert cfg.optim.lr == 1e-5 and cfg.max_steps == 7 and cfg.inference.threads == 3
    assert cfg.sampling.max_tokens == 1024
    again = resume_command(["train", *tokens[:6], "--trainer.ckpt.resume-step", "-1", "--output-dir", "o"], "o2", True)
    assert again.count("resume-step") == 1 and again.endswith("--trainer.ckpt.resume-step -1 --output-dir o2")


@pytest.mark.parametrize("change, extra, expected", [
    # the files disagree on what is trained
    (("orch", 'name = "Qwen/Qwen3-0.6B"', 'name = "Qwen/Qwen3-1.7B"'), [],
     "'model.name' differs between the files: train.toml line 4 (model.name) says 'Qwen/Qwen3-0.6B'; "
     "orch.toml line 8 (model.name) says 'Qwen/Qwen3-1.7B'"),
    (("train", "lr = 3e-6", 'lr = "small"'), [], "train.toml line 7 (optim.lr): key 'optim.lr' expects"),
    (None, ["--inference-gpu-ids", "0,1", "--trainer-gpu-ids", "1,2"],
     "GPU 1 is in both --inference-gpu-ids and --trainer-gpu-ids"),
    (None, ["--inference-gpu-ids", "0,1", "--inference.parallel.dp", "3"],
     "command line (--inference.parallel.dp): 3 replicas, but --inference-gpu-ids lists 2 GPUs"),
    (None, ["--trainer-gpu-ids", "a,b"], "--trainer-gpu-ids a,b is not a list of distinct GPU ids"),
])  # fmt: skip
def test_mistakes_name_the_file_line_or_flag(tmp_path, change, extra, expected):
    texts = {"train": SEED_TRAIN, "orch": SEED_ORCH}
    if change:
        texts[change[0]] = texts[change[0]].replace(change[1], change[2], 1)
    with pytest.raises(ConfigError) as err:
        load_trio(write_trio(tmp_path, texts["train"], texts["orch"]) + extra)
    assert expected in str(err.value), str(err.value)


def test_a_missing_file_or_role_is_named(tmp_path):
    with pytest.raises(ConfigError, match="prime-rl config file not found: .*nope.toml"):
        load_trio(["--trainer", "@", str(tmp_path / "nope.toml"), "--orchestrator", "@", str(tmp_path / "o.toml")])
    with pytest.raises(ConfigError, match="--orchestrator @ FILE is missing"):
        parse_trio_args(["--trainer", "@", "train.toml"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trio_trains_a_verifiers_environment_and_resumes(ray_cluster, base_model_path, model_cache, tmp_path):
    """The seeds' three files adapted to the tiny model (the warm-started model folder as [model] name, as
    seed 000 names a finished run's export) and a verifiers environment; run by rayrl's own CLI entry point,
    then resumed with prime-rl's --trainer.ckpt.resume-step -1."""
    model = f'[model]\nname = "{base_model_path}"\n'
    train = (f"max_steps = 2\n\n{model}cache_dir = \"{model_cache}\"\n\n[optim]\nlr = 3e-4\n\n"
             "[ckpt]\ninterval = 1\nkeep = 0\n\n[warmstart]\nenabled = false\n\n[log]\nprogress = false\n")
    orch = ("batch_size = 16\nrollouts_per_example = 4\nseq_len = 48\nmax_steps = 2\nmask_truncated_completions = true\n\n"
            f"{model}\n[sampling]\nmax_tokens = 4\ntemperature = 1.0\n\n"
            f'[[env]]\nid = "vf-addition"\npath = "{VF_ENVS}"\nargs = {{ max_operand = 9, eval_examples = 8 }}\n\n'
            "[eval]\ninterval = 2\nnum_examples = 8\n")
    infer = f"{model}\n[parallel]\ndp = 1\n\n[server]\nport = 8000\n"
    run = tmp_path / "outputs" / "trio"
    tokens = write_trio(tmp_path, train, orch, infer) + ["--inference.cpus-per-replica", "0.5", "--output-dir", str(run)]
    assert main(["train", *tokens]) == 0
    assert main(["train", *tokens, "--trainer.ckpt.resume-step", "-1", "--trainer.max-steps", "3"]) == 0

    steps = [m for m in read_metrics(run / "metrics.jsonl") if m["step"] > 0]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all("reward/vf-addition/reward_mean" in m and "masked_truncated" in m for m in steps)
    info = json.loads((run / "checkpoints" / "step_3" / INFO_FILE).read_text())
    assert info["step"] == 3


def test_every_mapped_key_is_documented():
    from rayrl.config.primerl import KEY_MAP

    doc = (ROOT / "docs" / "prime-rl.md").read_text()
    for role, keys in KEY_MAP.items():
        for key in keys:
            name = key.rsplit(".", 1)[-1]
            assert f"`{name}`" in doc or f"{name}`" in doc, (role, key)


def test_one_combined_file_as_prime_rl_rl_toml(tmp_path):
    """prime-rl's ``rl @ rl.toml``: shared keys at the top, [trainer], [orchestrator], [inference] tables."""
    combined = tmp_path / "rl.toml"
    combined.write_text(
        'max_steps = 20\nseq_len = 512\n\n[model]\nname = "Qwen/Qwen3-0.6B"\n\n[trainer.optim]\nlr = 2e-6\n\n'
        "[orchestrator]\nbatch_size = 64\nrollouts_per_example = 8\n\n[orchestrator.sampling]\nmax_tokens = 256\n\n"
        '[[orchestrator.env]]\nid = "arithmetic"\n\n[inference.parallel]\ndp = 2\ntp = 1\n\n[inference.server]\nport = 8000\n'
    )
    cfg, warnings = load_trio(["@", str(combined), "--orchestrator.sampling.temperature", "0.7"])
    assert (cfg.max_steps, cfg.seq_len, cfg.model.name, cfg.optim.lr) == (20, 512, "Qwen/Qwen3-0.6B", 2e-6)
    assert (cfg.batch_size, cfg.rollouts_per_example, cfg.sampling.max_tokens) == (64, 8, 256)
    assert cfg.sampling.temperature == 0.7 and [e.id for e in cfg.env] == ["arithmetic"]
    assert cfg.inference.replicas == 2
    assert warnings == ["rl.toml line 25 (inference.server.port): prime-rl's inference key 'server.port' has no "
                        "rayrl meaning; ignored"], warnings  # tp = 1 is what rayrl does: no warning


def test_the_seed_gpu_layout_on_a_machine_without_gpus_stops_at_once(tmp_path, ray_cluster, caplog):
    """--inference-gpu-ids 0 --trainer-gpu-ids 1 on a CPU-only local Ray: one error naming the reservation,
    not a half-hour wait for a placement that never comes; on a cluster joined by address, a warning."""
    from rayrl.driver import check_capacity

    tokens = write_trio(tmp_path, SEED_TRAIN, SEED_ORCH) + ["--inference-gpu-ids", "0", "--trainer-gpu-ids", "1"]
    cfg, _ = load_trio(tokens)
    with pytest.raises(ConfigError) as err:
        check_capacity(cfg, local=True)
    assert str(err.value).startswith("the run reserves 2 GPUs (1 inference replica x 1 + 1 learner x 1) but the "
                                     "cluster has 0: a local Ray cannot grow. Lower inference.replicas"), err.value
    with caplog.at_level("WARNING", logger="rayrl"):
        check_capacity(cfg, local=False)
    assert "the run waits (up to fault.ready_timeout_s = 1800 s)" in caplog.text
    check_capacity(load_trio(write_trio(tmp_path / "cpu", SEED_TRAIN, SEED_ORCH))[0], local=True)  # fits: silent
