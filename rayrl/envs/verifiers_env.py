"""verifiers environments (classic API, verifiers 0.3.x) played through rayrl's own inference replicas.

``[[env]] id = "<id>"`` (or ``"verifiers:<id>"``) loads ``verifiers.load_environment(id, **args)``: the
installed module ``id.split("/")[-1].replace("-", "_")`` and its ``load_environment``. The module must
be importable by every process (driver and rollout workers): install its package, or name its folder
in ``[[env]] path`` (rayrl puts it on ``sys.path`` in every process that builds the environment).

Splits. ``train`` is the env's ``dataset``; ``eval`` is its ``eval_dataset``. Without an ``eval_dataset``,
``eval`` is a held-out slice of ``dataset``: a permutation with seed 0, its first 10% of rows (at least
1, at most 1000), and ``train`` is the rest. Example ids are ``dataset-<example_id>`` or
``eval_dataset-<example_id>`` (verifiers' row index), so they are stable across runs.
``Example.prompt`` is the prompt in the plain template of :mod:`rayrl.envs.verifiers_client` (what the
model reads when its tokenizer has no chat template); ``Example.info["row"]`` is the dataset row.

Playing. ``play`` runs every requested rollout through ``vf_env.run_group`` (one group per example, so
group reward functions see the whole group) with a :class:`~rayrl.envs.verifiers_client.RayrlClient`.
Each result carries verifiers' reward and the rubric's named metrics; its tokens are the engine's own
(see the client's docstring). ``finish_reason`` is the last model turn's ("stop"/"length"), "length"
when the rollout ran out of ``seq_len``, "max_turns" when a multi-turn env hit its ``max_turns``, and
"error" when verifiers recorded an error for the rollout (logged; its reward is what the rubric gave).
Sampling settings (temperature, top_p) are rayrl's ``[sampling]``; an env's ``max_tokens`` sampling
argument further caps a turn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import importlib
import inspect
import logging
import signal
import threading
from typing import Any, Callable, Coroutine, Iterator, TypeVar

import numpy as np
import verifiers as vf

if not hasattr(vf, "SingleTurnEnv"):  # verifiers >= 0.4 dropped the classic API (rayrl.envs.registry routes it)
    raise ImportError(
        f"rayrl.envs.verifiers_env plays verifiers 0.3 (the classic API); verifiers {vf.__version__} is installed, "
        "whose verifiers.v1 environments rayrl plays with rayrl.envs.verifiers_v1"
    )

from rayrl.envs.base import Environment, EpisodeRequest, EpisodeResult, Example, Generator, Split
from rayrl.envs.ids import VERIFIERS_PREFIX, unknown_id_message
from rayrl.envs.verifiers_client import MODEL_NAME, RayrlClient, Renderer, Transcript, TurnBatcher, plain_chat
from rayrl.errors import EnvError

log = logging.getLogger(__name__)
HELD_OUT_FRACTION, HELD_OUT_MAX, HELD_OUT_SEED = 0.1, 1000, 0
UNBOUNDED_TURNS = 1_000_000  # a verifiers max_turns <= 0 means no limit; seq_len still ends a rollout
T = TypeVar("T")


# ---- loading -----------------------------------------------------------------------------------
def load_verifiers_env(name: str, args: dict[str, Any], explicit: bool = False) -> "VerifiersEnv":
    """The verifiers environment ``name`` built with ``args``; errors name the id, argument and fix."""
    env_id = VERIFIERS_PREFIX + name if explicit else name
    module = import_env_module(name, env_id)
    load = getattr(module, "load_environment", None)
    if not callable(load):
        raise EnvError(f"verifiers environment '{env_id}': module '{module.__name__}' has no load_environment()")
    check_args(env_id, load, args)
    with kept_signal_handlers(), quiet_datasets():  # verifiers installs SIGINT/SIGTERM handlers; rayrl keeps its own
        try:
            vf_env = vf.load_environment(name, **args)
        except Exception as e:
            cause = e.__cause__ or e
            raise EnvError(f"verifiers environment '{env_id}': load_environment failed: {cause}") from e
    if not isinstance(vf_env, vf.Environment):
        raise EnvError(
            f"verifiers environment '{env_id}': load_environment returned {type(vf_env).__name__}, not a "
            "verifiers Environment (rayrl supports the classic API: vf.SingleTurnEnv, vf.MultiTurnEnv, vf.ToolEnv)"
        )
    return VerifiersEnv(env_id, vf_env)


def import_env_module(name: str, env_id: str):
    """The module verifiers would import for ``name``; a missing module gives the registry's message."""
    from verifiers.utils.env_utils import env_module_name

    module_name = env_module_name(name)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise EnvError(unknown_id_message(env_id, verifiers_installed=True)) from e
        raise EnvError(
            f"verifiers environment '{env_id}' (module '{module_name}') needs module '{e.name}', which is not "
            f"installed; install the environment's dependencies (pip install {e.name.split('.')[0]})"
        ) from e


