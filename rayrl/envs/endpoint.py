"""An OpenAI-compatible HTTP endpoint on 127.0.0.1 over rayrl's inference replicas (a ``Generator``).

Environments that call their model over HTTP (verifiers 0.4's ``verifiers.v1``) talk to this server,
started in the process that plays them (the rollout worker) on an ephemeral port. Every request is
answered by the same ``generator.generate`` calls the built-in turn loop makes: concurrent requests
are gathered and sampled in one call: at once when :attr:`ModelEndpoint.live` clients (set by the caller,
e.g. the episodes still running) all wait, else once no request has arrived for ``batch_window_s``
(``idle_s`` when ``live`` is set; nominal seconds of the server's loop, so a loaded machine waits longer). The engine's token ids and their
behaviour log-probs come back exactly as sampled, and every answer is kept in :attr:`ModelEndpoint.sampled`
(keyed by prompt ids and completion ids) with the policy version that produced it.

Routes (vLLM's shapes, which verifiers and prime-rl read):

- ``GET /v1/models``: one model, ``model_name``, with ``max_model_len`` = ``seq_len``.
- ``POST /inference/v1/generate`` (vLLM's token-in/token-out route, what verifiers' ``TrainClient``
  calls with the ids its renderer made): ``{"model", "token_ids", "sampling_params": {"max_tokens",
  "stop_token_ids", "n", ...}}`` -> ``{"request_id", "prompt_token_ids", "choices": [{"index",
  "token_ids", "logprobs": {"content": [{"token": "token_id:<id>", "logprob"}]}, "finish_reason"}]}``.
- ``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template (or the plain
  template below); the response carries vLLM's ``prompt_token_ids`` and ``choices[i].token_ids`` and,
  with ``logprobs: true``, ``logprobs.content`` (tokens as ``token_id:<id>`` with
  ``return_tokens_as_token_ids``, else their text).
- ``POST /v1/completions``: a text prompt (or token ids); ``logprobs`` gives ``tokens`` /
  ``token_logprobs``.

Sampling is rayrl's ``[sampling]`` (temperature, top_p, seed): a request's ``max_tokens`` only caps
its turn (also to the room left under ``seq_len``), ``n`` repeats the prompt, ``stop_token_ids``
end a completion at the first such token (kept, finish reason ``stop``); other sampling fields are
ignored, ``stream`` and ``echo`` are refused. A prompt with no room under ``seq_len`` is a 400 (vLLM's
context-length error); a failed generate call is a 500 and is kept in :attr:`ModelEndpoint.failure`,
so the caller can fail the step instead of scoring the rollout 0.

Plain template (tokenizers without a chat template, like rayrl's built-in character model): the
beginning-of-sequence token, then ``role: content`` lines, then ``assistant: `` (the same text as
``rayrl.envs.verifiers_client.plain_chat``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from rayrl.envs.base import Generator, Sampled
from rayrl.envs.episodes import cut

log = logging.getLogger(__name__)

PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}{% for m in messages %}{{ m['role'] }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


class EndpointError(Exception):
    """A request the endpoint refuses: answered with ``status`` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class _Pending:
    prompt_ids: list[int]
    max_tokens: int
    future: asyncio.Future


