"""RolloutWorker: turns examples into scored completions using the inference replicas."""

from __future__ import annotations

from dataclasses import dataclass, field

from rayrl.actors.engine import SamplingParams
from rayrl.config import EnvConfig
from rayrl.envs import Example, make_env


@dataclass
class Task:
    """``samples`` completions of one example of environment number ``env_index``."""

    env_index: int
    example: Example
    samples: int


@dataclass
class Rollout:
    """One scored completion."""

    env_index: int
    example_id: str
    group: int  # index of its Task in the request: completions of one example share a group
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    reward: float
    version: int
    finish_reason: str
    completion: str = field(repr=False, default="")


@dataclass
class RolloutBatch:
    """What one worker returns for one request: the rollouts and how long generation took."""

    rollouts: list[Rollout]
    generate_s: float  # engine time of the slowest replica called (replicas generate in parallel)


class RolloutWorker:
    """Builds prompts, spreads generation over the replicas, scores what comes back."""

    def __init__(self, env_cfgs: list[EnvConfig], model_path: str, replicas: list, worker_index: int, seq_len: int):
        from transformers import AutoTokenizer

        self.envs = [make_env(e.id, e.args) for e in env_cfgs]
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.replicas = replicas
        self.worker_index = worker_index
        self.env_ids = [e.id for e in env_cfgs]
        self.seq_len = seq_len

    def rollout(self, tasks: list[Task], params: SamplingParams) -> RolloutBatch:
        """Generate and score every task; prompts are split over the replicas in contiguous chunks."""
        import ray

        prompt_ids = [self.tokenizer(t.example.prompt).input_ids for t in tasks]
        self._check_prompt_lengths(tasks, prompt_ids)
        chunks = split_contiguous(list(range(len(tasks))), len(self.replicas))
        calls = []
        for offset, (replica, chunk) in enumerate(zip(self.rotated_replicas(), chunks)):
            if not chunk:
                continue
            prompts = [prompt_ids[i] for i in chunk for _ in range(tasks[i].samples)]
            max_tokens = min(params.max_tokens, self.seq_len - max(len(p) for p in prompts))
            seeded = SamplingParams(max_tokens, params.temperature, params.top_p, params.seed + offset)
            calls.append((chunk, replica.generate.remote(prompts, seeded)))
        results = ray.get([ref for _, ref in calls])
        generate_s = max((r.engine_s for r in results), default=0.0)
        rollouts: list[Rollout] = []
        for (chunk, _), result in zip(calls, results):
            completions = iter(result.completions)
            for i in chunk:
                for _ in range(tasks[i].samples):
                    rollouts.append(self._score(tasks[i], i, prompt_ids[i], next(completions), result.version))
        return RolloutBatch(rollouts, generate_s)

    def _check_prompt_lengths(self, tasks: list[Task], prompt_ids: list[list[int]]) -> None:
        for task, ids in zip(tasks, prompt_ids):
            if len(ids) >= self.seq_len:
                raise ValueError(
                    f"environment '{self.env_ids[task.env_index]}', example {task.example.id}: the prompt is "
                    f"{len(ids)} tokens, leaving no room under seq_len = {self.seq_len}; raise seq_len"
                )

    def rotated_replicas(self) -> list:
        """Replicas starting at a different one per worker, so W workers spread over R replicas."""
        k = self.worker_index % len(self.replicas)
        return self.replicas[k:] + self.replicas[:k]

    def _score(self, task: Task, group: int, prompt_ids: list[int], completion, version: int) -> Rollout:
        text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        reward = float(self.envs[task.env_index].score(task.example, text))
        return Rollout(
            env_index=task.env_index, example_id=task.example.id, group=group, prompt_ids=prompt_ids,
            completion_ids=completion.token_ids, logprobs=completion.logprobs, reward=reward,
            version=version, finish_reason=completion.finish_reason, completion=text,
        )


def split_contiguous(items: list, parts: int) -> list[list]:
    """Split ``items`` into ``parts`` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        out.append(items[start:end])
        start = end
    return out
