"""A tiny verifiers 0.4 (``verifiers.v1``) environment for rayrl's tests: one-digit addition.

A taskset package as ``vf init`` scaffolds one: ``TaskData`` rows, a ``Task`` with ``@vf.reward`` /
``@vf.metric`` scoring, a ``Taskset`` whose ``load`` yields the tasks, and (exported beside it, so it
is the taskset's default harness) a small chat harness that runs in process: it calls the model
through the rollout's interception endpoint with the OpenAI SDK, like verifiers' ``null`` chat
program does from a subprocess (which needs ``uv`` and a network to install itself).

``followups > 0`` makes it multi-turn: after each reply the harness sends "Check: a+b=" again and the
reward reads the last reply.
"""

from __future__ import annotations

from openai import AsyncOpenAI, DefaultAsyncHttpxClient

import verifiers.v1 as vf


class AdditionData(vf.TaskData):
    answer: str = ""
    followups: int = 0


class AdditionTask(vf.Task[AdditionData]):
    @vf.reward(weight=1.0)
    async def exact_answer(self, trace: vf.Trace) -> float:
        return 1.0 if trace.last_reply.strip() == self.data.answer else 0.0

    @vf.reward(weight=0.5)
    async def starts_with_digit(self, trace: vf.Trace) -> float:
        return 1.0 if trace.last_reply.strip()[:1].isdigit() else 0.0

    @vf.metric
    async def replies(self, trace: vf.Trace) -> float:
        return float(len(trace.assistant_messages))


class AdditionConfig(vf.TasksetConfig):
    num_tasks: int = 40
    """How many problems (``a+b=`` for a, b in 0..9, in order)."""
    followups: int = 0
    """Extra user turns after the first reply (multi-turn when > 0)."""


class AdditionTaskset(vf.Taskset[AdditionTask, AdditionConfig]):
    def load(self) -> list[AdditionTask]:
        if self.config.num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {self.config.num_tasks}")
        pairs = [(a, b) for a in range(10) for b in range(10)][: self.config.num_tasks]
        return [
            AdditionTask(AdditionData(
                id=f"add-{a}-{b}", prompt=f"{a}+{b}=", answer=str(a + b), followups=self.config.followups
            ), self.config.task)
            for a, b in pairs
        ]


class ChatHarnessConfig(vf.HarnessConfig):
    pass


class ChatHarness(vf.Harness[ChatHarnessConfig]):
    """An in-process chat loop over the interception endpoint (no program to install)."""

    APPENDS_SYSTEM_PROMPT = True
    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def launch(self, ctx, trace, runtime, endpoint, secret, mcp_urls, data, tool_interception_url=None):
        # plain HTTP to the rollout's interception server: no TLS context to build (30 ms each)
        http = DefaultAsyncHttpxClient(verify=False)
        client = AsyncOpenAI(base_url=endpoint, api_key=secret, max_retries=0, http_client=http)
        system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
        messages = [*system, {"role": "user", "content": data.prompt}]
        followups = getattr(data, "followups", 0)
        try:
            for turn in range(1 + followups):
                response = await client.chat.completions.create(model=ctx.model, messages=messages)
                messages.append({"role": "assistant", "content": response.choices[0].message.content or ""})
                if turn < followups:
                    messages.append({"role": "user", "content": f"Check: {data.prompt}"})
        finally:
            await client.close()
        return vf.ProgramResult(exit_code=0, stdout="", stderr="")


__all__ = ["AdditionTaskset", "ChatHarness"]