class ModelEndpoint:
    """The HTTP server (aiohttp, in a thread of its own); ``with ModelEndpoint(generator) as ep: ep.base_url``."""

    def __init__(self, generator: Generator, model_name: str = "rayrl", chat_template: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, batch_window_s: float = 0.02, idle_s: float = 0.25,
                 max_wait_s: float = 2.0):  # fmt: skip
        self.generator, self.model_name, self.host, self.port = generator, model_name, host, port
        self.chat_template = chat_template or getattr(generator.tokenizer, "chat_template", None) or PLAIN_CHAT_TEMPLATE
        self.batch_window_s, self.idle_s, self.max_wait_s = batch_window_s, idle_s, max_wait_s
        self.live: int | None = None  # clients that may still send a request (None: unknown)
        self.sampled: dict[tuple[tuple[int, ...], tuple[int, ...]], Sampled] = {}
        self.generate_calls = 0
        self.requests = 0
        self.failure: BaseException | None = None
        self._ids = itertools.count()
        self._pending: list[_Pending] = []
        self._waiting = 0  # requests (not samples) in self._pending
        self._arrived: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._batcher: asyncio.Task | None = None

    def use(self, generator: Generator) -> None:
        """Serve the next requests with ``generator`` (the rollout worker makes one per request); forgets
        what was sampled before and any earlier failure."""
        self.generator, self.sampled, self.failure = generator, {}, None

    # ---- lifecycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return self.url + "/v1"

    def start(self) -> "ModelEndpoint":
        ready: dict[str, Any] = {}
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_server())
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                ready["error"] = e
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            if self._batcher is not None:
                self._batcher.cancel()
                loop.run_until_complete(asyncio.gather(self._batcher, return_exceptions=True))
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="rayrl-model-endpoint", daemon=True)
        self._thread.start()
        started.wait()
        if "error" in ready:
            raise RuntimeError(f"the model endpoint could not start on {self.host}: {ready['error']}") from ready["error"]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> "ModelEndpoint":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _start_server(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._route(self._chat))
        app.router.add_post("/v1/completions", self._route(self._completions))
        app.router.add_post("/inference/v1/generate", self._route(self._generate_tokens))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._arrived = asyncio.Event()
        self._batcher = asyncio.get_running_loop().create_task(self._batch_loop())

    # ---- HTTP -----------------------------------------------------------------------------------
    def _route(self, handler):
        from aiohttp import web

        async def wrapped(request):
            self.requests += 1
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise EndpointError("the request body must be a JSON object")
                return web.json_response(await handler(body))
            except EndpointError as e:
                return error_response(str(e), e.status, e.kind)
            except json.JSONDecodeError as e:
                return error_response(f"the request body is not JSON: {e}", 400, "BadRequestError")
            except Exception as e:  # noqa: BLE001 - the client gets the reason, the caller sees self.failure
                log.exception("model endpoint: %s failed", request.path)
                return error_response(f"{type(e).__name__}: {e}", 500, "InternalServerError")

        return wrapped

    async def _models(self, request):
        from aiohttp import web

        card = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "rayrl",
                "root": self.model_name, "max_model_len": self.generator.seq_len}  # fmt: skip
        return web.json_response({"object": "list", "data": [card]})

    async def _health(self, request):
        from aiohttp import web

        return web.json_response({"status": "ok"})

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise EndpointError(
                f"The model `{model}` does not exist: this endpoint serves `{self.model_name}`", 404, "NotFoundError"
            )

    async def _generate_tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's ``/inference/v1/generate``: token ids in, token ids and log-probs out."""
        self._check_model(body)
        prompt = body.get("token_ids")
        if not isinstance(prompt, list) or not prompt or not all(isinstance(t, int) for t in prompt):
            raise EndpointError("'token_ids' must be a non-empty list of token ids")
        params = body.get("sampling_params") or {}
        completions = await self._sample(prompt, params)
        choices = [
            {"index": i, "token_ids": s.completion.token_ids, "finish_reason": s.completion.finish_reason,
             "logprobs": {"content": [{"token": f"token_id:{t}", "logprob": lp}
                                      for t, lp in zip(s.completion.token_ids, s.completion.logprobs)]}}
            for i, s in enumerate(completions)
        ]  # fmt: skip
        return {"request_id": self._id("gen"), "prompt_token_ids": prompt, "choices": choices,
                "usage": usage(prompt, completions)}  # fmt: skip

    async def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_model(body)
        self._refuse_streaming(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise EndpointError("'messages' must be a non-empty list")
        prompt = self.render(messages, body.get("tools"))
        params = dict(body)
        params.setdefault("max_tokens", body.get("max_completion_tokens"))
        completions = await self._sample(prompt, params)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for i, s in enumerate(completions):
            c = s.completion
            choice = {"index": i, "message": {"role": "assistant", "content": self.generator.decode(c.token_ids)},
                      "finish_reason": c.finish_reason, "token_ids": c.token_ids, "logprobs": None}  # fmt: skip
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [self._token_logprob(t, lp, as_ids)
                                                  for t, lp in zip(c.token_ids, c.logprobs)]}  # fmt: skip
            choices.append(choice)
        return {"id": self._id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "prompt_token_ids": prompt,
                "usage": usage(prompt, completions)}  # fmt: skip

    async def _completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_model(body)
        self._refuse_streaming(body)
        if body.get("echo"):
            raise EndpointError("'echo' is not supported by rayrl's endpoint")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.generator.tokenizer(prompt).input_ids
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise EndpointError("'prompt' must be a string or a non-empty list of token ids (one prompt per request)")
        completions = await self._sample(ids, body)
        choices = []
        for i, s in enumerate(completions):
            c = s.completion
            choice = {"index": i, "text": self.generator.decode(c.token_ids), "finish_reason": c.finish_reason,
                      "token_ids": c.token_ids, "logprobs": None}  # fmt: skip
            if body.get("logprobs") is not None:
                tokens = [self._token_text(t, bool(body.get("return_tokens_as_token_ids"))) for t in c.token_ids]
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": list(c.logprobs),
                                      "top_logprobs": None, "text_offset": None}  # fmt: skip
            choices.append(choice)
        return {"id": self._id("cmpl"), "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "prompt_token_ids": ids,
                "usage": usage(ids, completions)}  # fmt: skip

    @staticmethod
    def _refuse_streaming(body: dict[str, Any]) -> None:
        if body.get("stream"):
            raise EndpointError("'stream' is not supported by rayrl's endpoint; send stream=false")

    def _token_text(self, token: int, as_id: bool) -> str:
        return f"token_id:{token}" if as_id else self.generator.tokenizer.decode([token])

    def _token_logprob(self, token: int, logprob: float, as_id: bool) -> dict[str, Any]:
        text = self._token_text(token, as_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}

    def _id(self, prefix: str) -> str:
        return f"{prefix}-rayrl-{next(self._ids)}"

    # ---- rendering and sampling -----------------------------------------------------------------
    def render(self, messages: list[Any], tools: list[Any] | None = None) -> list[int]:
        """Token ids of ``messages`` under the chat template, ending with the generation prompt."""
        tokenizer = self.generator.tokenizer
        try:
            text = tokenizer.apply_chat_template(
                messages, tools=tools or None, chat_template=self.chat_template, add_generation_prompt=True,
                tokenize=False,
            )
        except Exception as e:  # noqa: BLE001 - a malformed conversation is the client's error
            raise EndpointError(f"cannot render the messages with the chat template: {e}") from e
        return tokenizer(text, add_special_tokens=False).input_ids

    async def _sample(self, prompt: list[int], params: dict[str, Any]) -> list[Sampled]:
        """``n`` completions of ``prompt`` (at most ``max_tokens`` each, cut at ``stop_token_ids``)."""
        room = self.generator.seq_len - len(prompt)
        if room <= 0:
            raise EndpointError(
                f"This model's maximum context length is {self.generator.seq_len} tokens. However, your request has "
                f"{len(prompt)} input tokens (rayrl seq_len).", 400, "BadRequestError",
            )
        limit = min(self.generator.max_tokens, room)
        requested = params.get("max_tokens")
        if requested is not None:
            if not isinstance(requested, int) or requested < 1:
                raise EndpointError(f"'max_tokens' must be a positive integer, got {requested!r}")
            limit = min(limit, requested)
        n = params.get("n") or 1
        if not isinstance(n, int) or n < 1:
            raise EndpointError(f"'n' must be a positive integer, got {n!r}")
        stops = set(params.get("stop_token_ids") or [])
        loop = asyncio.get_running_loop()
        futures = []
        self._waiting += 1
        for _ in range(n):
            future = loop.create_future()
            self._pending.append(_Pending(list(prompt), limit, future))
            futures.append(future)
        self._arrived.set()
        out = []
        for s in await asyncio.gather(*futures):
            s = Sampled(stop_at(s.completion, stops), s.version)
            self.sampled[(tuple(prompt), tuple(s.completion.token_ids))] = s
            out.append(s)
        return out

    async def _batch_loop(self) -> None:
        """Gather requests (see the module docstring), then sample them in one ``generator.generate`` call
        (in a thread: replicas are Ray calls)."""
        tick = 0.002
        while True:
            await self._arrived.wait()
            waited, quiet, seen = 0.0, 0.0, -1
            while waited < self.max_wait_s:
                live = self.live
                if live is not None and self._waiting >= live:
                    break
                if self._waiting != seen:
                    seen, quiet = self._waiting, 0.0
                elif quiet >= (self.batch_window_s if live is None else self.idle_s):
                    break
                await asyncio.sleep(tick)
                waited += tick
                quiet += tick
            batch, self._pending, self._waiting = self._pending, [], 0
            self._arrived.clear()
            if not batch:
                continue
            self.generate_calls += 1
            try:
                limit = max(p.max_tokens for p in batch)
                sampled = await asyncio.to_thread(self.generator.generate, [p.prompt_ids for p in batch], limit)
            except Exception as e:  # noqa: BLE001 - a replica failure must fail the step, not score zero
                self.failure = e
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, s in zip(batch, sampled):
                if not p.future.done():
                    p.future.set_result(Sampled(cut(s.completion, p.max_tokens), s.version))


def stop_at(completion, stop_ids: set[int]):
    """``completion`` ended at its first token in ``stop_ids`` (kept; finish reason "stop")."""
    for i, token in enumerate(completion.token_ids):
        if token in stop_ids:
            if i + 1 == len(completion.token_ids) and completion.finish_reason == "stop":
                return completion
            return type(completion)(completion.token_ids[: i + 1], completion.logprobs[: i + 1], "stop")
    return completion


def usage(prompt: list[int], completions: list[Sampled]) -> dict[str, int]:
    generated = sum(len(s.completion.token_ids) for s in completions)
    return {"prompt_tokens": len(prompt), "completion_tokens": generated, "total_tokens": len(prompt) + generated}


def error_response(message: str, status: int, kind: str):
    from aiohttp import web

    body = {"error": {"message": message, "type": kind, "param": None, "code": status}, "object": "error",
            "message": message, "type": kind, "code": status}  # fmt: skip
    return web.json_response(body, status=status)
