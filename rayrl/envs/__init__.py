"""Environments: the protocol rollout workers run, and the registry that resolves ``[[env]] id``."""

from rayrl.envs.base import Environment, Example
from rayrl.envs.registry import make_env

__all__ = ["Environment", "Example", "make_env"]
