"""RolloutWorker: turns examples into scored completions using the inference replicas."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rayrl.actors.waiting import wait_for
from rayrl.algorithms.grpo import Rollout
from rayrl.config import EnvConfig
from rayrl.config.models import FaultConfig
from rayrl.engines.base import SamplingParams
from rayrl.envs.base import EpisodeRequest, EpisodeResult, Example, Generator, Sampled, drives_generation
from rayrl.envs.episodes import CALL_SEED_STRIDE, play_turns
from rayrl.envs.registry import build_env
from rayrl.errors import EnvError
from rayrl.models.source import ModelSource, local_model_dir


@dataclass
class Task:
    """``samples`` completions of one example of environment number ``env_index``."""

    env_index: int
    example: Example
    samples: int


@dataclass
class RolloutBatch:
    """What one worker returns for one request: the rollouts and how long generation took."""

    rollouts: list[Rollout]
    generate_s: float  # engine time, summed over turns (replicas of one turn generate in parallel)
    tasks: int = 0  # tasks in the request; rollouts of a skipped one (its prompt too long) are absent


class ReplicaGenerator(Generator):
    """The replicas as environments see them: each call is spread over the replicas in contiguous chunks.

    The n-th call of a request uses seed ``seed + n * CALL_SEED_STRIDE + chunk``: runs are reproducible,
    and every turn of a multi-turn episode samples fresh randomness.
    """

    def __init__(self, replicas: list, tokenizer, seq_len: int, params: SamplingParams,
                 names: list[str] | None = None, fault: FaultConfig | None = None):  # fmt: skip
        self.replicas, self.tokenizer, self.seq_len, self.params = replicas, tokenizer, seq_len, params
        self.names = names or [f"replica {i}" for i in range(len(replicas))]
        self.fault = fault or FaultConfig()
        self.max_tokens = params.max_tokens
        self.calls, self.engine_s = 0, 0.0

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[Sampled]:
        """A replica that does not answer within ``fault.generate_timeout_s`` is killed, restarted by Ray and
        the call retried (``wait_for``)."""
        seed = self.params.seed + CALL_SEED_STRIDE * self.calls
        self.calls += 1
        chunks = split_contiguous(prompts, len(self.replicas))
        used = [(offset, i, chunk) for offset, (i, chunk) in enumerate(enumerate(chunks)) if chunk]
        refs = [self.replicas[i].generate.remote(chunk, replace(self.params, max_tokens=max_tokens, seed=seed + offset))
                for offset, i, chunk in used]
        results = wait_for(refs, "generation", self.fault.generate_timeout_s, [self.names[i] for _, i, _ in used],
                           [self.replicas[i] for _, i, _ in used], self.fault.max_restarts,
                           restart_grace_s=self.fault.ready_timeout_s)
        self.engine_s += max((r.engine_s for r in results), default=0.0)
        return [Sampled(c, r.version) for r in results for c in r.completions]


class RolloutWorker:
    """Builds prompts, plays every task's episodes through the replicas, returns scored rollouts."""

    def __init__(self, env_cfgs: list[EnvConfig], model: ModelSource | str, replicas: list[str], worker_index: int,
                 seq_len: int, fault: FaultConfig | None = None, namespace: str | None = None, board: bool = False,
                 long_prompts: str = "error"):  # fmt: skip
        """``replicas``: the names of the replica actors in ``namespace`` (where its PolicyBoard is, with ``board``)."""
        from transformers import AutoTokenizer

        if board:
            from rayrl.actors.board import find_board, report_start

            report_start(find_board(namespace), f"rollout-{worker_index}")
        self.fault = fault or FaultConfig()
        self.long_prompts = long_prompts
        self.warned_long: set[str] = set()
        self.envs = [build_env(e) for e in env_cfgs]
        self.tokenizer = AutoTokenizer.from_pretrained(local_model_dir(model))
        self.replica_names = replicas
        self.replicas = find_actors(replicas, namespace)
        self.worker_index = worker_index
        self.env_ids = [e.id for e in env_cfgs]
        self.seq_len = seq_len

    def rollout(self, tasks: list[Task], params: SamplingParams) -> RolloutBatch:
        """Play ``task.samples`` episodes of every task. Environments stepped by rayrl share one generate
        call a turn; environments that drive generation themselves (verifiers) play their own."""
        prompt_ids = [self.tokenizer(t.example.prompt).input_ids for t in tasks]
        fits = self._fit_prompts(tasks, prompt_ids, params.max_tokens)
        order = self.rotated_order()
        generator = ReplicaGenerator([self.replicas[i] for i in order], self.tokenizer, self.seq_len, params,
                                     [self.replica_names[i] for i in order], self.fault)
        requests = [
            (group, EpisodeRequest(self.envs[t.env_index], t.example, ids))
            for group, (t, ids) in enumerate(zip(tasks, prompt_ids)) if fits[group] for _ in range(t.samples)
        ]
        episodes: list[EpisodeResult | None] = [None] * len(requests)
        by_player: dict[int, list[int]] = {}  # id(env) for self-driving envs, 0 for the shared turn loop
        for i, (_, req) in enumerate(requests):
            by_player.setdefault(id(req.env) if drives_generation(req.env) else 0, []).append(i)
        for player, indices in by_player.items():
            batch = [requests[i][1] for i in indices]
            played = play_turns(batch, generator) if player == 0 else batch[0].env.play(batch, generator)
            if len(played) != len(batch):
                raise RuntimeError(f"environment '{batch[0].env.id}' returned {len(played)} episodes for {len(batch)}")
            for i, episode in zip(indices, played):
                episodes[i] = episode
        rollouts = []
        for (group, _), episode in zip(requests, episodes):
            task = tasks[group]  # failed reward calls were logged by RewardOverride (rate-limited)
            rollouts.append(rollout_of(task, group, episode, fits[group] == "truncated"))
        return RolloutBatch(rollouts, generator.engine_s, len(tasks))

    def _fit_prompts(self, tasks: list[Task], prompt_ids: list[list[int]], max_tokens: int) -> list[str]:
        """Per task: "fits", "truncated" (its ids cut from the left, in place, to seq_len - max_tokens, at least
        one token) or "" (skipped), for prompts leaving no room under seq_len (``rollout.long_prompts``)."""
        out = []
        for i, (task, ids) in enumerate(zip(tasks, prompt_ids)):
            if len(ids) < self.seq_len:
                out.append("fits")
                continue
            where = (f"environment '{self.env_ids[task.env_index]}', example {task.example.id}: the prompt is "
                     f"{len(ids)} tokens, leaving no room under seq_len = {self.seq_len}")
            if self.long_prompts == "error":
                raise EnvError(f"{where}; raise seq_len, or set rollout.long_prompts to skip or truncate")
            if self.env_ids[task.env_index] not in self.warned_long:  # once per environment, in this actor's log
                self.warned_long.add(self.env_ids[task.env_index])
                print(f"rayrl: {where}: {'skipped' if self.long_prompts == 'skip' else 'truncated'} "
                      "(rollout.long_prompts; further ones counted, not logged)", flush=True)
            if self.long_prompts == "skip":
                out.append("")
            else:
                prompt_ids[i] = ids[-max(1, self.seq_len - max_tokens):]
                out.append("truncated")
        return out

    def rotated_order(self) -> list[int]:
        """Replica indices starting at a different one per worker, so W workers spread over R replicas."""
        k = self.worker_index % len(self.replicas)
        return list(range(k, len(self.replicas))) + list(range(k))

    def pid(self) -> int:
        import os

        return os.getpid()


def rollout_of(task: Task, group: int, episode: EpisodeResult, truncated: bool = False) -> Rollout:
    """The Rollout the learner's step reads, from one played episode of ``task``."""
    return Rollout(
        task.env_index, task.example.id, group, episode.prompt_ids, episode.completion_ids, episode.logprobs,
        episode.reward, episode.version, episode.finish_reason, episode.completion, episode.completion_mask,
        episode.metrics, episode.turns, episode.reward_error, truncated,
    )


def find_actors(names: list[str], namespace: str | None) -> list:
    """Handles of the named actors of ``namespace``."""
    if not names:
        return []
    import ray

    return [ray.get_actor(name, namespace=namespace) for name in names]


def split_contiguous(items: list, parts: int) -> list[list]:
    """Split ``items`` into ``parts`` contiguous chunks whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        out.append(items[start:end])
        start = end
    return out
