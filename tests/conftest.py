"""Shared fixtures: one real local Ray cluster per session, small configs, a cached warm-started tiny model."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed's CPU ops compile once (about a minute) into the repository's ignored .cache/ (tests/test_deepspeed.py)
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))
# Credentials of the moto S3 server (s3_server below), set before the session's Ray cluster starts so its
# actors inherit them, as the nodes of a real cluster have theirs. Never a developer's real AWS account.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
os.environ.pop("AWS_PROFILE", None)

from rayrl.config import Config  # noqa: E402

# Small enough to run in seconds on 2 cores, big enough to learn (and generalise) 2-digit addition.
# (On 1-digit addition, 100 pairs, it memorises the train pairs and held-out reward never rises.)
SMALL = {
    "name": "test",
    "seed": 0,
    "max_steps": 4,
    "batch_size": 32,
    "rollouts_per_example": 4,
    "seq_len": 16,
    "model": {"name": "builtin:tiny-qwen3", "tiny": {"hidden_size": 64, "num_layers": 2, "intermediate_size": 128}},
    "warmstart": {"enabled": True, "lr": 3e-3, "batch_size": 64, "check_interval": 10, "check_examples": 200,
                  "target_accuracy": 0.3, "max_accuracy": 0.5, "max_steps": 2000},
    "optim": {"lr": 3e-4},
    "sampling": {"max_tokens": 4, "temperature": 1.0},
    "env": [{"id": "arithmetic", "args": {"digits": 2, "eval_size": 1000}}],  # 1000: learning is measured on all
    "inference": {"replicas": 1, "threads": 1, "cpus_per_replica": 0.5},
    "learner": {"workers": 1, "threads": 1, "cpus_per_worker": 0.5, "micro_batch_size": 16},
    "rollout": {"workers": 1},
    "eval": {"interval": 2, "num_examples": 30},
    "ckpt": {"interval": 2, "keep": 0},
    "log": {"progress": False},
}


# Learning assertions must hold with margin on any machine, not on one trajectory: check them under other
# initialisations of the model with RAYRL_TEST_MODEL_SEED=1 (2, ...) .venv/bin/python -m pytest -m slow.
SMALL["model"]["tiny"]["seed"] = int(os.environ.get("RAYRL_TEST_MODEL_SEED", "0"))


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def small_config(model_cache):
    """Factory of small Configs: ``small_config(output_dir, max_steps=6, learner={"workers": 2})``."""

    def make(output_dir: Path | None = None, **extra) -> Config:
        raw = merge(SMALL, extra)
        raw["model"]["cache_dir"] = str(model_cache)
        if output_dir is not None:
            raw["output_dir"] = str(output_dir)
        return Config.model_validate(raw)

    return make


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with logical CPUs to spare (actors use fractions), no dashboard."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def base_model_path(ray_cluster, model_cache) -> str:
    """The warm-started small model, built once per session through the real resolver."""
    from rayrl.models.loading import resolve_base_model

    raw = merge(SMALL, {"model": {"cache_dir": str(model_cache)}})
    path, _ = resolve_base_model(Config.model_validate(raw))
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A small random (not warm-started) tiny model, built in-process without Ray: for environment tests."""
    from rayrl.config import TinyModelConfig
    from rayrl.models.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-random")
    build_tiny_model(path, TinyModelConfig(hidden_size=64, num_layers=2, intermediate_size=128))
    return str(path)


@pytest.fixture
def local_generator(tiny_model_path):
    """Factory of in-process Generators over the real tiny model (no Ray):
    ``local_generator(seq_len=128, max_tokens=8, temperature=1.0, seed=0)``."""
    from transformers import AutoTokenizer

    from rayrl.engines.base import SamplingParams
    from rayrl.engines.transformers_engine import TransformersEngine
    from rayrl.envs.episodes import EngineGenerator

    engine = TransformersEngine.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def make(seq_len: int = 128, max_tokens: int = 8, temperature: float = 1.0, seed: int = 0) -> EngineGenerator:
        return EngineGenerator(engine, tokenizer, seq_len, SamplingParams(max_tokens, temperature, 1.0, seed))

    return make


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free loopback port with bucket 'rayrl'; yields the URI query that reaches it
    (``s3://rayrl/some/prefix?<query>``)."""
    import logging
    import socket

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (the dev extra has it)")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="rayrl")
        yield f"endpoint_override=127.0.0.1:{port}&scheme=http"
    finally:
        server.stop()
