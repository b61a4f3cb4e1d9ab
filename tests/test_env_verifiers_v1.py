"""verifiers 0.4 (``verifiers.v1``) environments through rayrl's OpenAI-compatible endpoint: the endpoint's
tokens are the engine's, a v1 taskset plays single- and multi-turn episodes whose tokens are the engine's,
and it trains end to end on real Ray.

Runs where verifiers >= 0.4 is installed: the vLLM environment (``bash scripts/setup_vllm.sh``; ``bash
scripts/test.sh`` runs this file there). The main ``.venv`` pins verifiers 0.3 and skips it. The taskset is
``tests/vf_envs_v1/vf_v1_addition`` (its harness runs in process; verifiers' own harnesses install
themselves with ``uv``).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from rayrl.envs.registry import verifiers_version

if verifiers_version() < (0, 4):
    pytest.skip("needs verifiers >= 0.4 (the vLLM environment: bash scripts/setup_vllm.sh)", allow_module_level=True)

import httpx  # noqa: E402
import openai  # noqa: E402

from rayrl.envs import make_env  # noqa: E402
from rayrl.envs.base import EpisodeRequest, EpisodeResult, Generator  # noqa: E402
from rayrl.envs.endpoint import ModelEndpoint  # noqa: E402
from rayrl.errors import EnvError  # noqa: E402
from generators import Recording, Scripted, check_engine_tokens, segments  # noqa: E402

VF_ENVS_V1 = Path(__file__).parent / "vf_envs_v1"
ENV_ID = "vf-v1-addition"


@pytest.fixture(autouse=True)
def vf_env_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(VF_ENVS_V1))


@pytest.fixture
def envs():
    """Environments made by a test; their endpoint and event-loop threads are stopped after it."""
    made = []

    def make(args=None):
        made.append(make_env(ENV_ID, args))
        return made[-1]

    yield make
    for env in made:
        env.close()


class Failing(Generator):
    def __init__(self, tokenizer):
        self.tokenizer, self.seq_len, self.max_tokens = tokenizer, 64, 4

    def generate(self, prompts, max_tokens):
        raise ConnectionError("replica 0 is unreachable")


def requests(env, tokenizer, examples: int = 4, samples: int = 4) -> list[EpisodeRequest]:
    """What the rollout worker builds: each example tokenised from ``Example.prompt``, ``samples`` times."""
    return [EpisodeRequest(env, ex, tokenizer(ex.prompt).input_ids)
            for ex in env.examples("train")[:examples] for _ in range(samples)]  # fmt: skip


def check_tokens(result: EpisodeResult, gen: Recording) -> None:
    """A completion at all, and its tokens the engine's (check_engine_tokens)."""
    assert len(result.completion_ids) > 0
    check_engine_tokens(result, gen)


