"""A verifiers ``Client`` whose model is rayrl's ``Generator``: no HTTP server, the engine's tokens kept.

verifiers runs its own rollout loop and asks its client for each model turn. :class:`RayrlClient`
answers from the inference replicas in this process:

- **Batching.** Every rollout of a ``play`` call runs concurrently in one asyncio loop. Their turn
  requests wait in a :class:`TurnBatcher`, which calls ``generator.generate`` (in a thread) once every
  rollout still running is waiting, or once nothing has changed for ``idle_s`` (a rollout busy in slow
  environment code). Prompts are sorted inside a batch, so batches do not depend on timing.
- **Token accounting.** A :class:`Transcript` per rollout holds the token ids fed and sampled so far.
  Turn t+1's prompt is turn t's prompt, the sampled ids exactly as the engine returned them, then the
  tokens of the environment's new messages only (loss mask 0, log-prob 0.0): the conversation is never
  re-tokenised. A turn is cut to the room left under ``seq_len``; with no room the client raises
  ``vf.OverlongPromptError``, which verifiers treats as the end of the rollout ("prompt_too_long").
- **Text.** :class:`Renderer` turns messages into text: the tokenizer's chat template when it has one,
  else the plain template below; prompts that are plain strings (verifiers' ``completion`` style) are
  used as they are.

Plain template (tokenizers without a chat template)::

    tools: [{"name": ..., "description": ..., "parameters": ...}]   (only when the env has tools)
    system: <content>
    user: <content>
    assistant: <content>
    tool: <content>
    assistant:                                   <- the generation prompt ("assistant: ")

Completion style: the prompt is its messages' contents joined by a blank line (as verifiers'
completions client does); each later environment message is appended after a blank line.

Tool calls (``vf.ToolEnv``): the model writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(the Hermes/Qwen format); the client parses these blocks out of the text into verifiers tool calls.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import verifiers as vf

from rayrl.envs.base import EpisodeResult, Generator, Sampled
from rayrl.envs.episodes import cut

MODEL_NAME = "rayrl"
PLAIN_GENERATION_PROMPT = "assistant: "
TOOL_CALL_FORMAT = '<tool_call>{"name": <tool name>, "arguments": <JSON object>}</tool_call>'
TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
DUMMY_USER, DUMMY_REPLY = "rayrl-bridge-user", "rayrl-bridge-reply-7f3a"


# ---- messages to text ---------------------------------------------------------------------------
def field_of(message: Any, name: str, default: Any = None) -> Any:
    """A field of a verifiers message, a dataset row's message dict, or a pydantic message."""
    if isinstance(message, Mapping):
        return message.get(name, default)
    return getattr(message, name, default)


