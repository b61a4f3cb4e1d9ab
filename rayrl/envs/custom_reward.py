"""Custom reward functions: ``[[env]] reward = "path/to/file.py:function"`` or ``"package.module:function"``.

The function replaces the environment's own scoring of single-turn completions::

    def my_reward(prompt: str, completion: str, answer: str, info: dict) -> float | dict[str, float]: ...

It is called by name when it names its parameters that way (so ``def f(completion, answer, **kwargs)``
works too), else by position. A dict return is a reward with named metrics: its ``"reward"`` key is
the reward, or the sum of its values when there is none; every other key is logged as a metric.
``info`` is the example's own dict: read it, do not change it.

A call that raises, returns anything but a finite number (or a dict of them), or runs longer than
``timeout_s`` scores 0 for that sample and the run goes on: the turn carries ``reward_error`` (see
``EpisodeResult.reward_error``) and a warning names the environment and the example. A timed-out
call cannot be killed: its thread is abandoned (daemon, so it never blocks exit) and a fresh one
serves the next calls; while ``MAX_HUNG_CALLS`` are still running, further calls are skipped.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

from rayrl.envs.base import Environment, Episode, Example, Split, Turn, drives_generation, split_score
from rayrl.config.loading import find_reward_file, is_reward_file, reward_file_candidates
from rayrl.errors import RewardFunctionError

log = logging.getLogger(__name__)

RewardFn = Callable[[str, str, str, dict], Any]
PARAMETERS = ("prompt", "completion", "answer", "info")
MAX_HUNG_CALLS = 8  # abandoned calls still running at once before further calls are skipped
LOGGED_FAILURES = 20  # failures logged one by one per environment; after that, every 100th


# ---- loading ------------------------------------------------------------------------------------
def load_reward_function(spec: str, base_dir: Path | None = None) -> RewardFn:
    """The function named by ``spec``, callable as ``fn(prompt, completion, answer, info)``.

    ``spec`` is ``"file.py:function"`` (a relative path is looked up under ``base_dir``, the
    experiment file's folder, then the working directory) or ``"package.module:function"``.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise RewardFunctionError(
            f"reward {spec!r}: expected 'path/to/file.py:function' or 'package.module:function' (with a ':')"
        )
    if is_reward_file(target):
        path = find_reward_file(target, base_dir)
        if path is None:
            tried = ", ".join(str(p) for p in reward_file_candidates(target, base_dir))
            raise RewardFunctionError(f"reward {spec!r}: file not found; tried {tried}")
        module = _import_file(spec, path)
    else:
        module = _import(spec, target)
    if not hasattr(module, name):
        defined = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__]
        raise RewardFunctionError(
            f"reward {spec!r}: {target} has no attribute '{name}'; its functions: {', '.join(defined) or '(none)'}"
        )
    return as_reward_call(getattr(module, name), spec)


