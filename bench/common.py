"""Shared helpers of the benchmarks: the machine's matmul rate and model FLOP utilisation."""

from __future__ import annotations

import time

import torch


def matmul_flops_per_s(n: int = 2048, repeats: int = 5, threads: int = 2) -> float:
    """Best fp32 matmul rate of this machine (FLOP/s): 2·n³ over the fastest of ``repeats`` runs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / best


def mfu(n_params: int, train_tokens: float, gen_tokens: float, wall_s: float, flops_per_s: float) -> float:
    """Model FLOP utilisation: (6·N·training tokens + 2·N·generated tokens) / (rate × wall time)."""
    return (6 * n_params * train_tokens + 2 * n_params * gen_tokens) / (flops_per_s * wall_s)


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters outside the token embedding and the (possibly tied) output layer."""
    skip = {id(p) for name, p in model.named_parameters() if "embed_tokens" in name or "lm_head" in name}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
