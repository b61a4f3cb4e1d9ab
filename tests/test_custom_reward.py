"""Custom reward functions: loading by file and module, named metrics, failures that score 0 and are logged."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rayrl.envs import Example, make_env
from rayrl.envs.base import Environment, Episode, EpisodeRequest, Turn
from rayrl.config.loading import anchor_reward_spec
from rayrl.envs.custom_reward import CallRunner, RewardFunctionError, RewardOverride, load_reward_function, with_reward
from rayrl.envs.episodes import play_turns

REWARDS = Path(__file__).parent / "rewards"
FIXTURES = REWARDS / "reward_fixtures.py"
LOG = "rayrl.envs.custom_reward"


@pytest.fixture(scope="module")
def arithmetic():
    return make_env("arithmetic", {"digits": 2, "eval_size": 50})


def override(arithmetic, name: str, timeout_s: float = 5.0) -> RewardOverride:
    return with_reward(arithmetic, f"rewards/reward_fixtures.py:{name}", timeout_s, base_dir=REWARDS.parent)


def play(env: Environment, examples: list[Example], completion: str) -> list[Turn]:
    return [env.start(e).step(completion) for e in examples]


def mixed_examples(arithmetic, ones: int, others: int) -> list[Example]:
    """``ones`` examples whose prompt starts with 1 (the fixtures' failing case) and ``others`` that do not."""
    held_out = arithmetic.examples("eval")
    return ([e for e in held_out if e.prompt.startswith("1")][:ones]
            + [e for e in held_out if not e.prompt.startswith("1")][:others])


# ---- loading ------------------------------------------------------------------------------------
def test_file_spec_resolves_against_base_dir_then_cwd(arithmetic, monkeypatch, tmp_path):
    from_base = load_reward_function("rewards/reward_fixtures.py:exact", base_dir=REWARDS.parent)
    monkeypatch.chdir(REWARDS)
    from_cwd = load_reward_function("reward_fixtures.py:exact", base_dir=tmp_path)  # not under tmp_path
    absolute = load_reward_function(f"{FIXTURES}:exact")
    assert from_base is from_cwd is absolute  # one file, one module, called as is
    e = arithmetic.examples("eval")[0]
    module = __import__("sys").modules[from_base.__module__]
    module.CALLS.clear()
    assert from_base(e.prompt, e.answer, e.answer, e.info) == 1.0
    assert module.CALLS == [(e.prompt, e.answer, e.answer, e.info)]
    assert anchor_reward_spec("rewards/reward_fixtures.py:exact", REWARDS.parent) == f"{FIXTURES.resolve()}:exact"
    assert anchor_reward_spec("json:dumps", REWARDS.parent) == "json:dumps"  # modules stay as they are


def test_module_spec_loads(arithmetic, monkeypatch):
    monkeypatch.syspath_prepend(str(REWARDS))
    env = with_reward(arithmetic, "reward_fixtures:exact", timeout_s=0)
    e = arithmetic.examples("eval")[0]
    assert env.start(e).step(e.answer) == Turn(done=True, reward=1.0, metrics={})
    assert env.start(e).step("x").reward == 0.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("reward_fixtures.py", "expected 'path/to/file.py:function' or 'package.module:function'"),
        ("missing/reward.py:fn", f"file not found; tried {REWARDS.parent / 'missing/reward.py'}, "),
        ("rewards/reward_fixtures.py:nope", "has no attribute 'nope'; its functions: exact, with_metrics, rubric"),
        ("rewards/reward_fixtures.py:NOT_CALLABLE", "float 3.0 is not callable"),
        ("rewards/broken_import.py:score", "broken_import.py raised ZeroDivisionError: division by zero (line 7)"),
        ("rewards/reward_fixtures.py:too_few_arguments", "too_few_arguments(completion, answer) must accept (prompt, "),
        ("no_such_package.rewards:fn", "no module named 'no_such_package'"),
        ("rayrl.envs.arithmetic:digit_credit", "digit_credit(completion: 'str', answer: 'str') -> 'float' must accept"),
    ],
)
def test_load_errors_say_what_is_wrong(spec, message):
    with pytest.raises(RewardFunctionError) as info:
        load_reward_function(spec, base_dir=REWARDS.parent)
    assert message in str(info.value) and repr(spec) in str(info.value)


def test_multi_turn_environments_are_refused():
    class TwoTurns(Environment):
        id, max_turns = "two-turns", 2

        def examples(self, split):
            return []

        def start(self, example) -> Episode:
            raise AssertionError("not played")

    with pytest.raises(RewardFunctionError, match="environment 'two-turns'.*max_turns = 2"):
        RewardOverride(TwoTurns(), lambda p, c, a, i: 1.0, 1.0)


# ---- scoring ------------------------------------------------------------------------------------
def test_override_delegates_everything_but_the_score(arithmetic):
    env = override(arithmetic, "exact")
    assert env.id == "arithmetic" and env.max_turns == 1
    assert env.examples("eval") == arithmetic.examples("eval")
    e = env.examples("eval")[0]
    assert env.sft_completion(e) == e.answer
    assert with_reward(arithmetic, None) is arithmetic


