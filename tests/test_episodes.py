"""The turn loop: token accounting of multi-turn episodes, seq_len, max_turns, mixed batches, loss mask."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from rayrl.envs import make_env
from rayrl.envs.base import Environment, Episode, EpisodeRequest, Example, Turn, split_score
from rayrl.envs.episodes import play_turns


class CountdownEpisode(Episode):
    def __init__(self, turns: int):
        self.left = turns

    def step(self, completion: str) -> Turn:
        self.left -= 1
        reward = 1.0 if completion.strip().startswith("7") else 0.0
        if self.left == 0:
            return Turn(done=True, reward=reward, metrics={"last": 1.0})
        return Turn(done=False, observation=f"\n[{self.left} left] say 7:", reward=reward, metrics={"last": 0.0})


class Countdown(Environment):
    """A small multi-turn environment defined by the test: ``turns`` model turns, reward per turn."""

    id = "countdown"

    def __init__(self, turns: int = 3, max_turns: int = 10):
        self.turns, self.max_turns = turns, max_turns

    def examples(self, split):
        return [Example(f"cd-{split}-{i}", f"say 7 ({i}):") for i in range(4)]

    def start(self, example: Example) -> Episode:
        return CountdownEpisode(self.turns)


def requests(env, tokenizer, n=4):
    return [EpisodeRequest(env, ex, tokenizer(ex.prompt).input_ids) for ex in env.examples("train")[:n]]


def test_multi_turn_keeps_engine_tokens_and_masks_environment_text(local_generator, tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    env = Countdown(turns=3)
    results = play_turns(requests(env, tok), local_generator(seq_len=200, max_tokens=4))
    for r in results:
        assert r.turns == 3 and r.finish_reason in ("stop", "length")
        assert len(r.completion_ids) == len(r.completion_mask) == len(r.logprobs)
        env_ids = [t for t, m in zip(r.completion_ids, r.completion_mask) if m == 0]
        expected = tok("\n[2 left] say 7:", add_special_tokens=False).input_ids
        expected += tok("\n[1 left] say 7:", add_special_tokens=False).input_ids
        assert env_ids == expected  # the environment's text, tokenised on its own
        assert all(lp == 0.0 for lp, m in zip(r.logprobs, r.completion_mask) if m == 0)
        assert all(lp < 0.0 or lp == 0.0 for lp in r.logprobs)
        assert r.metrics == {"last": 1.0} and 0.0 <= r.reward <= 3.0
        assert r.version == 0


def test_episode_is_cut_at_seq_len_and_at_max_turns(local_generator, tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    long_run = play_turns(requests(Countdown(turns=50), tok), local_generator(seq_len=60, max_tokens=6))
    for r in long_run:
        assert r.length <= 60 and r.finish_reason == "length" and r.turns < 50
    capped = play_turns(requests(Countdown(turns=50, max_turns=2), tok), local_generator(seq_len=200, max_tokens=3))
    assert {(r.turns, r.finish_reason) for r in capped} == {(2, "max_turns")}


def test_mixed_environments_share_one_generate_call_per_turn(local_generator, tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    arithmetic = make_env("arithmetic", {"digits": 1, "eval_size": 10})
    mixed = requests(arithmetic, tok) + requests(Countdown(turns=2), tok)
    generator = local_generator(seq_len=100, max_tokens=3)
    results = play_turns(mixed, generator)
    assert generator.calls == 2  # turn 1 for all eight episodes, turn 2 for the countdown ones only
    assert [r.turns for r in results] == [1] * 4 + [2] * 4
    assert all(r.completion_mask == [1] * len(r.completion_ids) for r in results[:4])


def test_scores_may_be_named_metrics_and_must_be_numbers():
    assert split_score({"reward": 0.5, "format": 1.0}) == (0.5, {"format": 1.0})
    assert split_score({"a": 0.25, "b": 0.5}) == (0.75, {"a": 0.25, "b": 0.5})
    assert split_score(np.float32(0.5)) == (0.5, {}) and split_score(True) == (1.0, {})
    for bad in ("1.0", None, float("nan"), {"reward": "x"}):
        with pytest.raises(TypeError):
            split_score(bad)
