"""verifiers environments through rayrl: loading, splits, rewards and metrics, multi-turn token accounting.

The verifiers environments are small modules in ``tests/vf_envs`` (put on ``sys.path`` here); generation
runs on the real tiny model in process. Only the tool-calling test scripts the model's replies: a random
tiny model cannot write a tool call.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("verifiers")

from rayrl.envs import make_env  # noqa: E402
from rayrl.envs.base import EpisodeRequest, EpisodeResult  # noqa: E402
from rayrl.envs.episodes import EngineGenerator  # noqa: E402
from rayrl.errors import EnvError  # noqa: E402
from generators import Recording, Scripted, check_engine_tokens, segments  # noqa: E402

VF_ENVS = Path(__file__).parent / "vf_envs"
CHATML = (
    "{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def vf_env_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(VF_ENVS))


def requests(env, tokenizer, examples: int = 4, samples: int = 4, split: str = "train") -> list[EpisodeRequest]:
    """What the rollout worker builds: each example tokenised from ``Example.prompt``, ``samples`` times."""
    return [
        EpisodeRequest(env, ex, tokenizer(ex.prompt).input_ids)
        for ex in env.examples(split)[:examples] for _ in range(samples)
    ]


def check_tokens(result: EpisodeResult, gen: Recording) -> None:
    """The engine's tokens (check_engine_tokens), and the text they decode to is the prompt's plus the completion."""
    check_engine_tokens(result, gen)
    tok = gen.tokenizer
    assert tok.decode(result.prompt_ids + result.completion_ids, skip_special_tokens=True) == (
        tok.decode(result.prompt_ids, skip_special_tokens=True) + result.completion
    )


def test_examples_come_from_the_verifiers_datasets_with_stable_disjoint_splits():
    env = make_env("vf-tiny-math")
    train, evaluation = env.examples("train"), env.examples("eval")
    assert len(train) == 36 and len(evaluation) == 4  # no eval_dataset: 10% of the dataset held out
    assert {e.id for e in train}.isdisjoint(e.id for e in evaluation)
    again = make_env("verifiers:vf-tiny-math")
    assert [e.id for e in again.examples("eval")] == [e.id for e in evaluation]
    assert [e.prompt for e in again.examples("train")] == [e.prompt for e in train]
    first = train[0]
    assert (first.id, first.prompt, first.answer) == ("dataset-0", "user: 0+0=\nassistant: ", "0")
    assert first.info["row"]["answer"] == "0"

    with_eval = make_env("vf-tiny-math", {"num_examples": 20, "eval_examples": 5})
    assert len(with_eval.examples("train")) == 20
    assert [e.id for e in with_eval.examples("eval")] == [f"eval_dataset-{i}" for i in range(5)]
    assert with_eval.examples("eval")[0].prompt == "user: 2+0=\nassistant: "


def test_single_turn_play_batches_generation_and_returns_rubric_rewards_and_metrics(local_generator):
    gen = Recording(local_generator(seq_len=40, max_tokens=6))
    env = make_env("vf-tiny-math")
    reqs = requests(env, gen.tokenizer)
    results = env.play(reqs, gen)
    assert len(results) == len(reqs) and gen.calls == 1  # 16 rollouts, one generate call
    for req, r in zip(reqs, results):
        assert set(r.metrics) == {"exact_answer", "starts_with_digit", "num_turns"}
        assert r.reward == pytest.approx(r.metrics["exact_answer"] + 0.5 * r.metrics["starts_with_digit"])
        assert r.prompt_ids == req.prompt_ids  # plain template: the worker's ids of Example.prompt are fed
        assert r.turns == 1 and r.version == 0 and set(r.completion_mask) == {1}
        assert r.finish_reason in ("stop", "length")
        check_tokens(r, gen)


def test_correct_answers_earn_the_rubric_reward(tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def solve(prompt: str) -> str:
        a, b = re.findall(r"(\d)\+(\d)=", prompt)[-1]
        return str(int(a) + int(b))

    env = make_env("vf-tiny-math", {"style": "completion"})
    example = next(e for e in env.examples("train") if e.id == "dataset-6")
    assert example.prompt == "0+6="  # completion style: the string prompt as it is
    request = EpisodeRequest(env, example, tokenizer(example.prompt).input_ids)
    (result,) = env.play([request], Scripted(tokenizer, solve))
    assert result.completion == "6" and result.reward == 1.5 and result.version == 3
    assert result.metrics == {"exact_answer": 1.0, "starts_with_digit": 1.0, "num_turns": 1.0}


def test_multi_turn_keeps_engine_tokens_and_masks_the_environment_replies(local_generator):
    gen = Recording(local_generator(seq_len=200, max_tokens=6))
    env = make_env("vf-tiny-game", {"max_turns": 3})
    results = env.play(requests(env, gen.tokenizer), gen)
    assert gen.calls <= 3  # one generate call per turn for all 16 rollouts
    for r in results:
        assert r.turns == r.metrics["num_turns"] == r.metrics["guesses"]
        if r.reward == 1.0:  # solved: the episode ends with the model's last turn
            assert r.finish_reason in ("stop", "length")
        else:
            assert r.finish_reason == "max_turns" and r.turns == 3
        check_tokens(r, gen)
        env_runs = [(s, e) for mask, s, e in segments(r) if mask == 0]
        assert len(env_runs) == r.turns - 1
        for start, end in env_runs:
            text = gen.tokenizer.decode(r.completion_ids[start:end])
            assert re.fullmatch(r"\nuser: (higher|lower|a digit)\nassistant: ", text)
            assert r.completion_ids[start:end] == gen.tokenizer(text, add_special_tokens=False).input_ids
    assert max(r.turns for r in results) == 3


def test_turns_are_cut_to_seq_len(local_generator):
    gen = Recording(local_generator(seq_len=30, max_tokens=8))
    env = make_env("vf-tiny-game", {"max_turns": 3})
    results = env.play(requests(env, gen.tokenizer), gen)
    for r in results:  # prompt 24 tokens: 6 left for the first turn, no room for another
        assert r.length <= 30 and r.turns == 1
        assert r.finish_reason == "length" or r.reward == 1.0
        check_tokens(r, gen)


def test_chat_template_renders_prompts_and_replies(local_generator, tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer.chat_template = CHATML
    base = local_generator(seq_len=200, max_tokens=6)
    gen = Recording(EngineGenerator(base.engine, tokenizer, base.seq_len, base.params))
    env = make_env("vf-tiny-game", {"max_turns": 2})
    results = env.play(requests(env, tokenizer, examples=2), gen)
    prompt = tokenizer("<bos>user\nguess<eos>\n<bos>assistant\n", add_special_tokens=False).input_ids
    for r in results:
        assert r.prompt_ids == prompt
        check_tokens(r, gen)
        for mask, start, end in segments(r):
            if mask == 0:  # the template's end of turn, unless the model already sampled it
                text = tokenizer.decode(r.completion_ids[start:end])
                ended = r.completion_ids[start - 1] == tokenizer.eos_token_id
                reply = r"\n<bos>user\n(higher|lower|a digit)<eos>\n<bos>assistant\n"
                assert re.fullmatch(("" if ended else "<eos>") + reply, text)
    # A model that ends its turns with end-of-sequence (the template's end of turn): it is not repeated.
    (r,) = env.play(requests(env, tokenizer, examples=1, samples=1), Scripted(tokenizer, lambda prompt: "5"))
    assert tokenizer.decode(r.completion_ids) == "5<eos>\n<bos>user\nlower<eos>\n<bos>assistant\n5<eos>"


def test_tool_env_parses_tool_calls_from_text(tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def model(prompt: str) -> str:
        if "tool: " in prompt:  # the tool answered: repeat its result
            return re.findall(r"tool: (\d+)\n", prompt)[-1]
        a, b = re.findall(r"user: (\d)\+(\d)=", prompt)[-1]
        return f'<tool_call>{{"name": "add", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call>'

    env = make_env("vf-tiny-tools")
    example = env.examples("train")[-1]
    (r,) = env.play([EpisodeRequest(env, example, tokenizer(example.prompt).input_ids)], Scripted(tokenizer, model))
    assert r.reward == 1.0 and r.turns == 2 and r.finish_reason == "stop"
    assert r.metrics["add_calls"] == 1.0 and r.metrics["total_tool_calls"] == 1.0
    env_runs = [tokenizer.decode(r.completion_ids[s:e]) for mask, s, e in segments(r) if mask == 0]
    assert env_runs == [f"\ntool: {example.answer}\nassistant: "]


def test_unknown_id_names_the_id_and_how_to_install_it():
    with pytest.raises(EnvError, match=r"vf-no-such-env.*module 'vf_no_such_env'.*pip install"):
        make_env("vf-no-such-env")
    with pytest.raises(EnvError, match=r"verifiers:vf-no-such-env"):
        make_env("verifiers:vf-no-such-env")


def test_bad_arguments_name_the_argument_and_the_accepted_ones():
    accepted = "accepts: num_examples, eval_examples, style"
    with pytest.raises(EnvError, match=rf"unknown argument\(s\) 'digits'; .*{accepted}"):
        make_env("vf-tiny-math", {"digits": 3})
    with pytest.raises(EnvError, match=r"vf-tiny-math.*style must be 'chat' or 'completion'"):
        make_env("vf-tiny-math", {"style": "poem"})
