"""Input people really give: prompts longer than seq_len (skipped, truncated or refused, per
``rollout.long_prompts``, and counted) and a model whose tokenizer has no pad token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rayrl.actors.rollout import RolloutWorker, Task
from rayrl.driver import fitted_groups
from rayrl.envs.base import Example
from rayrl.errors import EnvError

# 2-digit addition prompts are 5 to 7 tokens ("<bos>12+34="): under seq_len 7 the 7-token ones do not fit
LONG = Example(id="add-12-34", prompt="12+34=", answer="46")
SHORT = Example(id="add-1-2", prompt="1+2=", answer="3")


def worker(small_config, tiny_model_path, long_prompts: str) -> RolloutWorker:
    cfg = small_config()
    return RolloutWorker(cfg.env, tiny_model_path, [], 0, seq_len=7, long_prompts=long_prompts)


@pytest.mark.parametrize("mode, fits, long_ids", [
    ("skip", ["", "fits"], None),
    ("truncate", ["truncated", "fits"], [7, 8, 84]),  # the last seq_len - max_tokens = 3 tokens: "34="
])
def test_a_prompt_too_long_for_seq_len_is_skipped_or_truncated(small_config, tiny_model_path, mode, fits, long_ids):
    w = worker(small_config, tiny_model_path, mode)
    tasks = [Task(0, LONG, 2), Task(0, SHORT, 2)]
    ids = [w.tokenizer(t.example.prompt).input_ids for t in tasks]
    assert len(ids[0]) == 7 and len(ids[1]) < 7
    assert w._fit_prompts(tasks, ids, max_tokens=4) == fits
    if long_ids is not None:
        assert ids[0] == long_ids


def test_a_prompt_too_long_is_refused_with_its_example_and_the_fix(small_config, tiny_model_path):
    w = worker(small_config, tiny_model_path, "error")
    with pytest.raises(EnvError, match=r"example add-12-34: the prompt is 7 tokens, leaving no room under seq_len = 7; "
                                       r"raise seq_len, or set rollout.long_prompts to skip or truncate"):
        w._fit_prompts([Task(0, LONG, 1)], [w.tokenizer(LONG.prompt).input_ids], max_tokens=4)


def test_skipped_tasks_are_counted_and_left_out():
    from test_numerics import rollout

    truncated = rollout(2, 1.0)
    truncated.prompt_truncated = True
    played, counts = fitted_groups([[rollout(0, 1.0)], [], [truncated]])
    assert len(played) == 2 and counts == {"prompts/skipped_too_long": 1, "prompts/truncated": 1}
    assert fitted_groups([[rollout(0, 1.0)]])[1] == {}


@pytest.mark.slow
def test_training_and_evaluation_go_on_past_long_prompts(ray_cluster, small_config, base_model_path, tmp_path):
    from rayrl.driver import train
    from rayrl.evaluation.runner import evaluate_model

    cfg = small_config(tmp_path / "run", max_steps=2, seq_len=7, eval={"interval": 2, "num_examples": 30},
                       ckpt={"interval": 2, "keep": 0})
    result = train(cfg)
    assert result.final_step == 2
    skipped = [m["prompts/skipped_too_long"] for m in result.metrics if "prompts/skipped_too_long" in m]
    assert skipped and all(s > 0 for s in skipped)  # counted, and the steps trained on the rest

    evaluated = evaluate_model(cfg, str(tmp_path / "run" / "checkpoints" / "step_2"), split="eval")
    [env] = evaluated.envs.values()
    assert len(env.example_ids) == 30 and env.scores.shape == (30, 1)  # every example scored, long ones 0
    truncating = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"long_prompts": "truncate"})})
    assert evaluate_model(truncating, str(tmp_path / "run" / "checkpoints" / "step_2"), split="eval").envs


def model_without_pad_token(source: str, target: Path) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.pop("pad_token_id", None)
    (target / "config.json").write_text(json.dumps(config))
    tok = json.loads((target / "tokenizer_config.json").read_text())
    tok.pop("pad_token", None)
    (target / "tokenizer_config.json").write_text(json.dumps(tok))
    return target


@pytest.mark.slow
def test_a_tokenizer_without_a_pad_token_trains(ray_cluster, small_config, base_model_path, tmp_path):
    from transformers import AutoTokenizer

    from rayrl.driver import train

    model = model_without_pad_token(base_model_path, tmp_path / "nopad")
    assert AutoTokenizer.from_pretrained(model).pad_token is None
    result = train(small_config(tmp_path / "run", max_steps=2, model={"name": str(model)},
                                warmstart={"enabled": False}, eval={"interval": 2, "num_examples": 10}))
    assert result.final_step == 2 and "eval_reward_mean" in result.metrics[-1]