def check_args(env_id: str, load: Callable, args: dict[str, Any]) -> None:
    """Raise EnvError naming unknown or missing arguments of ``load`` and the accepted ones."""
    params = inspect.signature(load).parameters
    named = [p for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    accepted = ", ".join(p.name for p in named) or "(no arguments)"
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in args if k not in {p.name for p in named}]
        if unknown:
            raise EnvError(
                f"verifiers environment '{env_id}' got unknown argument(s) {', '.join(map(repr, unknown))}; "
                f"its load_environment accepts: {accepted}"
            )
    missing = [p.name for p in named if p.default is p.empty and p.name not in args]
    if missing:
        raise EnvError(
            f"verifiers environment '{env_id}' needs argument(s) {', '.join(map(repr, missing))} in [[env]] args; "
            f"its load_environment accepts: {accepted}"
        )


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars (verifiers maps its datasets when it builds them)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


class kept_signal_handlers:
    """Restore SIGINT/SIGTERM handlers on exit (only the main thread can set them)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        self.saved = {s: signal.getsignal(s) for s in self.SIGNALS} if main else {}

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.saved.items():
            if handler is not None:
                signal.signal(sig, handler)


# ---- the environment ---------------------------------------------------------------------------
class VerifiersEnv(Environment):
    """A verifiers environment as a rayrl Environment: examples from its datasets, episodes by ``play``."""

    def __init__(self, env_id: str, vf_env: "vf.Environment"):
        self.id, self.vf_env = env_id, vf_env
        turns = getattr(vf_env, "max_turns", 1)
        self.max_turns = turns if turns > 0 else UNBOUNDED_TURNS
        self._examples: dict[str, list[Example]] | None = None

    def examples(self, split: Split) -> list[Example]:
        if self._examples is None:
            with quiet_datasets():
                self._examples = self._build_examples()
        return self._examples[split]

    def _build_examples(self) -> dict[str, list[Example]]:
        train = self.vf_env.build_dataset()
        evaluation = self.vf_env.build_eval_dataset()
        if train is None:
            raise EnvError(f"verifiers environment '{self.id}' has no train dataset; rayrl needs one to train on")
        train_rows = [("dataset", r) for r in train.to_list()]
        if evaluation is not None:
            eval_rows = [("eval_dataset", r) for r in evaluation.to_list()]
        else:
            train_rows, eval_rows = held_out_split(train_rows, self.id)
        return {"train": [self._example(*r) for r in train_rows], "eval": [self._example(*r) for r in eval_rows]}

    def _example(self, source: str, row: dict[str, Any]) -> Example:
        return Example(
            id=f"{source}-{row['example_id']}",
            prompt=plain_chat(row["prompt"], row_tools(self.vf_env, row)),
            answer=str(row.get("answer") or ""),
            info={"row": row},
        )

    def play(self, requests: list[EpisodeRequest], generator: Generator) -> list[EpisodeResult]:
        """Play every request through verifiers' rollout loop; one result per request, in order."""
        if not requests:
            return []
        first_prompts = self._first_prompts(requests, generator)
        outputs, client = run_coroutine(self._play(requests, generator, first_prompts))
        results = [
            episode_result(r, out, client.transcripts.get(out.get("trajectory_id")), self.max_turns)
            for r, out in zip(requests, outputs)
        ]
        log_errors(self.id, requests, outputs)
        return results

    def _first_prompts(self, requests: list[EpisodeRequest], generator: Generator) -> dict[str, list[int]]:
        """Rendered first-turn text -> token ids; the worker's ids where the text is ``Example.prompt``.
        Raises ValueError for a prompt that leaves no room under ``seq_len`` (like the rollout worker)."""
        renderer, out = Renderer(generator.tokenizer), {}
        for r in requests:
            row = r.example.info["row"]
            text = renderer.prompt(row["prompt"], row_tools(self.vf_env, row))
            if text not in out:
                out[text] = list(r.prompt_ids) if text == r.example.prompt else renderer.encode_prompt(text)
            if len(out[text]) >= generator.seq_len:
                raise ValueError(
                    f"environment '{self.id}', example {r.example.id}: the rendered prompt is {len(out[text])} "
                    f"tokens, leaving no room under seq_len = {generator.seq_len}; raise seq_len"
                )
        return out

    async def _play(
        self, requests: list[EpisodeRequest], generator: Generator, first_prompts: dict[str, list[int]]
    ) -> tuple[list[dict], RayrlClient]:
        batcher = TurnBatcher(generator, len(requests))
        client = RayrlClient(generator, batcher, first_prompts)
        sampling_args = copy.deepcopy(self.vf_env.sampling_args)
        groups = group_by_example(requests)
        server = asyncio.create_task(batcher.run())

        async def run_group(indices: list[int]) -> list[dict]:
            inputs = [copy.deepcopy(requests[i].example.info["row"]) for i in indices]
            outputs = await self.vf_env.run_group(
                inputs, client, MODEL_NAME, sampling_args, state_columns=["trajectory_id"]
            )
            batcher.ended_unstarted(sum(o.get("trajectory_id") not in client.transcripts for o in outputs))
            return outputs

        try:
            grouped = await asyncio.gather(*(run_group(g) for g in groups))
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
        if batcher.failure is not None:
            raise RuntimeError(f"environment '{self.id}': generation failed: {batcher.failure}") from batcher.failure
        outputs: list[dict] = [{}] * len(requests)
        for indices, group_outputs in zip(groups, grouped):
            for i, out in zip(indices, group_outputs):
                outputs[i] = out
        return outputs, client


