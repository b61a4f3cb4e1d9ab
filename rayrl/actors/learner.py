"""The Learner (one rank) and the LearnerGroup that owns the ranks.

With ``learner.workers = L >= 1`` the group starts L Learner actors in one placement group; with L > 1
they form a torch.distributed group (gloo on CPU, NCCL on GPU) and shard the policy with FSDP2
(``fully_shard`` per decoder layer, then the root). With ``learner.workers = 0`` the group runs one
Learner in the calling process (no actors, no Ray needed), as RLlib's LearnerGroup does with zero
remote learners: the RL step then runs and is tested in process. Every Learner method below is a
collective: the group calls it on all ranks at once. The step's maths is ``rayrl.algorithms.grpo``.
"""

from __future__ import annotations

import math
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayrl.actors.waiting import wait_for
from rayrl.algorithms.grpo import (
    LossSettings, TrainSample, collate, policy_loss, sequence_logits, sequence_outputs, set_loss_weights,
    shard_evenly, sum_stats,
)
from rayrl.algorithms.sampling import token_logprobs
from rayrl.config import Config
from rayrl.engines.weights import WeightBundle, flatten_state_dict, with_fingerprint
from rayrl.errors import CheckpointError, ConfigError
from rayrl.models.source import ModelSource, local_model_dir
from rayrl.models.value_head import ValueHead, load_value_head, reduce_gradients, save_value_head
from rayrl.storage.checkpoints import (
    ADAPTER_FILE, DEEPSPEED_DIR, MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, VALUE_HEAD_FILE, VALUE_OPTIMIZER_FILE,
)


