"""The ``rayrl`` command as users run it: exit codes and the messages they read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rayrl.config.loading import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def rayrl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayrl.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_unquoted_string_is_reported_with_file_line_and_fix(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('max_steps = 3\n[model]\nname = Qwen/Qwen3-0.6B\n')
    out = rayrl("train", str(bad))
    assert out.returncode == 2
    assert f"{bad}, line 3, column 8" in out.stderr
    assert 'did you mean: name = "Qwen/Qwen3-0.6B"?' in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_override_names_the_closest_key():
    out = rayrl("train", "experiments/default.toml", "--optim.lrr", "1e-4")
    assert out.returncode == 2
    assert "command line: unknown key 'optim.lrr'; did you mean 'optim.lr'?" in out.stderr


def test_wrong_type_names_the_expected_type(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nlr = "fast"\n')
    out = rayrl("train", str(bad))
    assert out.returncode == 2
    assert "line 2: key 'optim.lr' expects a float, got 'fast' (str)" in out.stderr


def test_fresh_run_into_a_folder_with_checkpoints_is_refused_before_starting_ray(tmp_path):
    step = tmp_path / "checkpoints" / "step_5"
    step.mkdir(parents=True)
    (step / "training_info.json").write_text("{}")
    out = rayrl("train", "experiments/default.toml", "--output-dir", str(tmp_path))
    assert out.returncode == 2
    assert "already holds checkpoints (steps [5])" in out.stderr and "--ckpt.resume_step -1" in out.stderr


def test_every_shipped_experiment_resolves_and_builds_its_environments():
    from rayrl.config.loading import load_config
    from rayrl.envs.registry import build_envs

    paths = sorted((ROOT / "experiments").glob("*.toml"))
    assert len(paths) >= 6  # default + one per environment family
    for path in paths:
        out = rayrl("config", str(path))
        assert out.returncode == 0, (path, out.stderr)
        for env in build_envs(load_config(path)):
            assert env.examples("train") and env.examples("eval"), path


def test_unknown_environment_is_refused_with_the_fix_and_no_run_folder(tmp_path):
    out = rayrl("train", "experiments/default.toml", "--output-dir", str(tmp_path / "run"), "--env.0.id", "arithmetc")
    assert out.returncode == 2, out.stderr
    assert "unknown environment id 'arithmetc'" in out.stderr and "Did you mean 'arithmetic'?" in out.stderr
    assert "experiments/default.toml: [[env]] entry 1" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_warm_start_of_a_multi_turn_environment_is_refused_before_anything_starts(tmp_path):
    out = rayrl("train", "experiments/gymnasium_frozenlake.toml", "--output-dir", str(tmp_path / "run"),
                "--warmstart.enabled", "true")
    assert out.returncode == 2, out.stderr
    assert "(id 'gymnasium:FrozenLake-v1') is a multi-turn environment" in out.stderr
    assert "set warmstart.enabled = false" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_config_reference_is_current():
    """docs/configuration.md carries the generated table; regenerate: python scripts/update_config_reference.py."""
    assert config_reference_markdown().strip() in (ROOT / "docs" / "configuration.md").read_text()


def test_the_vllm_engine_without_vllm_or_with_a_head_size_it_cannot_run_is_refused_up_front(tmp_path):
    head = rayrl("config", "experiments/default.toml", "--inference.engine", "vllm", "--model.tiny.num_heads", "8")
    assert head.returncode == 2 and "head dimension is 16" in head.stderr and "vLLM's CPU attention supports 32" in head.stderr
    import importlib.util

    if importlib.util.find_spec("vllm") is None:  # the main .venv: verifiers' pins keep vLLM out
        out = rayrl("train", "experiments/default.toml", "--inference.engine", "vllm", "--output-dir", str(tmp_path / "r"))
        assert out.returncode == 2, out.stderr
        assert "needs vLLM, which this Python environment lacks" in out.stderr and "scripts/setup_vllm.sh" in out.stderr
        assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()
