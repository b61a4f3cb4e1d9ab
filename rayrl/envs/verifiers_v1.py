"""verifiers 0.4 environments (the ``verifiers.v1`` API) played through rayrl's inference replicas over HTTP.

``[[env]] id = "<taskset id>"`` (or ``"verifiers:<taskset id>"``) with verifiers >= 0.4 installed builds
the v1 environment of that taskset, as ``vf-eval <id>`` does: ``vf.resolve_env_config({"taskset": {"id":
id, **args}})`` then ``vf.load_environment`` (the taskset's own ``Env``, else ``SingleAgentEnv``; its
harness is the one the taskset exports, else verifiers' ``bash``). ``args`` are the taskset's config
fields; the key ``env`` holds further ``EnvConfig`` fields (``env = { agent = { harness = { id = "null" }
} }``). Agents run in verifiers' ``subprocess`` runtime unless ``env`` names another one (verifiers'
default is Prime's hosted sandboxes). The taskset package must be importable by every process (install
it, or name its folder in ``[[env]] path``).

Splits. v1 tasksets have one stream of tasks: ``eval`` is a held-out slice (a permutation with seed 0,
its first 10% of tasks, at least 1, at most 1000) and ``train`` the rest. Example ids are the tasks'
``TaskData.id`` when every task has a distinct one, else ``task-<idx>``; ``Example.answer`` is the data's
``answer`` field when it has one (for the supervised warm-start); ``Example.prompt`` is the first
prompt in rayrl's plain template.

Playing. ``play`` starts a :class:`~rayrl.envs.endpoint.ModelEndpoint` on 127.0.0.1 over the replicas
and runs every request as one verifiers episode (``env.run_slot``) with verifiers' training client
(``vf.TrainClientConfig``): verifiers renders each prompt to token ids with the run's tokenizer and chat
template (the ``renderers`` package, as prime-rl does) and calls the endpoint's
``/inference/v1/generate``, which samples exactly those ids. The episode's trace holds the message
graph with every node's token ids, the sampled mask and the sampling log-probs (what prime-rl trains
on): the rollout is the trace's branch, prompt = the tokens before the first sampled token, and every
sampled span is checked against what the endpoint returned (its ids, log-probs and policy version).
Reward = the trace's weighted rewards; metrics = each named reward's score, the trace's metrics and
``num_turns``. ``finish_reason``: the last model call's ("stop"/"length"), "length" when the context
ran out of ``seq_len``, "error" when verifiers recorded an error (logged; the rollout keeps what the
rewards gave). A tokenizer without a chat template reads rayrl's plain template (a copy of the
tokenizer with it as its chat template is saved for verifiers' renderer).
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import logging
import shutil
import tempfile
import threading
from typing import Any, Coroutine, TypeVar

import numpy as np
import verifiers.v1 as vf

from rayrl.config.loading import deep_merge
from rayrl.envs.base import Environment, EpisodeRequest, EpisodeResult, Example, Generator, Sampled, Split
from rayrl.envs.endpoint import PLAIN_CHAT_TEMPLATE, ModelEndpoint
from rayrl.envs.ids import VERIFIERS_PREFIX, unknown_id_message
from rayrl.errors import EnvError

log = logging.getLogger(__name__)
MODEL_NAME = "rayrl"
API_KEY_VAR = "RAYRL_ENDPOINT_API_KEY"  # verifiers reads the key from this variable; the endpoint needs none
HELD_OUT_FRACTION, HELD_OUT_MAX, HELD_OUT_SEED = 0.1, 1000, 0
OVERLONG_MARKERS = ("maximum context length", "OverlongPrompt", "exceeds maximum context length")
T = TypeVar("T")


# ---- loading -----------------------------------------------------------------------------------
def load_verifiers_v1_env(name: str, args: dict[str, Any], explicit: bool = False) -> "VerifiersV1Env":
    """The v1 environment of taskset ``name`` configured by ``args``; errors name the id, field and fix."""
    env_id = VERIFIERS_PREFIX + name if explicit else name
    args = dict(args)
    extra = args.pop("env", None) or {}
    if not isinstance(extra, dict):
        raise EnvError(f"verifiers environment '{env_id}': args.env must be a table of EnvConfig fields")
    data = deep_merge(copy.deepcopy({"taskset": {"id": name, **args}}), extra)
    config = resolve_config(env_id, name, data)
    from verifiers.v1.configs.agent import agent_config_fields

    roles = [r for r in agent_config_fields(config) if "runtime" not in (extra.get(r) or {})]
    if roles:  # verifiers' default runtime is Prime's hosted sandbox; rayrl's workers run agents locally
        local = {r: {"runtime": {"type": "subprocess"}} for r in roles}
        config = resolve_config(env_id, name, deep_merge(copy.deepcopy(data), local))
    try:
        env = vf.load_environment(config)
    except Exception as e:
        raise EnvError(f"verifiers environment '{env_id}': load_environment failed: {e}") from e
    return VerifiersV1Env(env_id, env)


def resolve_config(env_id: str, name: str, data: dict[str, Any]):
    from pydantic import ValidationError

    try:
        return vf.resolve_env_config(copy.deepcopy(data))
    except ModuleNotFoundError as e:
        module = name.rsplit("/", 1)[-1].split("@", 1)[0].replace("-", "_").lower()
        if module in str(e):
            raise EnvError(unknown_id_message(env_id, verifiers_installed=True)) from e
        raise EnvError(f"verifiers environment '{env_id}' needs a module that is not installed: {e}") from e
    except ValidationError as e:
        fields = accepted_fields(name)
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise EnvError(
            f"verifiers environment '{env_id}': bad [[env]] args ({problems}); the taskset accepts: {fields}"
        ) from e
    except (TypeError, ValueError, AttributeError) as e:
        raise EnvError(f"verifiers environment '{env_id}': {e}") from e


def accepted_fields(name: str) -> str:
    try:
        cls = vf.taskset_config_type(name)
    except Exception:  # noqa: BLE001 - only for the error message
        return "(unknown)"
    return ", ".join(f for f in cls.model_fields if f != "id") + " (and env = {...} for EnvConfig fields)"


# ---- the environment ---------------------------------------------------------------------------
class VerifiersV1Env(Environment):
    """A verifiers v1 environment as a rayrl Environment: examples from its taskset, episodes by ``play``."""

    max_turns = 1_000_000  # the environment's harness decides; seq_len ends a rollout

    def __init__(self, env_id: str, env: "vf.Env"):
        self.id, self.env = env_id, env
        self._tasks: dict[str, Any] | None = None
        self._examples: dict[str, list[Example]] | None = None
        self._endpoint: ModelEndpoint | None = None

    def examples(self, split: Split) -> list[Example]:
        if self._examples is None:
            self._build_examples()
        return self._examples[split]

    def _build_examples(self) -> None:
        tasks = list(self.env.taskset)
        if len(tasks) < 2:
            raise EnvError(
                f"verifiers environment '{self.id}' has {len(tasks)} task(s); rayrl holds out part of the "
                "taskset for eval, so it needs at least 2"
            )
        ids = [t.data.id for t in tasks]
        if not all(ids) or len(set(ids)) != len(ids):
            ids = [f"task-{t.data.idx}" for t in tasks]
        self._tasks = dict(zip(ids, tasks))
        examples = [self._example(i, t) for i, t in zip(ids, tasks)]
        size = min(HELD_OUT_MAX, max(1, round(len(examples) * HELD_OUT_FRACTION)))
        held = set(np.random.default_rng(HELD_OUT_SEED).permutation(len(examples))[:size].tolist())
        self._examples = {
            "train": [e for i, e in enumerate(examples) if i not in held],
            "eval": [e for i, e in enumerate(examples) if i in held],
        }

    @staticmethod
    def _example(example_id: str, task: Any) -> Example:
        answer = getattr(task.data, "answer", None)
        return Example(id=example_id, prompt=plain_prompt(task.data), answer="" if answer is None else str(answer),
                       info={"idx": task.data.idx})  # fmt: skip

    def play(self, requests: list[EpisodeRequest], generator: Generator) -> list[EpisodeResult]:
        """Play every request as one verifiers episode against the endpoint; one result per request, in order."""
        if not requests:
            return []
        if self._tasks is None:
            self._build_examples()
        if self._endpoint is None:  # one endpoint for the life of the environment
            self._endpoint = ModelEndpoint(generator, MODEL_NAME).start()
        endpoint = self._endpoint
        endpoint.use(generator)
        renderer_dir, renderer = renderer_tokenizer(generator.tokenizer)
        episodes = LoopThread.shared().run(self._play(requests, endpoint, renderer_dir, renderer))
        if endpoint.failure is not None:
            raise RuntimeError(f"environment '{self.id}': generation failed: {endpoint.failure}") from endpoint.failure
        results = [episode_result(r, e, endpoint) for r, e in zip(requests, episodes)]
        log_errors(self.id, requests, episodes)
        return results

    async def _play(self, requests: list[EpisodeRequest], endpoint: ModelEndpoint, renderer_dir: str,
                    renderer: Any) -> list[Any]:  # fmt: skip
        from verifiers.v1.env import RunSlot

        client = vf.TrainClientConfig(base_url=endpoint.base_url, api_key_var=API_KEY_VAR,
                                      renderer_model_name=renderer_dir, renderer=renderer)  # fmt: skip
        sampling = vf.Sampling(max_tokens=endpoint.generator.max_tokens)
        ctx = vf.ModelContext(model=MODEL_NAME, client=client, sampling=sampling)

        async def run(request: EpisodeRequest) -> Any:
            try:
                return await self.env.run_slot(RunSlot(self._tasks[request.example.id]), ctx)
            finally:
                endpoint.live -= 1  # a finished episode sends nothing more: the others' turns need not wait

        endpoint.live = len(requests)
        try:
            async with self.env.serving():
                return await asyncio.gather(*(run(r) for r in requests))
        finally:
            endpoint.live = None

    def close(self) -> None:
        """Stop the endpoint (a daemon thread: a process exit also ends it)."""
        if self._endpoint is not None:
            self._endpoint.stop()
        self._endpoint = None


class LoopThread:
    """An event loop in a daemon thread. verifiers and its renderers keep process-wide, loop-bound state
    (asyncio locks, renderer pools) between episodes, so every ``play`` of every v1 environment of the
    process runs on one shared loop (:meth:`shared`)."""

    _shared: "LoopThread | None" = None
    _lock = threading.Lock()

    @classmethod
    def shared(cls) -> "LoopThread":
        with cls._lock:
            if cls._shared is None or not cls._shared.thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rayrl-verifiers-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


# ---- helpers -----------------------------------------------------------------------------------
def plain_prompt(data: Any) -> str:
    """The first prompt in rayrl's plain template (``role: content`` lines, then ``assistant: ``)."""
    messages = []
    if data.system_prompt:
        messages.append(("system", data.system_prompt))
    if isinstance(data.prompt, str):
        messages.append(("user", data.prompt))
    else:
        for m in data.prompt or []:
            content = m.content if isinstance(m.content, str) else " ".join(
                getattr(p, "text", "") for p in m.content or [] if getattr(p, "type", "") == "text"
            )
            messages.append((m.role, content or ""))
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant: "