def _import_file(spec: str, path: Path) -> Any:
    module_name = f"rayrl_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:  # every environment using one file shares one module
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardFunctionError(f"reward {spec!r}: cannot import {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up there
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise RewardFunctionError(f"reward {spec!r}: importing {path} raised {_describe(e, str(path))}") from e
    return module


def _import(spec: str, name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):  # the module itself (or a parent package) is missing
            raise RewardFunctionError(
                f"reward {spec!r}: no module named '{e.name}' (is its package installed, or its folder on "
                "PYTHONPATH?); for a file write a path ending in .py"
            ) from e
        raise RewardFunctionError(f"reward {spec!r}: importing {name} raised {_describe(e, None)}") from e
    except Exception as e:
        raise RewardFunctionError(f"reward {spec!r}: importing {name} raised {_describe(e, None)}") from e


def _describe(e: BaseException, filename: str | None) -> str:
    """``ZeroDivisionError: division by zero (line 3)``: the error and the failing line of ``filename``."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if filename is None or f.filename == filename]
    where = f" (line {lines[-1]})" if lines and filename else ""
    return f"{type(e).__name__}: {e}{where}"


def as_reward_call(fn: Any, spec: str) -> RewardFn:
    """``fn`` as a callable taking (prompt, completion, answer, info) by position, or RewardFunctionError."""
    if not callable(fn):
        raise RewardFunctionError(f"reward {spec!r}: {type(fn).__name__} {fn!r:.60} is not callable")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: trust them
        return fn
    params = signature.parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if tuple(positional[:4]) == PARAMETERS and _binds(signature, *PARAMETERS):
        return fn  # the documented signature: called as is
    named = any(p in signature.parameters for p in PARAMETERS)
    if named and _binds(signature, **dict.fromkeys(PARAMETERS)):  # e.g. (completion, answer, **kwargs)
        def by_name(prompt: str, completion: str, answer: str, info: dict) -> Any:
            return fn(prompt=prompt, completion=completion, answer=answer, info=info)

        by_name.__qualname__ = getattr(fn, "__qualname__", "reward")
        return by_name
    if _binds(signature, *PARAMETERS):
        return fn
    raise RewardFunctionError(
        f"reward {spec!r}: {getattr(fn, '__qualname__', fn)}{signature} must accept (prompt, completion, answer, "
        "info), by position or by these names (**kwargs may take the ones it ignores)"
    )


def _binds(signature: inspect.Signature, *args: Any, **kwargs: Any) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


# ---- scoring ------------------------------------------------------------------------------------
class RewardOverride(Environment):
    """``env`` with its single-turn completions scored by ``fn`` instead of ``env.score``.

    Examples, ids and the warm-start completion come from ``env``. ``timeout_s <= 0`` calls ``fn``
    inline (no thread, no time limit): the cheapest path, for functions that cannot hang.
    """

    def __init__(self, env: Environment, fn: Callable, timeout_s: float = 5.0, spec: str = ""):
        plays_itself = drives_generation(env)
        if plays_itself or env.max_turns > 1:
            why = "plays its own episodes" if plays_itself else f"has max_turns = {env.max_turns}"
            raise RewardFunctionError(
                f"environment '{env.id}': a custom reward scores single-turn completions, but this environment {why}"
            )
        self.env, self.timeout_s = env, timeout_s
        self.spec = spec or getattr(fn, "__qualname__", repr(fn))
        self.fn = as_reward_call(fn, self.spec)
        self.id, self.max_turns = env.id, 1
        self.failures = 0
        self._runners = threading.local()  # one runner per calling thread: callers never queue behind each other

    def examples(self, split: Split) -> list[Example]:
        return self.env.examples(split)

    def sft_completion(self, example: Example) -> str:
        return self.env.sft_completion(example)

    def start(self, example: Example) -> Episode:
        return RewardEpisode(self, example)

    def score(self, example: Example, completion: str) -> dict[str, float] | float:
        """The reward function's score, or 0.0 when it failed (logged)."""
        turn = self.turn(example, completion)
        return 0.0 if "reward_error" in turn.metrics else {"reward": turn.reward, **turn.metrics}

    def turn(self, example: Example, completion: str) -> Turn:
        """The finished turn ``fn`` scores; a failure scores 0 with metric ``reward_error`` (a string)."""
        args = (example.prompt, completion, example.answer, example.info)
        try:
            result = self.fn(*args) if self.timeout_s <= 0 else self._runner().call(self.fn, args, self.timeout_s)
        except CallTimeout as e:
            return self._failed(example, str(e))
        except Exception as e:
            return self._failed(example, f"raised {type(e).__name__}: {e}")
        try:
            reward, metrics = split_score(result)
        except TypeError as e:
            return self._failed(example, f"bad return value: {e}")
        return Turn(done=True, reward=reward, metrics=metrics)

    def _runner(self) -> "CallRunner":
        runner = getattr(self._runners, "runner", None)
        if runner is None or runner.abandoned:
            runner = self._runners.runner = CallRunner()
        return runner

    def _failed(self, example: Example, reason: str) -> Turn:
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        self.failures += 1
        if self.failures <= LOGGED_FAILURES or self.failures % 100 == 0:
            more = " (further failures are logged once per 100)" if self.failures == LOGGED_FAILURES else ""
            log.warning(
                "reward function %s of environment '%s' failed on example %s, scored 0 (failure %d): %s%s",
                self.spec, self.id, example.id, self.failures, reason, more,
            )
        return Turn(done=True, reward=0.0, metrics={"reward_error": reason})  # type: ignore[dict-item]


class RewardEpisode(Episode):
    """One turn, scored by the override's reward function."""

    def __init__(self, env: RewardOverride, example: Example):
        self.env, self.example = env, example

    def step(self, completion: str) -> Turn:
        return self.env.turn(self.example, completion)


# ---- calls with a time limit --------------------------------------------------------------------
class CallTimeout(Exception):
    """A call not answered in time (or not made while too many earlier ones still hang)."""


class CallRunner:
    """One daemon thread that runs the calls handed to it, while the caller waits at most a timeout.

    A call that times out leaves the thread busy: the caller marks the runner ``abandoned``, queues a
    stop sign behind the call (the thread exits once the call returns, if ever) and makes a new runner.
    """

    hung = 0  # abandoned calls still running, over all runners of this process
    _hung_lock = threading.Lock()

    def __init__(self):
        self.abandoned = False
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="rayrl-reward", daemon=True).start()

    def call(self, fn: Callable, args: tuple, timeout_s: float) -> Any:
        if CallRunner.hung >= MAX_HUNG_CALLS:
            raise CallTimeout(f"not called: {CallRunner.hung} earlier calls still run past their timeout")
        done = threading.Lock()  # released by the thread once ``box`` holds the outcome
        done.acquire()
        box: list = []
        self._calls.put((fn, args, box, done))
        if not done.acquire(timeout=timeout_s):
            self.abandoned = True
            with CallRunner._hung_lock:
                CallRunner.hung += 1
            self._calls.put(None)
            raise CallTimeout(f"timed out after {timeout_s:g} s")
        ok, value = box
        if not ok:
            raise value
        return value

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            fn, args, box, done = item
            try:
                box[:] = True, fn(*args)
            except BaseException as e:  # handed to the caller
                box[:] = False, e
            done.release()
        with CallRunner._hung_lock:  # the abandoned call has returned
            CallRunner.hung -= 1


def with_reward(
    env: Environment, spec: str | None, timeout_s: float = 5.0, base_dir: Path | None = None
) -> Environment:
    """``env`` scored by the reward function ``spec`` names, or ``env`` itself when ``spec`` is None."""
    if not spec:
        return env
    return RewardOverride(env, load_reward_function(spec, base_dir), timeout_s, spec)