# a LoRA factor of a linear layer in a peft model's parameters: (module path, "lora_A" | "lora_B")
PEFT_PREFIX = "base_model.model."
LORA_FACTOR = re.compile(rf"^{re.escape(PEFT_PREFIX)}(.+)\.(lora_A|lora_B)\.default\.weight$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class AdapterDisabled(torch.nn.Module):
    """A LoRA model seen with its adapter off: the base model, as the KL reference, without a second copy."""

    def __init__(self, peft_model: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not a submodule: its parameters stay the policy's

    def forward(self, **inputs):
        with self.peft_model.disable_adapter():
            return self.peft_model(**inputs)


class Learner:
    """One rank of the learner group: its shard of the policy, the optimizer and the scheduler."""

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.distributed = world_size > 1
        torch.set_num_threads(cfg.learner.threads)
        self.device = torch.device("cuda" if cfg.learner.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master: tuple[str, int] | None, model: ModelSource | str,
              resume: ModelSource | str | None = None) -> None:  # fmt: skip
        """Load the model (sharded with FSDP2 across ranks when distributed), build optimizer and scheduler;
        from checkpoint ``resume`` (weights, optimizer, scheduler) when given. With a KL penalty
        (``algorithm.kl_coef``) the base ``model`` is also loaded, frozen, as the reference (sharded like the
        policy, so each rank holds 1/L of it)."""
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        base_dir = local_model_dir(model)
        resume_dir = local_model_dir(resume) if resume is not None else None
        source = resume_dir or base_dir
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.engine = None  # learner.strategy = "deepspeed": the DeepSpeed engine around self.model
        deepspeed = self.cfg.learner.strategy == "deepspeed"
        mesh = self._init_group(master) if self.distributed or deepspeed else None
        if deepspeed:
            mesh = None  # DeepSpeed partitions; no fully_shard
        self.lora = self.cfg.lora.enabled
        if self.lora:  # the base model plus an adapter: the checkpoint's, lora.adapter_path's, or a fresh one
            self.model = self._load(base_dir, mesh, adapter=resume_dir or self.cfg.lora.adapter_path or "").train()
        else:
            self.model = self._load(source, mesh).train()
        self.reference = None
        if self.cfg.algorithm.kl_coef > 0:  # with LoRA the reference is the base: the model with its adapter off
            self.reference = (AdapterDisabled(self.model) if self.lora
                              else self._load(base_dir, mesh).eval().requires_grad_(False))
        self.loss_settings = LossSettings.from_config(
            self.cfg.algorithm, self.cfg.sampling.temperature, self.cfg.sampling.top_p
        )
        o = self.cfg.optim
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # the adapter only, with LoRA
        self.optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        warmup = o.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)) if warmup else 1.0
        )
        if deepspeed:
            self._wrap_deepspeed()
        self.value_head = None
        if self.cfg.algorithm.name == "ppo":
            self._setup_value_head(resume_dir)
        if resume_dir:
            self._load_training_state(Path(resume_dir))

    def _wrap_deepspeed(self) -> None:
        """learner.strategy = "deepspeed": ZeRO (``learner.zero_stage``) around the model and the AdamW above.
        Gradient clipping is DeepSpeed's; the learning-rate schedule stays ours (it acts on the same param
        groups). Its shared-memory all-reduce op compiles once into TORCH_EXTENSIONS_DIR (default: rayrl's cache)."""
        import logging
        import os

        from rayrl.models.loading import cache_root

        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root(self.cfg) / "torch_extensions"))
        # Ray gives each learner actor its own device(s): device 0 is this rank's (Ray Train sets its own)
        os.environ.setdefault("LOCAL_RANK", "0")
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        lc = self.cfg.learner
        config = {
            "train_micro_batch_size_per_gpu": lc.micro_batch_size, "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": lc.zero_stage}, "gradient_clipping": self.cfg.optim.max_norm,
            "bf16": {"enabled": self.cfg.model.dtype == "bfloat16"}, "fp16": {"enabled": self.cfg.model.dtype == "float16"},
            "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=self.model, optimizer=self.optimizer, config=config,
                                               dist_init_required=False)

    @property
    def net(self) -> torch.nn.Module:
        """What forward passes go through: the DeepSpeed engine (which gathers ZeRO-3 parameters), else the model."""
        return self.engine if self.engine is not None else self.model

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate ``loss``'s gradient (scaled by the world size: FSDP and DeepSpeed average over ranks, the
        batch's loss is their sum); gradients are reduced across ranks at the ``last`` micro-batch only."""
        if self.engine is not None:
            self.engine.set_gradient_accumulation_boundary(last)
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            return
        if self.distributed:
            self.model.set_requires_gradient_sync(last)
        (loss * self.world_size).backward()

    def _setup_value_head(self, resume_dir: str | None) -> None:
        """PPO's value head and its optimizer: the checkpoint's when resuming (or starting from a PPO
        checkpoint), else fresh (zero output), the same on every rank."""
        o, a = self.cfg.optim, self.cfg.algorithm
        self.value_head = ValueHead(self.model.config.hidden_size).to(self.device)
        self.value_optimizer = torch.optim.AdamW(
            self.value_head.parameters(), lr=a.value_lr or 10 * o.lr, betas=o.betas, weight_decay=0.0
        )
        if resume_dir and not load_value_head(
            self.value_head, self.value_optimizer, Path(resume_dir), VALUE_HEAD_FILE, VALUE_OPTIMIZER_FILE
        ) and self.rank == 0:
            import logging

            logging.getLogger("rayrl").warning("%s holds no value head: PPO starts a fresh one", resume_dir)

    def _load(self, directory: str, mesh, adapter: str | None = None) -> torch.nn.Module:
        """A causal LM from ``directory`` on this rank's device, sharded over ``mesh`` (FSDP2) if given. With
        ``adapter`` a LoRA adapter wraps it (peft): loaded from that folder, or fresh for ""."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, self.cfg.model.dtype))
        if adapter is not None:
            model = self._with_adapter(model, adapter)
        model.to(self.device)
        if mesh is not None:
            from torch.distributed.fsdp import fully_shard

            inner = model.get_base_model() if adapter is not None else model
            for layer in inner.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
        return model

    def _with_adapter(self, model: torch.nn.Module, adapter: str) -> torch.nn.Module:
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            lc = self.cfg.lora
            torch.manual_seed(self.cfg.seed)  # the fresh adapter's initialisation, the same on every rank and run
            model = get_peft_model(model, LoraConfig(
                r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
                task_type="CAUSAL_LM",
            ))
        # replicas merge B @ A into linear layers' weights: an adapter on anything else would silently not travel
        other = [n for n, _ in model.named_parameters() if "lora_" in n and not LORA_FACTOR.match(n)]
        if other:
            raise ConfigError(
                f"lora: adapter tensors of a kind replicas cannot merge ({', '.join(other[:3])}): adapt linear "
                f"layers only (lora.target_modules = \"all-linear\" or names such as [\"q_proj\", \"v_proj\"]"
                + (f"; {adapter} holds such an adapter)" if adapter else ")")
            )
        return model

    def _init_group(self, master: tuple[str, int] | None):
        """Join the learners' process group (gloo on CPU, NCCL on GPU); the device mesh over its ranks."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if dist.is_initialized():  # a Ray Train worker (rayrl sft): its trainer formed the group
            return init_device_mesh(self.device.type, (self.world_size,))
        if master is None:
            raise ValueError("a distributed learner needs the master address of its group")
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://{master[0]}:{master[1]}", rank=self.rank, world_size=self.world_size
        )
        return init_device_mesh(self.device.type, (self.world_size,))

    # ---- training -------------------------------------------------------------------------
    def update(self, samples: list[TrainSample]) -> dict[str, float]:
        """``algorithm.epochs`` optimizer steps over this rank's samples, weighted for the whole batch
        (``set_loss_weights``). Statistics are summed over micro-batches and epochs (``loss`` and
        ``grad_norm``: averaged over epochs)."""
        mbs = self.cfg.learner.micro_batch_size
        micro_batches = [samples[i : i + mbs] for i in range(0, len(samples), mbs)]
        batches = [collate(micro, self.pad_id) for micro in micro_batches]
        epochs = self.cfg.algorithm.epochs
        stats, grad_norms = [], []
        lr = self.scheduler.get_last_lr()[0]
        reference = self.reference if self.loss_settings.kl_coef else None  # kl_in = "reward": the driver's
        for _ in range(epochs):
            for i, cpu_batch in enumerate(batches):
                batch = {k: v.to(self.device) for k, v in cpu_batch.items()}
                loss, micro_stats = policy_loss(self.net, batch, self.loss_settings, reference, self.value_head)
                self._backward(loss, last=i == len(batches) - 1)
                stats.append({"loss": loss.detach() / epochs, **micro_stats})
            grad_norms.append(self._step())
            if not math.isfinite(grad_norms[-1]):  # skipped: the later epochs would meet the same numbers
                break
        skipped = not math.isfinite(grad_norms[-1])
        return {**sum_stats(stats), "grad_norm": float(np.mean(grad_norms)), "lr": lr, "skipped_update": float(skipped)}

    def supervised_update(self, samples: list[TrainSample], train: bool = True) -> float:
        """Supervised fine-tuning (``rayrl sft``): this rank's share of the batch's weighted negative
        log-likelihood (``algorithms.sft``); with ``train`` also one optimizer step. Collective."""
        from rayrl.algorithms.sft import supervised_loss

        mbs = self.cfg.learner.micro_batch_size
        batches = [collate(samples[i : i + mbs], self.pad_id) for i in range(0, len(samples), mbs)]
        total = 0.0
        self.model.train(train)
        for i, cpu_batch in enumerate(batches):
            batch = {k: v.to(self.device) for k, v in cpu_batch.items()}
            if not train:
                with torch.no_grad():
                    total += float(supervised_loss(self.net, batch))
                continue
            loss = supervised_loss(self.net, batch)
            self._backward(loss, last=i == len(batches) - 1)
            total += float(loss.detach())
        if train:
            self._step()
        self.model.train()
        return total

    def _step(self) -> float:
        """Clip and apply the accumulated gradients (policy; PPO's value head with its own optimizer);
        returns the policy's gradient norm before clipping. A gradient that is not finite (NaN or inf, on any
        rank: the norm is global) is dropped and nothing steps, neither optimizer nor scheduler: the weights
        stay as they were. (DeepSpeed decides that itself: ZeRO-2 skips such a step; ZeRO-3 skips only in fp16.)"""
        value_norm = 0.0
        if self.value_head is not None:
            if self.distributed:
                reduce_gradients(self.value_head, self.world_size)
            value_norm = float(torch.nn.utils.clip_grad_norm_(self.value_head.parameters(), self.cfg.optim.max_norm))
        if self.engine is not None:  # clips (gradient_clipping), steps (or skips) and zeroes the gradients
            self.engine.step()
            grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
            finite = math.isfinite(grad_norm) and math.isfinite(value_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            finite = math.isfinite(grad_norm) and math.isfinite(value_norm)
            if finite:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.scheduler.step()
            if self.value_head is not None:
                self.value_optimizer.step()
        if self.value_head is not None:
            self.value_optimizer.zero_grad(set_to_none=True)
        return grad_norm if finite else math.nan

    def reference_logprobs(self, samples: list[TrainSample]) -> list[np.ndarray]:
        """The reference model's log-probs of each sample's completion tokens at the sampling temperature
        (``algorithm.kl_in = "reward"``). Collective: every rank forwards the same number of micro-batches."""
        temperature = self.cfg.sampling.temperature
        return self._per_completion_token(
            samples, lambda ids: token_logprobs(sequence_logits(self.reference, ids), ids[:, 1:], temperature)
        )

    def value_estimates(self, samples: list[TrainSample]) -> list[np.ndarray]:
        """PPO: the value head's estimate before each completion token of each sample (float32 arrays).
        Collective, like :meth:`reference_logprobs`."""
        return self._per_completion_token(samples, lambda ids: sequence_outputs(self.net, ids, self.value_head)[1])

    @torch.no_grad()
    def _per_completion_token(self, samples: list[TrainSample], score) -> list[np.ndarray]:
        """``score(ids)`` [B, T - 1] (aligned with the targets ``ids[:, 1:]``) per micro-batch, cut to each
        sample's completion tokens: one float32 array per sample, in order."""
        mbs, out = self.cfg.learner.micro_batch_size, []
        for start in range(0, len(samples), mbs):
            micro = samples[start : start + mbs]
            ids = collate(micro, self.pad_id)["input_ids"].to(self.device)
            values = score(ids).float().cpu().numpy()
            out.extend(values[row, s.completion_start - 1 : len(s.token_ids) - 1] for row, s in enumerate(micro))
        return out

    # ---- weights --------------------------------------------------------------------------
    def full_state_dict(self, adapter_only: bool = False) -> dict[str, torch.Tensor]:
        """The full (unsharded) weights on rank 0; other ranks get {}. Collective.

        ``full_tensor()`` all-gathers each FSDP parameter; rank 0 keeps CPU tensors. A tied output
        layer travels and is saved once, as the embedding. ``adapter_only``: the LoRA tensors alone
        (nothing else is gathered).
        """
        if self.engine is not None and self.cfg.learner.zero_stage == 3:  # partitioned parameters: gather them
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
                return self._state_dict_on_rank0(adapter_only)
        return self._state_dict_on_rank0(adapter_only)

    def _state_dict_on_rank0(self, adapter_only: bool) -> dict[str, torch.Tensor]:
        tensors = {}
        # the adapter's tensors are parameters: walking them skips building the whole model's state dict
        named = ((n, p) for n, p in self.model.named_parameters() if "lora_" in n) if adapter_only else None
        for name, value in named or self.model.state_dict().items():
            full = value.full_tensor() if hasattr(value, "full_tensor") else value
            if self.rank == 0:
                tensors[name] = full.detach().cpu()
        if self.model.config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        return tensors

    def adapter_factors(self) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The LoRA factors by module path (``<module>.lora_A``, ``<module>.lora_B``, full tensors on rank 0)
        and each module's scaling: what replicas merge into their base weights. Collective."""
        tensors = {}
        for name, value in self.full_state_dict(adapter_only=True).items():
            path, factor = LORA_FACTOR.match(name).groups()  # every adapter tensor is one (checked at set-up)
            tensors[f"{path}.{factor}"] = value
        scaling = {
            name.removeprefix(PEFT_PREFIX): float(module.scaling["default"])
            for name, module in self.model.named_modules()
            if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling  # peft's LoRA layers
        }
        return tensors, scaling

    def weight_bundle(self, version: int) -> WeightBundle | None:
        """The full weights (or, with LoRA, the adapter's factors) as one flat buffer plus an index (rank 0;
        None elsewhere). Collective.

        The gathered tensors are copied into a reused staging buffer (fresh memory would cost page
        faults several times the copy); ``ray.put`` of it is then the only other copy.
        """
        tensors, scaling = self.adapter_factors() if self.lora else (self.full_state_dict(), None)
        if self.rank != 0:
            return None
        bundle = flatten_state_dict(tensors, version, out=getattr(self, "_staging", None), adapter_scaling=scaling)
        self._staging = bundle.buffer
        return with_fingerprint(bundle)

    def publish_weights(self, version: int):
        """Put the full weights into the object store once, from this process; rank 0 returns the ObjectRef."""
        import ray

        bundle = self.weight_bundle(version)
        return None if bundle is None else ray.put(bundle)

    # ---- checkpoints ----------------------------------------------------------------------
    def save(self, target: str) -> dict[str, dict] | None:
        """Write model (a Hugging Face folder), optimizer and scheduler into ``target``, a folder or a storage
        URI (written locally first, then uploaded). Collective; rank 0 writes and returns each file's size and
        sha256, which the driver records when it commits the checkpoint."""
        import tempfile

        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        from rayrl.storage.location import file_entries, open_location, upload_files

        model_sd = self.full_state_dict(adapter_only=self.lora)
        if self.lora:  # peft's names for its adapter file (the adapter name dropped)
            from peft import get_peft_model_state_dict

            model_sd = get_peft_model_state_dict(self.model, state_dict=model_sd) if self.rank == 0 else {}
        location = open_location(target)
        optim_sd = None
        if self.engine is not None:  # every rank writes its ZeRO partition (a folder they all see: checked in config)
            self.engine.save_checkpoint(str(Path(location.path) / DEEPSPEED_DIR), tag="state", save_latest=False)
            import torch.distributed as dist

            dist.barrier()
        else:
            optim_sd = get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        if self.rank != 0:
            return None
        poisoned = [name for name, t in model_sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if poisoned:  # never a checkpoint a resume or an eval would trust
            raise CheckpointError(
                f"not saving checkpoint {target}: {len(poisoned)} weight tensor(s) hold NaN or inf ({', '.join(poisoned[:3])}"
                f"{', ...' if len(poisoned) > 3 else ''}); the newest checkpoint saved before is intact: resume from it "
                "with a lower optim.lr"
            )
        with tempfile.TemporaryDirectory(prefix="rayrl-ckpt-") as scratch:
            out = Path(location.path) if location.is_local else Path(scratch)
            out.mkdir(parents=True, exist_ok=True)
            weights_file = ADAPTER_FILE if self.lora else MODEL_FILE
            save_file({k: v.contiguous() for k, v in model_sd.items()}, out / weights_file, metadata={"format": "pt"})
            if self.lora:  # adapter_config.json names the base model folder it adapts
                self.model.peft_config["default"].save_pretrained(out)
            else:
                self.model.config.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            if optim_sd is not None:
                torch.save(optim_sd, out / OPTIMIZER_FILE)
            torch.save(self.scheduler.state_dict(), out / SCHEDULER_FILE)
            if self.value_head is not None:
                save_value_head(self.value_head, self.value_optimizer, out, VALUE_HEAD_FILE, VALUE_OPTIMIZER_FILE)
            names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
            return file_entries(out, names) if location.is_local else upload_files(out, names, location)

    def _load_training_state(self, directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if self.engine is not None:  # DeepSpeed's own checkpoint: module, ZeRO-partitioned optimizer state
            self.engine.load_checkpoint(str(directory / DEEPSPEED_DIR), tag="state", load_lr_scheduler_states=False)
            self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=False))
            return

        optim_sd = torch.load(directory / OPTIMIZER_FILE, weights_only=False) if self.rank == 0 else {}
        set_optimizer_state_dict(
            self.model, self.optimizer, optim_state_dict=optim_sd,
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.distributed),
        )
        self.scheduler.load_state_dict(torch.load(directory / SCHEDULER_FILE, weights_only=False))

    def pid(self) -> int:
        import os

        return os.getpid()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if (self.distributed or self.engine is not None) and dist.is_initialized():
            dist.destroy_process_group()


