"""Configuration: the typed model tree (the single source of defaults), experiment-file loading, and
located error messages for any root model.

``from rayrl.config import Config`` gives the tree; loading lives in :mod:`rayrl.config.loading`.
"""

from rayrl.config.models import (
    AlgorithmConfig, CheckpointConfig, Config, EnvConfig, EvalConfig, InferenceConfig, LearnerConfig, LogConfig,
    LoraConfig, ModelConfig, OptimConfig, RayConfig, RolloutConfig, SamplingConfig, Section, TinyModelConfig, WandbConfig,
    WarmstartConfig,
)

__all__ = [
    "AlgorithmConfig", "CheckpointConfig", "Config", "EnvConfig", "EvalConfig", "InferenceConfig", "LearnerConfig",
    "LogConfig", "LoraConfig", "ModelConfig", "OptimConfig", "RayConfig", "RolloutConfig", "SamplingConfig", "Section",
    "TinyModelConfig", "WandbConfig", "WarmstartConfig",
]