_RENDERER_DIRS: dict[str, str] = {}


def renderer_tokenizer(tokenizer: Any) -> tuple[str, Any]:
    """(folder, renderer config) for verifiers' renderer: the model's own folder when its tokenizer has a
    chat template, else a copy of the tokenizer with rayrl's plain template (verifiers' default renderer)."""
    path = str(getattr(tokenizer, "name_or_path", "") or "")
    if getattr(tokenizer, "chat_template", None) and path:
        return path, None
    from renderers.configs import DefaultRendererConfig

    if path not in _RENDERER_DIRS:
        folder = tempfile.mkdtemp(prefix="rayrl-renderer-")
        atexit.register(shutil.rmtree, folder, True)
        plain = copy.deepcopy(tokenizer)
        plain.chat_template = PLAIN_CHAT_TEMPLATE
        plain.save_pretrained(folder)
        _RENDERER_DIRS[path] = folder
    return _RENDERER_DIRS[path], DefaultRendererConfig()


def episode_result(request: EpisodeRequest, episode: Any, endpoint: ModelEndpoint) -> EpisodeResult:
    """The EpisodeResult of one verifiers episode: its (last) trace's branch, rewards and metrics."""
    traces = list(episode.traces)
    trace = traces[-1] if traces else None
    result = EpisodeResult(prompt_ids=list(request.prompt_ids))
    if trace is None:
        result.finish_reason = "error"
        return result
    branches = [b for b in trace.branches if b.trainable and any(b.sampled_mask)]
    if branches:
        fill_tokens(result, branches[-1], endpoint)
    result.reward = float(trace.reward)
    metrics = {name: float(r.score) for name, r in trace.rewards.items() if r is not None}
    metrics.update({str(k): float(v) for k, v in trace.metrics.items() if isinstance(v, (int, float))})
    metrics["num_turns"] = float(trace.num_turns)
    result.metrics = metrics
    result.finish_reason = finish_reason(episode, trace)
    return result