# ---- helpers -----------------------------------------------------------------------------------
def row_tools(vf_env: "vf.Environment", row: dict[str, Any]) -> list[Any] | None:
    """The tools a rollout of ``row`` sees, resolved as verifiers' ``init_state`` does."""
    info = row.get("info")
    if isinstance(info, dict) and info.get("tool_defs"):
        return info["tool_defs"]
    return vf_env.tool_defs or None


def held_out_split(rows: list[T], env_id: str) -> tuple[list[T], list[T]]:
    """(train, eval): a seeded permutation's first 10% (1 to 1000 rows) is eval, in dataset order."""
    if len(rows) < 2:
        raise EnvError(
            f"verifiers environment '{env_id}' has {len(rows)} row(s) and no eval_dataset; rayrl holds out "
            "part of the dataset for eval, so it needs at least 2 rows (or give the env an eval_dataset)"
        )
    size = min(HELD_OUT_MAX, max(1, round(len(rows) * HELD_OUT_FRACTION)))
    held = set(np.random.default_rng(HELD_OUT_SEED).permutation(len(rows))[:size].tolist())
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def group_by_example(requests: list[EpisodeRequest]) -> list[list[int]]:
    """Request indices grouped by example id, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.example.id, []).append(i)
    return list(groups.values())


def episode_result(
    request: EpisodeRequest, output: dict[str, Any], transcript: Transcript | None, max_turns: int
) -> EpisodeResult:
    """The EpisodeResult of one verifiers rollout output and the client's transcript of its tokens."""
    result = transcript.result if transcript is not None else EpisodeResult(prompt_ids=list(request.prompt_ids))
    result.reward = float(output.get("reward") or 0.0)
    metrics = output.get("metrics") or {}
    result.metrics = {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    stop = output.get("stop_condition")
    if output.get("error"):
        result.finish_reason = "error"
    elif stop == "prompt_too_long":
        result.finish_reason = "length"
    elif stop == "max_turns_reached" and max_turns > 1:
        result.finish_reason = "max_turns"
    else:
        result.finish_reason = transcript.last_finish if transcript is not None else "stop"
    return result


def log_errors(env_id: str, requests: list[EpisodeRequest], outputs: list[dict[str, Any]]) -> None:
    """One warning for the rollouts verifiers recorded an error for."""
    failed = [(r.example.id, o["error"]) for r, o in zip(requests, outputs) if o.get("error")]
    if failed:
        example, error = failed[0]
        message = error.get("error_chain_str") or error.get("message") if isinstance(error, dict) else error
        log.warning(
            "environment '%s': %d of %d rollouts ended with an error; first (example %s): %s",
            env_id, len(failed), len(requests), example, message,
        )


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code, also when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