class LearnerGroup:
    """Owns the learners: actors in a placement group (``learner.workers >= 1``), or one Learner in this
    process (``learner.workers = 0``). Fans each call out to every rank and merges the results.

    Inside a placement group that already holds the whole run (a Ray Tune trial reserves one bundle
    per actor with a ``PlacementGroupFactory``) the learners take bundles of that group instead:
    a nested group would reserve the same resources twice, outside the trial's reservation.
    """

    def __init__(self, cfg: Config, model: ModelSource | str, namespace: str, resume: ModelSource | str | None = None):
        self.cfg = cfg
        self.local: Learner | None = None
        self.actors: list = []
        self.placement_group, self.owns_placement_group = None, False
        if cfg.learner.workers == 0:
            self.local = Learner(cfg, rank=0, world_size=1)
            self.local.setup(None, model, resume)
        else:
            self._start_actors(cfg, namespace)
            # DeepSpeed needs a process group even for one rank
            master = self._call("address")[0] if len(self.actors) > 1 or cfg.learner.strategy == "deepspeed" else None
            self._call("setup", master, model, resume)

    def _start_actors(self, cfg: Config, namespace: str) -> None:
        import ray
        from ray.util import get_current_placement_group
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rayrl.actors.fleet import LEARNER_STRATEGY, keep_off_driver_node, learner_bundle

        lc = cfg.learner
        bundle = learner_bundle(cfg, keep_off_driver_node())
        self.placement_group = get_current_placement_group()
        self.owns_placement_group = self.placement_group is None
        if self.owns_placement_group:
            self.placement_group = placement_group([bundle] * lc.workers, strategy=LEARNER_STRATEGY,
                                                   name=f"{namespace}-learners")
            wait_for([self.placement_group.ready()], f"placing the learners ({lc.workers} x {bundle}: does the cluster "
                     "have them free?)", cfg.fault.ready_timeout_s, ["learner placement group"])
        remote_cls = ray.remote(Learner)
        self.actors = [
            remote_cls.options(
                name=f"learner-{rank}", namespace=namespace,
                num_cpus=bundle["CPU"], num_gpus=lc.gpus_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    # an enclosing group's bundles are laid out by its owner: any bundle that fits (-1)
                    self.placement_group, placement_group_bundle_index=rank if self.owns_placement_group else -1,
                ),
            ).remote(cfg, rank, lc.workers)
            for rank in range(lc.workers)
        ]

    def _call(self, method: str, *args: Any, per_rank: list | None = None) -> list:
        """Call ``method`` on every rank (with ``per_rank[r]`` as the first argument if given); results by rank."""
        if self.local is not None:
            first = [] if per_rank is None else [per_rank[0]]
            return [getattr(self.local, method)(*first, *args)]
        refs = [
            getattr(actor, method).remote(*([] if per_rank is None else [per_rank[r]]), *args)
            for r, actor in enumerate(self.actors)
        ]
        if method in ("setup", "address"):  # loading the model: the replicas' start-up allowance
            timeout = self.cfg.fault.ready_timeout_s
        else:
            timeout = self.cfg.fault.learner_timeout_s
        return wait_for(refs, f"learner call {method}", timeout, [f"learner-{r}" for r in range(len(refs))])

    @property
    def world_size(self) -> int:
        return 1 if self.local is not None else len(self.actors)

    def _shards(self, samples: list[TrainSample]) -> list:
        """``samples`` over the ranks (equal counts, padded); object-store refs when the ranks are actors."""
        shards = shard_evenly(samples, self.world_size)
        if self.local is None:
            import ray

            shards = [ray.put(shard) for shard in shards]  # slices travel through the object store
        return shards

    def update(self, samples: list[TrainSample]) -> dict[str, float]:
        """Weight ``samples`` for the batch's loss (``algorithm.loss_aggregation``), shard them over the ranks,
        step, and merge the ranks' stats."""
        set_loss_weights(samples, self.cfg.algorithm.loss_aggregation, self.cfg.sampling.max_tokens)
        results = self._call("update", per_rank=self._shards(samples))
        keys = ("loss", "clipped", "mismatch_kl", "tokens", "kl_ref", "entropy", "value_loss", "value_error",
                "value_error_sq", "return_sum", "return_sq")
        merged = sum_stats([{k: r[k] for k in keys if k in r} for r in results])
        tokens = max(merged["tokens"], 1.0)
        out = {
            "loss": merged["loss"],
            "clip_fraction": merged["clipped"] / tokens,
            "mismatch_kl": merged["mismatch_kl"] / tokens,
            "entropy": merged["entropy"] / tokens,
            "grad_norm": results[0]["grad_norm"],
            "lr": results[0]["lr"],
            "skipped_update": max(r["skipped_update"] for r in results),  # the same on every rank (a global norm)
        }
        if "kl_ref" in merged:
            out["kl_ref"] = merged["kl_ref"] / tokens
        if "value_loss" in merged:  # PPO: how much of the returns' variance the value head explains
            error_var = merged["value_error_sq"] / tokens - (merged["value_error"] / tokens) ** 2
            return_var = merged["return_sq"] / tokens - (merged["return_sum"] / tokens) ** 2
            out["value/loss"] = merged["value_loss"] / tokens
            if return_var > 1e-12:  # undefined when every return is the same
                out["value/explained_variance"] = 1.0 - error_var / return_var
        return out

    def reference_logprobs(self, samples: list[TrainSample]) -> list[np.ndarray]:
        """The reference's log-probs of each sample's completion tokens, in the order of ``samples``."""
        return self._per_sample("reference_logprobs", samples)

    def value_estimates(self, samples: list[TrainSample]) -> list[np.ndarray]:
        """PPO: the value head's estimates at each sample's completion tokens, in the order of ``samples``."""
        return self._per_sample("value_estimates", samples)

    def _per_sample(self, method: str, samples: list[TrainSample]) -> list[np.ndarray]:
        per_rank = self._call(method, per_rank=self._shards(samples))
        # shard_evenly deals round-robin: sample i went to rank i % W, at position i // W
        return [per_rank[i % self.world_size][i // self.world_size] for i in range(len(samples))]

    def publish_weights(self, version: int):
        """The new weights for the replicas: an ObjectRef, put once. In local mode the bundle is put from
        this process when Ray is up, and returned as is (a WeightBundle) when it is not."""
        if self.local is not None:
            import ray

            bundle = self.local.weight_bundle(version)
            return ray.put(bundle) if ray.is_initialized() else bundle
        return self._call("publish_weights", version)[0]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self._call("full_state_dict")[0]

    def save(self, target: str) -> dict[str, dict]:
        """Write a checkpoint's files into ``target`` (folder or URI); their sizes and sha256 sums."""
        return self._call("save", target)[0]

    def shutdown(self, graceful: bool = True) -> None:
        """Leave the process group (``graceful``: asked of each rank, 30 s at most) and kill the actors."""
        if self.local is not None:
            self.local.shutdown()
            return
        import ray
        from ray.util.placement_group import remove_placement_group

        try:
            if graceful:
                ray.get([a.shutdown.remote() for a in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - best effort: the actors are killed next anyway
            pass
        for actor in self.actors:
            ray.kill(actor)
        if self.owns_placement_group:
            remove_placement_group(self.placement_group)