# ---- the endpoint ---------------------------------------------------------------------------------
def test_the_endpoint_returns_the_engines_token_ids_and_logprobs(local_generator):
    gen = Recording(local_generator(seq_len=48, max_tokens=6))
    tok = gen.tokenizer
    with ModelEndpoint(gen) as ep:
        assert ep.url.startswith("http://127.0.0.1:") and ep.port > 0
        client = openai.OpenAI(base_url=ep.base_url, api_key="unused", max_retries=0)
        (card,) = client.models.list().data
        assert card.id == "rayrl" and card.max_model_len == 48

        chat = client.chat.completions.create(
            model="rayrl", messages=[{"role": "user", "content": "1+2="}], logprobs=True,
            extra_body={"return_tokens_as_token_ids": True},
        )
        prompt = tok("user: 1+2=\nassistant: ").input_ids  # the plain template, as the worker tokenises it
        assert chat.prompt_token_ids == prompt
        (engine,) = gen.sampled[tuple(prompt)]
        choice = chat.choices[0]
        assert choice.token_ids == engine.token_ids and choice.finish_reason == engine.finish_reason
        assert [t.token for t in choice.logprobs.content] == [f"token_id:{t}" for t in engine.token_ids]
        assert [t.logprob for t in choice.logprobs.content] == engine.logprobs
        assert choice.message.content == tok.decode(engine.token_ids, skip_special_tokens=True)

        # vLLM's token route (what verifiers' TrainClient calls): ids in, ids and log-probs out; n samples,
        # cut at a stop token, capped by max_tokens
        body = {"model": "rayrl", "token_ids": prompt[:5],
                "sampling_params": {"max_tokens": 3, "n": 3, "stop_token_ids": [tok.eos_token_id], "logprobs": 1}}
        out = httpx.post(ep.url + "/inference/v1/generate", json=body).json()
        assert out["prompt_token_ids"] == prompt[:5] and len(out["choices"]) == 3
        for c, engine in zip(out["choices"], gen.sampled[tuple(prompt[:5])]):
            assert c["token_ids"] == engine.token_ids[: len(c["token_ids"])] and len(c["token_ids"]) <= 3
            assert [e["logprob"] for e in c["logprobs"]["content"]] == engine.logprobs[: len(c["token_ids"])]
            assert [e["token"] for e in c["logprobs"]["content"]] == [f"token_id:{t}" for t in c["token_ids"]]

        text = client.completions.create(model="rayrl", prompt="7+1=", max_tokens=2, logprobs=1)
        (engine,) = gen.sampled[tuple(tok("7+1=").input_ids)]
        assert text.choices[0].logprobs.token_logprobs == engine.logprobs[:2]

        # concurrent requests are sampled together in one generate call (at once when all `live` clients wait)
        ep.live = 8

        async def many():
            aclient = openai.AsyncOpenAI(base_url=ep.base_url, api_key="unused", max_retries=0)
            msgs = [[{"role": "user", "content": f"{i}+{i}="}] for i in range(8)]
            await asyncio.gather(*(aclient.chat.completions.create(model="rayrl", messages=m) for m in msgs))
            await aclient.close()

        calls = gen.calls
        asyncio.run(many())
        assert gen.calls == calls + 1


def test_the_endpoint_refuses_bad_requests_with_clear_errors(local_generator, tiny_model_path):
    from transformers import AutoTokenizer

    with ModelEndpoint(local_generator(seq_len=16, max_tokens=4)) as ep:
        client = openai.OpenAI(base_url=ep.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="model `gpt-4o` does not exist: this endpoint serves `rayrl`"):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "1+1="}])
        with pytest.raises(openai.BadRequestError, match="maximum context length is 16 tokens.*20 input tokens"):
            client.completions.create(model="rayrl", prompt="x" * 19)
        with pytest.raises(openai.BadRequestError, match="'stream' is not supported"):
            client.chat.completions.create(model="rayrl", messages=[{"role": "user", "content": "1"}], stream=True)
    with ModelEndpoint(Failing(AutoTokenizer.from_pretrained(tiny_model_path))) as ep:
        client = openai.OpenAI(base_url=ep.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="ConnectionError: replica 0 is unreachable"):
            client.completions.create(model="rayrl", prompt="1+1=")
        assert isinstance(ep.failure, ConnectionError)
    with pytest.raises(httpx.ConnectError):  # stopped: nothing listens there any more
        httpx.get(ep.base_url + "/models")


# ---- the environment ------------------------------------------------------------------------------
def test_examples_come_from_the_taskset_with_stable_disjoint_splits(envs):
    env = envs()
    train, evaluation = env.examples("train"), env.examples("eval")
    assert len(train) == 36 and len(evaluation) == 4  # 10% of the 40 tasks held out
    assert {e.id for e in train}.isdisjoint(e.id for e in evaluation)
    assert [e.id for e in make_env("verifiers:" + ENV_ID).examples("eval")] == [e.id for e in evaluation]
    first = train[0]
    assert (first.id, first.prompt, first.answer) == ("add-0-0", "user: 0+0=\nassistant: ", "0")
    assert len(envs({"num_tasks": 20}).examples("train")) == 18


def test_single_turn_play_keeps_the_engines_tokens_and_returns_rewards_and_metrics(envs, local_generator):
    gen = Recording(local_generator(seq_len=40, max_tokens=6))
    env = envs()
    reqs = requests(env, gen.tokenizer)
    results = env.play(reqs, gen)
    assert len(results) == len(reqs) == 16 and gen.calls == 1  # 16 rollouts, one generate call
    for req, r in zip(reqs, results):
        assert set(r.metrics) == {"exact_answer", "starts_with_digit", "replies", "num_turns"}
        assert r.reward == pytest.approx(r.metrics["exact_answer"] + 0.5 * r.metrics["starts_with_digit"])
        assert r.prompt_ids == req.prompt_ids  # verifiers' renderer made the worker's ids of Example.prompt
        assert r.turns == 1 and r.version == 0 and set(r.completion_mask) == {1}
        assert r.finish_reason in ("stop", "length")
        assert r.completion == gen.tokenizer.decode(r.completion_ids, skip_special_tokens=True)
        check_tokens(r, gen)
    again = env.play(reqs[:4], gen)  # the endpoint and event loop are reused across calls
    assert len(again) == 4 and all(r.turns == 1 for r in again)