def content_text(message: Any) -> str:
    """The text of a message's content (text parts joined by a space, like verifiers' clients)."""
    content = field_of(message, "content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [field_of(p, "text") for p in content if field_of(p, "type") == "text"]
    return " ".join(p for p in parts if isinstance(p, str)).strip()


def is_text_prompt(prompt: Any) -> bool:
    """True for completion-style prompts: a string, or verifiers ``text`` messages only."""
    if isinstance(prompt, str):
        return True
    return bool(prompt) and all(field_of(m, "role") == "text" for m in prompt)


def tool_dicts(tools: Sequence[Any] | None) -> list[dict[str, Any]]:
    """verifiers tool definitions as plain ``{name, description, parameters}`` dicts."""
    return [
        {"name": field_of(t, "name"), "description": field_of(t, "description", ""),
         "parameters": field_of(t, "parameters", {})}
        for t in tools or []
    ]


def plain_chat(messages: Any, tools: Sequence[Any] | None = None, generation_prompt: bool = True) -> str:
    """The plain template (see the module docstring); a string prompt is returned as it is."""
    if is_text_prompt(messages):
        return messages if isinstance(messages, str) else "\n\n".join(content_text(m) for m in messages)
    lines = []
    if tools:
        lines.append(f"tools: {json.dumps(tool_dicts(tools))}\n")
        lines.append(f"system: To call a tool, write {TOOL_CALL_FORMAT}\n")
    lines += [f"{field_of(m, 'role')}: {content_text(m)}\n" for m in messages]
    return "".join(lines) + (PLAIN_GENERATION_PROMPT if generation_prompt else "")


class Renderer:
    """Renders verifiers messages to the text (and token ids) the model reads."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.chat_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt(self, messages: Any, tools: Sequence[Any] | None) -> str:
        """The first turn's prompt text, ending with the generation prompt."""
        if is_text_prompt(messages) or not self.chat_template:
            return plain_chat(messages, tools)
        return self._template(messages, tools)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a first-turn prompt: chat-template text already holds its special tokens;
        plain text is tokenised like the rollout worker tokenises ``Example.prompt``."""
        return self.tokenizer(text, add_special_tokens=not self.chat_template).input_ids

    def bridge(self, env_messages: Sequence[Any], tools: Sequence[Any] | None, text_mode: bool) -> str:
        """Text between the end of a model turn and the next generation prompt (inclusive): the end of
        the assistant message, the environment's messages, and the generation prompt."""
        if text_mode:
            return "".join("\n\n" + content_text(m) for m in env_messages)
        base = [{"role": "user", "content": DUMMY_USER}, {"role": "assistant", "content": DUMMY_REPLY}]
        dicts = base + [message_dict(m) for m in env_messages]
        full = self._template(dicts, tools) if self.chat_template else plain_chat(dicts, tools)
        end = full.rfind(DUMMY_REPLY)
        if end < 0:
            raise ValueError("the chat template dropped the previous assistant message; cannot append turns")
        return full[end + len(DUMMY_REPLY):]

    def _template(self, messages: Sequence[Any], tools: Sequence[Any] | None) -> str:
        native_tools = [{"type": "function", "function": t} for t in tool_dicts(tools)] or None
        return self.tokenizer.apply_chat_template(
            [message_dict(m) for m in messages], tools=native_tools, add_generation_prompt=True, tokenize=False
        )


def message_dict(message: Any) -> dict[str, Any]:
    """A message as the plain dict chat templates expect (tool calls stay in the assistant's text)."""
    out = {"role": field_of(message, "role"), "content": content_text(message)}
    if field_of(message, "tool_call_id"):
        out["tool_call_id"] = field_of(message, "tool_call_id")
    return out


def parse_tool_calls(text: str) -> list[vf.ToolCall]:
    """``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` blocks of ``text``; malformed ones are skipped."""
    calls = []
    for n, block in enumerate(TOOL_CALL_RE.findall(text)):
        try:
            call = json.loads(block)
            name, arguments = call["name"], call.get("arguments", {})
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(name, str):
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
            calls.append(vf.ToolCall(id=f"call_{n}", name=name, arguments=arguments))
    return calls


# ---- batching ----------------------------------------------------------------------------------
@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    future: asyncio.Future


class TurnBatcher:
    """Gathers the turn requests of concurrent rollouts into few ``generator.generate`` calls."""

    def __init__(self, generator: Generator, rollouts: int, tick_s: float = 0.001, idle_s: float = 0.05):
        self.generator, self.tick_s, self.idle_s = generator, tick_s, idle_s
        self.unstarted = rollouts  # rollouts that have not asked for a turn yet and are not known to be over
        self.states: list[Any] = []  # verifiers states of the rollouts that have asked
        self.pending: list[_Request] = []
        self.arrived = asyncio.Event()
        self.calls = 0
        self.failure: BaseException | None = None

    def started(self, state: Any) -> None:
        """A rollout asks for its first turn."""
        self.unstarted -= 1
        self.states.append(state)

    def ended_unstarted(self, count: int) -> None:
        """``count`` rollouts ended without asking for a turn (an error in the environment's set-up)."""
        self.unstarted -= count

    def live(self) -> int:
        """Rollouts that may still ask for a turn."""
        return self.unstarted + sum(1 for s in self.states if not s.get("is_completed"))

    async def sample(self, prompt_ids: list[int], max_tokens: int) -> Sampled:
        """One model turn for ``prompt_ids``, at most ``max_tokens`` tokens."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append(_Request(prompt_ids, max_tokens, future))
        self.arrived.set()
        return await future

    async def run(self) -> None:
        """Serve batches until cancelled."""
        while True:
            await self.arrived.wait()
            await self._wait_for_batch()
            batch, self.pending = sorted(self.pending, key=lambda r: r.prompt_ids), []
            self.arrived.clear()
            await self._generate(batch)

    async def _wait_for_batch(self) -> None:
        """Return once every live rollout waits, or when nothing has changed for ``idle_s``."""
        last, quiet = None, 0.0
        while len(self.pending) < self.live():
            now = (len(self.pending), self.live())
            if now != last:
                last, quiet = now, 0.0
            elif quiet >= self.idle_s:
                return
            await asyncio.sleep(self.tick_s)
            quiet += self.tick_s

    async def _generate(self, batch: list[_Request]) -> None:
        self.calls += 1
        try:
            limit = max(r.max_tokens for r in batch)
            sampled = await asyncio.to_thread(self.generator.generate, [r.prompt_ids for r in batch], limit)
        except BaseException as e:  # a replica failure must fail the step, not score zero
            self.failure = e
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        for r, s in zip(batch, sampled):
            if not r.future.done():  # a rollout that timed out (verifiers' timeout_seconds) no longer waits
                r.future.set_result(Sampled(cut(s.completion, r.max_tokens), s.version))


# ---- the client --------------------------------------------------------------------------------
@dataclass
class Transcript:
    """One rollout's tokens so far, and the messages they cover."""

    result: EpisodeResult
    text_mode: bool
    covered: list[Any] = field(default_factory=list)  # the messages of the last prompt, then the model's reply
    last_finish: str = ""


@dataclass
class ModelTurn:
    """The client's native response: one sampled turn."""

    prompt_ids: list[int]
    sampled: Sampled
    text: str
    tool_calls: list[vf.ToolCall]


class RayrlClient(vf.Client):
    """verifiers' model client over a rayrl Generator (see the module docstring)."""

    def __init__(self, generator: Generator, batcher: TurnBatcher, first_prompts: dict[str, list[int]]):
        super().__init__(generator)
        self.generator, self.batcher = generator, batcher
        self.renderer = Renderer(generator.tokenizer)
        self.first_prompts = first_prompts  # rendered first-turn text -> the ids the rollout worker made of it
        self.transcripts: dict[str, Transcript] = {}  # by verifiers' trajectory_id

    def setup_client(self, config: Any) -> Any:
        raise TypeError("RayrlClient wraps a rayrl Generator; it cannot be built from a verifiers ClientConfig")

    async def to_native_tool(self, tool: Any) -> Any:
        return tool

    async def to_native_prompt(self, messages: Any) -> tuple[Any, dict]:
        return list(messages), {}

    async def raise_from_native_response(self, response: ModelTurn) -> None:
        """An empty completion is a valid (if poor) turn here: the reward functions judge it."""

    async def close(self) -> None:
        """Nothing to close: the generator belongs to the caller."""

    async def get_native_response(
        self, prompt: Any, model: str, sampling_args: Any, tools: list[Any] | None = None, **kwargs: Any
    ) -> ModelTurn:
        state = kwargs["state"]
        transcript = self.transcripts.get(state["trajectory_id"])
        if transcript is None:
            transcript = self._start(state, prompt, tools)
        else:
            self._append_environment(transcript, prompt, tools)
        result = transcript.result
        room = self.generator.seq_len - result.length
        limit = min(self.generator.max_tokens, int((sampling_args or {}).get("max_tokens") or room), room)
        if limit <= 0:
            raise vf.OverlongPromptError(f"no room for a model turn under seq_len = {self.generator.seq_len}")
        prompt_ids = result.prompt_ids + result.completion_ids
        sampled = await self.batcher.sample(prompt_ids, limit)
        text = self.generator.decode(sampled.completion.token_ids)
        result.add_model_turn(sampled, text)
        transcript.covered = list(prompt) + [None]  # None: the reply verifiers will build from this turn
        transcript.last_finish = sampled.completion.finish_reason
        return ModelTurn(prompt_ids, sampled, text, parse_tool_calls(text) if tools else [])

    def _start(self, state: Any, prompt: Any, tools: list[Any] | None) -> Transcript:
        """The first turn: render the prompt; reuse the worker's ids when the text is the example's."""
        text = self.renderer.prompt(prompt, tools)
        ids = self.first_prompts.get(text) or self.renderer.encode_prompt(text)
        if len(ids) >= self.generator.seq_len:
            raise vf.OverlongPromptError(f"the prompt is {len(ids)} tokens, seq_len = {self.generator.seq_len}")
        transcript = Transcript(EpisodeResult(prompt_ids=list(ids)), text_mode=is_text_prompt(prompt))
        self.transcripts[state["trajectory_id"]] = transcript
        self.batcher.started(state)
        return transcript

    def _append_environment(self, transcript: Transcript, prompt: Any, tools: list[Any] | None) -> None:
        """Append the tokens of the environment's new messages (everything after the model's last reply)."""
        covered = transcript.covered
        if len(prompt) <= len(covered) or not all(
            old is None or old is new or message_dict(old) == message_dict(new) for old, new in zip(covered, prompt)
        ):
            raise ValueError(
                "the verifiers environment's next prompt does not extend the last one with new messages; rayrl "
                "keeps the engine's tokens, so it supports only conversations that grow by appending messages"
            )
        text = self.renderer.bridge(prompt[len(covered):], tools, transcript.text_mode)
        text = self._after_stop_token(transcript, text)
        ids = self.generator.encode(text)
        if transcript.result.length + len(ids) >= self.generator.seq_len:
            raise vf.OverlongPromptError(f"the environment's reply does not fit in seq_len = {self.generator.seq_len}")
        transcript.result.add_environment_turn(ids, self.generator.decode(ids))  # text as the tokens read

    def _after_stop_token(self, transcript: Transcript, bridge: str) -> str:
        """``bridge`` without the end-of-turn marker the model already sampled (e.g. ``<|im_end|>``)."""
        result = transcript.result
        if transcript.last_finish != "stop" or not result.completion_ids:
            return bridge
        marker = self.generator.tokenizer.decode(result.completion_ids[-1:], skip_special_tokens=False)
        return bridge[len(marker):] if marker and bridge.startswith(marker) else bridge

    async def from_native_response(self, response: ModelTurn) -> vf.Response:
        c = response.sampled.completion
        finish = "tool_calls" if response.tool_calls else c.finish_reason
        return vf.Response(
            id=f"rayrl-{time.monotonic_ns()}",
            created=int(time.time()),
            model=MODEL_NAME,
            usage=vf.Usage(
                prompt_tokens=len(response.prompt_ids), reasoning_tokens=0, completion_tokens=len(c.token_ids),
                total_tokens=len(response.prompt_ids) + len(c.token_ids),
            ),
            message=vf.ResponseMessage(
                content=response.text, finish_reason=finish, is_truncated=c.finish_reason == "length",
                tool_calls=response.tool_calls or None,
                tokens=vf.ResponseTokens(
                    prompt_ids=response.prompt_ids, prompt_mask=[0] * len(response.prompt_ids),
                    completion_ids=list(c.token_ids), completion_mask=[1] * len(c.token_ids),
                    completion_logprobs=list(c.logprobs),
                ),
            ),
        )