def fill_tokens(result: EpisodeResult, branch: Any, endpoint: ModelEndpoint) -> None:
    """Tokens of ``branch`` into ``result``; each sampled span must be what the endpoint returned."""
    ids, mask, logprobs = list(branch.token_ids), list(branch.sampled_mask), list(branch.logprobs)
    first = mask.index(True)
    result.prompt_ids = ids[:first]
    start = first
    while start < len(ids):
        end = start
        while end < len(ids) and mask[end] == mask[start]:
            end += 1
        if mask[start]:
            sampled = endpoint.sampled.get((tuple(ids[:start]), tuple(ids[start:end])))
            if sampled is None:
                raise RuntimeError(
                    "a verifiers trace holds model tokens the endpoint did not sample (prompt of "
                    f"{start} tokens, {end - start} sampled): the trace's tokens were re-tokenised"
                )
            # the engine's own log-probs (the trace carries the same numbers through JSON)
            result.add_model_turn(Sampled(sampled.completion, sampled.version), "")
        else:
            result.add_environment_turn(ids[start:end], "")
        start = end
    tokenizer = endpoint.generator.tokenizer
    result.completion = tokenizer.decode(result.completion_ids, skip_special_tokens=True)
    if len(logprobs) != len(ids):
        raise RuntimeError("a verifiers branch's log-probs do not line up with its tokens")


def finish_reason(episode: Any, trace: Any) -> str:
    errors = [*trace.errors, *episode.errors]
    if errors:
        text = " ".join(f"{e.type}: {e.message}" for e in errors)
        return "length" if any(m in text for m in OVERLONG_MARKERS) else "error"
    if trace.is_truncated:
        return "length"
    calls = [c for c in trace.calls if c.finish_reason]
    last = calls[-1].finish_reason if calls else "stop"
    return "length" if last == "length" else "stop"


def log_errors(env_id: str, requests: list[EpisodeRequest], episodes: list[Any]) -> None:
    """One warning for the episodes verifiers recorded an error for."""
    failed = []
    for r, e in zip(requests, episodes):
        errors = [*e.errors, *(err for t in e.traces for err in t.errors)]
        if errors:
            failed.append((r.example.id, errors[-1]))
    if failed:
        example, error = failed[0]
        log.warning("environment '%s': %d of %d rollouts ended with an error; first (example %s): %s: %s",
                    env_id, len(failed), len(requests), example, error.type, error.message)  # fmt: skip