def test_multi_turn_play_masks_the_harness_turns(envs, local_generator):
    gen = Recording(local_generator(seq_len=96, max_tokens=5))
    env = envs({"followups": 1})
    results = env.play(requests(env, gen.tokenizer, examples=2, samples=2), gen)
    for r in results:
        assert r.metrics["num_turns"] == 2.0
        check_tokens(r, gen)
        runs = segments(r)
        if r.turns == 2:  # verifiers bridged turn 2 onto turn 1's tokens: one sequence of both turns
            assert [m for m, _, _ in runs] == [1, 0, 1]
            _, start, end = runs[1]
            text = gen.tokenizer.decode(r.completion_ids[start:end], skip_special_tokens=True)
            assert re.fullmatch(r"\nuser: Check: \d\+\d=\nassistant: ", text)
    assert any(r.turns == 2 for r in results)


def test_a_correct_model_earns_the_reward(envs, tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def solve(prompt: str) -> str:
        a, b = re.findall(r"(\d)\+(\d)=", prompt)[-1]
        return str(int(a) + int(b))

    env = envs()
    example = next(e for e in env.examples("train") if e.id == "add-3-4")
    (r,) = env.play([EpisodeRequest(env, example, tokenizer(example.prompt).input_ids)], Scripted(tokenizer, solve))
    assert r.completion == "7" and r.reward == 1.5 and r.version == 3 and r.finish_reason == "stop"
    assert r.metrics == {"exact_answer": 1.0, "starts_with_digit": 1.0, "replies": 1.0, "num_turns": 1.0}


def test_failures_name_the_problem(envs, tiny_model_path):
    from transformers import AutoTokenizer

    with pytest.raises(EnvError, match=r"vf-v1-no-such-env.*module 'vf_v1_no_such_env'.*pip install"):
        make_env("vf-v1-no-such-env")
    with pytest.raises(EnvError, match=r"bad \[\[env\]\] args \(taskset.num_taskz: .*accepts: .*num_tasks, followups"):
        make_env(ENV_ID, {"num_taskz": 3})
    env = envs()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    with pytest.raises(RuntimeError, match=rf"environment '{ENV_ID}': generation failed: replica 0 is unreachable"):
        env.play(requests(env, tokenizer, examples=1, samples=2), Failing(tokenizer))


# ---- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_v1_environment_trains_end_to_end(ray_cluster, small_config, tmp_path):
    """Two GRPO steps on real Ray: rollout workers serve the endpoint over the replicas, rewards are
    reported per environment, and the learner's log-probs of the rollouts' tokens are the behaviour
    log-probs (mismatch KL ~ 0: the learner trains on exactly the tokens the endpoint returned)."""
    from rayrl.driver import train
    from rayrl.tracking import read_metrics

    cfg = small_config(
        tmp_path, max_steps=2, batch_size=32, rollouts_per_example=8, seq_len=32, warmstart={"enabled": False},
        sampling={"max_tokens": 3, "temperature": 1.0},
        env=[{"id": ENV_ID, "path": str(VF_ENVS_V1), "args": {"num_tasks": 40}}],
        eval={"interval": 2, "num_examples": 4}, ckpt={"interval": 0},
    )
    steps = [m for m in read_metrics(train(cfg).output_dir / "metrics.jsonl") if m["step"] > 0]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert m[f"reward/{ENV_ID}/samples"] == 32
        assert {f"reward/{ENV_ID}/reward_mean", f"reward/{ENV_ID}/starts_with_digit",
                f"reward/{ENV_ID}/exact_answer"} <= m.keys()  # fmt: skip
    assert f"eval/{ENV_ID}/reward_mean" in steps[-1]
    trained = [m for m in steps if m["train_samples"] > 0]
    assert trained and trained[0]["mismatch_kl"] < 1e-4
