"""Learner actors and the LearnerGroup that owns them.

L Learner actors live in one placement group and form a torch.distributed group (gloo on CPU, NCCL
on GPU). Each holds its FSDP2 shard of the policy (``fully_shard`` per decoder layer, then the root),
the AdamW optimizer over its shard and the learning-rate scheduler. Every method below is a
collective: the group calls it on all ranks at once.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rayrl.actors.weights import flatten_state_dict
from rayrl.algorithms.grpo import clipped_policy_loss, token_logprobs
from rayrl.config import Config

OPTIMIZER_FILE, SCHEDULER_FILE, MODEL_FILE = "optimizer.pt", "scheduler.pt", "model.safetensors"


@dataclass
class TrainSample:
    """One completion as the learner sees it."""

    token_ids: np.ndarray  # prompt + completion, int64 [T]
    completion_start: int  # index of the first completion token in token_ids
    old_logprobs: np.ndarray  # behaviour log-probs of the completion tokens, float32 [T - completion_start]
    advantage: float
    weight: float = 1.0  # 0 for padding samples that only keep the ranks in step
    # 1 where the completion token is the model's (trained on), 0 where an environment wrote it
    # (multi-turn); None = every completion token is the model's.
    loss_mask: np.ndarray | None = None

    def loss_tokens(self) -> int:
        """How many tokens this sample trains on (environment tokens excluded)."""
        return len(self.old_logprobs) if self.loss_mask is None else int(np.sum(self.loss_mask))


def padding_sample() -> TrainSample:
    return TrainSample(np.array([0, 0], dtype=np.int64), 1, np.zeros(1, np.float32), 0.0, weight=0.0)


def collate(samples: list[TrainSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad samples into tensors; loss positions are the completion tokens (targets shifted by 1)."""
    width = max(len(s.token_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width - 1))
    old = torch.zeros((len(samples), width - 1))
    for row, s in enumerate(samples):
        n = len(s.token_ids)
        ids[row, :n] = torch.tensor(s.token_ids)  # copy: object-store arrays are read-only
        mask[row, s.completion_start - 1 : n - 1] = (
            s.weight if s.loss_mask is None else s.weight * torch.from_numpy(np.asarray(s.loss_mask, np.float32))
        )
        old[row, s.completion_start - 1 : n - 1] = torch.tensor(s.old_logprobs)
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    return {"input_ids": ids, "loss_mask": mask, "old_logprobs": old, "advantages": adv}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class Learner:
    """One rank of the learner group."""

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        torch.set_num_threads(cfg.learner.threads)
        self.device = torch.device("cuda" if cfg.learner.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master: tuple[str, int], model_path: str, resume_dir: str | None = None) -> None:
        """Join the process group, load and shard the model, build optimizer and scheduler."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=self.rank, world_size=self.world_size
        )
        source = resume_dir or model_path
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, self.cfg.model.dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        model.to(self.device).train()
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        self.model = model
        o = self.cfg.optim
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        warmup = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0
        )
        if resume_dir:
            self._load_training_state(Path(resume_dir))

    # ---- training -------------------------------------------------------------------------
    def update(self, samples: list[TrainSample], normalizer: float) -> dict[str, float]:
        """One optimizer step over this rank's samples; ``normalizer`` = loss tokens of the whole batch."""
        a = self.cfg.algorithm
        mbs = self.cfg.learner.micro_batch_size
        micro_batches = [samples[i : i + mbs] for i in range(0, len(samples), mbs)]
        sums = {"loss": 0.0, "clipped": 0.0, "mismatch_kl": 0.0, "tokens": 0.0}
        for i, micro in enumerate(micro_batches):
            self.model.set_requires_gradient_sync(i == len(micro_batches) - 1)
            batch = {k: v.to(self.device) for k, v in collate(micro, self.pad_id).items()}
            ids = batch["input_ids"]
            positions = torch.arange(ids.shape[1], device=self.device).expand_as(ids)
            # Right padding and causal attention: real tokens never see the padding, so no mask is needed.
            logits = self.model(input_ids=ids, position_ids=positions).logits[:, :-1]
            logprobs = token_logprobs(logits, ids[:, 1:], self.cfg.sampling.temperature)
            loss, stats = clipped_policy_loss(
                logprobs, batch["old_logprobs"], batch["advantages"], batch["loss_mask"],
                a.clip_low, a.clip_high, normalizer,
            )
            # FSDP averages gradients over ranks; scale so the result is the sum over the whole batch.
            (loss * self.world_size).backward()
            sums["loss"] += loss.item()
            for k, v in stats.items():
                sums[k] += v.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {**sums, "grad_norm": float(grad_norm), "lr": lr}

    # ---- weights --------------------------------------------------------------------------
    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """Gather the full (unsharded) weights on rank 0; other ranks get {}. Collective.

        ``full_tensor()`` all-gathers each parameter (with one rank it is a view, no copy); rank 0
        keeps CPU tensors. A tied output layer travels and is saved once, as the embedding.
        """
        tensors = {}
        for name, value in self.model.state_dict().items():
            full = value.full_tensor() if hasattr(value, "full_tensor") else value
            if self.rank == 0:
                tensors[name] = full.detach().cpu()
        if self.model.config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        return tensors

    def publish_weights(self, version: int):
        """Put the full weights into the object store once; rank 0 returns the ObjectRef.

        The gathered tensors are copied into a reused staging buffer (fresh memory would cost page
        faults several times the copy), then one ``ray.put``: two copies in all.
        """
        import ray

        tensors = self._full_state_dict()
        if self.rank != 0:
            return None
        bundle = flatten_state_dict(tensors, version, out=getattr(self, "_staging", None))
        self._staging = bundle.buffer
        return ray.put(bundle)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self._full_state_dict()

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self, directory: str) -> None:
        """Write model (HF directory), optimizer and scheduler into ``directory`` (rank 0 writes)."""
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        model_sd = self._full_state_dict()
        optim_sd = get_optimizer_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.rank != 0:
            return
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model_sd.items()}, out / MODEL_FILE, metadata={"format": "pt"})
        self.model.config.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        torch.save(optim_sd, out / OPTIMIZER_FILE)
        torch.save(self.scheduler.state_dict(), out / SCHEDULER_FILE)

    def _load_training_state(self, directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        optim_sd = torch.load(directory / OPTIMIZER_FILE, weights_only=False) if self.rank == 0 else {}
        set_optimizer_state_dict(
            self.model, self.optimizer, optim_state_dict=optim_sd,
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
        )
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=False))

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class LearnerGroup:
    """Owns the learner actors and their placement group; fans each call out to every rank.

    Inside a placement group that already holds the whole run (a Ray Tune trial reserves one bundle
    per actor with a ``PlacementGroupFactory``) the learners take bundles of that group instead:
    a nested group would reserve the same resources twice, outside the trial's reservation.
    """

    def __init__(self, cfg: Config, model_path: str, namespace: str, resume_dir: str | None = None):
        import ray
        from ray.util import get_current_placement_group
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        lc = cfg.learner
        self.placement_group = get_current_placement_group()
        self.owns_placement_group = self.placement_group is None
        if self.owns_placement_group:
            bundle = {"CPU": lc.cpus_per_worker, **({"GPU": lc.gpus_per_worker} if lc.gpus_per_worker else {})}
            self.placement_group = placement_group([bundle] * lc.workers, strategy="PACK", name=f"{namespace}-learners")
            ray.get(self.placement_group.ready())
        remote_cls = ray.remote(Learner)
        self.actors = [
            remote_cls.options(
                name=f"learner-{rank}", namespace=namespace,
                num_cpus=lc.cpus_per_worker, num_gpus=lc.gpus_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    # an enclosing group's bundles are laid out by its owner: any bundle that fits (-1)
                    self.placement_group, placement_group_bundle_index=rank if self.owns_placement_group else -1,
                ),
            ).remote(cfg, rank, lc.workers)
            for rank in range(lc.workers)
        ]
        master = ray.get(self.actors[0].address.remote())
        ray.get([a.setup.remote(master, model_path, resume_dir) for a in self.actors])

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def update(self, samples: list[TrainSample]) -> dict[str, float]:
        """Shard ``samples`` over the ranks (equal counts, padded), step, and sum the ranks' stats."""
        import ray

        shards = shard_evenly(samples, self.world_size)
        normalizer = max(1.0, float(sum(s.weight * s.loss_tokens() for s in samples)))
        results = ray.get([a.update.remote(ray.put(shard), normalizer) for a, shard in zip(self.actors, shards)])
        merged = {k: sum(r[k] for r in results) for k in ("loss", "clipped", "mismatch_kl", "tokens")}
        tokens = max(merged.pop("tokens"), 1.0)
        return {
            "loss": merged["loss"],
            "clip_fraction": merged["clipped"] / tokens,
            "mismatch_kl": merged["mismatch_kl"] / tokens,
            "grad_norm": results[0]["grad_norm"],
            "lr": results[0]["lr"],
        }

    def publish_weights(self, version: int):
        import ray

        return ray.get([a.publish_weights.remote(version) for a in self.actors])[0]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        import ray

        return ray.get([a.full_state_dict.remote() for a in self.actors])[0]

    def save(self, directory: str) -> None:
        import ray

        ray.get([a.save.remote(directory) for a in self.actors])

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        try:
            ray.get([a.shutdown.remote() for a in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - best effort: the actors are killed next anyway
            pass
        for actor in self.actors:
            ray.kill(actor)
        if self.owns_placement_group:
            remove_placement_group(self.placement_group)


def shard_evenly(samples: list[TrainSample], world_size: int) -> list[list[TrainSample]]:
    """Round-robin ``samples`` over ranks, padded with zero-weight samples to equal counts.

    Equal counts give every rank the same number of micro-batches, so FSDP's collectives line up.
    """
    per_rank = max(1, math.ceil(len(samples) / world_size))
    shards = [samples[r::world_size] for r in range(world_size)]
    return [s + [padding_sample() for _ in range(per_rank - len(s))] for s in shards]
