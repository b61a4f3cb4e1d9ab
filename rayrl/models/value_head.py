"""PPO's value head: one linear layer on the policy's last hidden state, V(s) per position.

It shares the policy's trunk (the value loss trains the trunk too, weighted by ``algorithm.vf_coef``) and
is small, so every learner rank holds all of it (no sharding): its gradient is summed over the ranks by
hand. Checkpoints hold it beside the policy (``VALUE_HEAD_FILE``, its optimizer in
``VALUE_OPTIMIZER_FILE``); replicas and exports never need it.
"""

from __future__ import annotations

from pathlib import Path

import torch


class ValueHead(torch.nn.Module):
    """``hidden [..., H] -> value [...]``, float32, initialised to 0 (no opinion before any update)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def reduce_gradients(module: torch.nn.Module, world_size: int) -> None:
    """Sum a replicated module's gradients over the process group, divided by ``world_size``: each rank's
    loss was scaled by ``world_size`` (to undo FSDP's mean), so the result is the whole batch's gradient."""
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size)


def save_value_head(head: ValueHead, optimizer: torch.optim.Optimizer, folder: Path, weights: str, state: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, folder / weights)
    torch.save(optimizer.state_dict(), folder / state)


def load_value_head(head: ValueHead, optimizer: torch.optim.Optimizer, folder: Path, weights: str, state: str) -> bool:
    """Load the head and its optimizer from ``folder`` if it holds them; False when it does not (a checkpoint
    of another algorithm, or a model folder: the head starts fresh)."""
    from safetensors.torch import load_file

    if not (folder / weights).is_file():
        return False
    head.load_state_dict(load_file(folder / weights))
    if (folder / state).is_file():
        optimizer.load_state_dict(torch.load(folder / state, weights_only=False))
    return True