def test_dict_returns_become_named_metrics(arithmetic):
    e = arithmetic.examples("eval")[0]
    for timeout_s in (0.0, 5.0):  # inline and in the runner thread
        turn = override(arithmetic, "with_metrics", timeout_s).start(e).step("12 apples")
        assert turn == Turn(done=True, reward=0.5, metrics={"length": 9.0, "has_digit": 1.0})
    assert override(arithmetic, "rubric").start(e).step("x").reward == 0.75  # no "reward" key: the sum
    assert override(arithmetic, "with_metrics").score(e, "ab") == {"reward": 0.5, "length": 2.0, "has_digit": 0.0}


@pytest.mark.parametrize("name, expected", [("by_keyword", 1.1), ("swapped_names", 1.0), ("positional_only", 0.75)])
def test_arguments_by_name_or_position(arithmetic, name, expected):
    e = arithmetic.examples("eval")[0]
    for timeout_s in (0.0, 5.0):
        assert override(arithmetic, name, timeout_s).start(e).step(e.answer).reward == pytest.approx(expected)


def test_raising_function_scores_zero_and_is_logged(arithmetic, caplog):
    env = override(arithmetic, "fails_on_first_digit_one")
    examples = mixed_examples(arithmetic, ones=2, others=3)
    with caplog.at_level(logging.WARNING, logger=LOG):
        turns = play(env, examples, "7")
    assert [t.reward for t in turns] == [0.0, 0.0, 1.0, 1.0, 1.0]
    for e, t in zip(examples[:2], turns):
        assert t.metrics == {"reward_error": "raised ValueError: no prompts starting with 1"}
        assert any(e.id in r.getMessage() and "environment 'arithmetic'" in r.getMessage() for r in caplog.records)
    assert len(caplog.records) == 2 and env.score(examples[0], "7") == 0.0


def test_hanging_function_times_out_and_the_rest_is_scored(arithmetic, caplog):
    # 0.5 s: far above what the quick calls need even on a loaded CI machine, far below the 3 s hang
    env = override(arithmetic, "hangs_on_first_digit_one", timeout_s=0.5)
    examples = mixed_examples(arithmetic, ones=1, others=3)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOG):
        turns = play(env, examples, "7")
    assert time.monotonic() - start < 2.5  # one 0.5 s wait, not the 3 s sleep
    assert [t.reward for t in turns] == [0.0, 1.0, 1.0, 1.0]
    assert turns[0].metrics == {"reward_error": "timed out after 0.5 s"}
    assert examples[0].id in caplog.records[0].getMessage() and "timed out" in caplog.records[0].getMessage()


def test_too_many_hung_calls_are_skipped_not_waited_for(arithmetic, monkeypatch):
    monkeypatch.setattr("rayrl.envs.custom_reward.MAX_HUNG_CALLS", CallRunner.hung + 1)
    env = override(arithmetic, "hangs_on_first_digit_one", timeout_s=0.2)
    examples = mixed_examples(arithmetic, ones=1, others=1)
    turns = play(env, examples, "7")
    assert turns[0].metrics == {"reward_error": "timed out after 0.2 s"}
    start = time.monotonic()
    skipped = env.start(examples[1]).step("7")  # would score 1.0, but a hung call is still running
    assert time.monotonic() - start < 0.1 and skipped.reward == 0.0
    assert skipped.metrics["reward_error"].startswith("not called: ")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("returns_string", "bad return value: reward must be a number, got str: '1.0'"),
        ("returns_none", "bad return value: reward must be a number, got NoneType: None"),
        ("returns_nan", "bad return value: reward must be finite, got nan"),
        ("returns_bad_dict", "bad return value: value of 'note' must be a number, got str: 'text'"),
    ],
)
def test_non_numbers_score_zero_with_a_reason(arithmetic, caplog, name, reason):
    env = override(arithmetic, name)
    e = arithmetic.examples("eval")[3]
    with caplog.at_level(logging.WARNING, logger=LOG):
        turn = env.start(e).step("7")
    assert turn == Turn(done=True, reward=0.0, metrics={"reward_error": reason})
    assert e.id in caplog.text and name in caplog.text


def test_turn_loop_records_reward_errors(arithmetic, local_generator, tiny_model_path, caplog):
    """Through play_turns and the real tiny model: a failing sample has reward_error, the others metrics."""
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    examples = mixed_examples(arithmetic, ones=2, others=4)
    failing = override(arithmetic, "fails_on_first_digit_one", timeout_s=1.0)
    metered = override(arithmetic, "with_metrics", timeout_s=1.0)
    requests = [EpisodeRequest(failing, e, tok(e.prompt).input_ids) for e in examples]
    requests += [EpisodeRequest(metered, e, tok(e.prompt).input_ids) for e in examples[:2]]
    with caplog.at_level(logging.WARNING, logger=LOG):
        results = play_turns(requests, local_generator(seq_len=32, max_tokens=6))
    assert [r.reward for r in results[:6]] == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert [r.reward_error for r in results[:6]] == ["raised ValueError: no prompts starting with 1"] * 2 + [""] * 4
    assert all("reward_error" not in r.metrics for r in results)
    for r in results[6:]:
        assert r.reward == 0.5 and r.reward_error == "" and r.metrics["length"] == len(r.completion)
    assert sum(e.id in caplog.text for e in examples[:2]) == 2
