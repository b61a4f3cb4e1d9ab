"""Weights through the object store: one flat byte buffer plus an index, put once per version.

A ``WeightBundle`` holds a contiguous ``numpy.uint8`` buffer, so ``ray.put`` stores it once and every
actor on the node reads it zero-copy from shared memory; tensors are rebuilt as views of it.
bfloat16 travels as raw bytes (numpy has no bfloat16).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    offset: int  # byte offset into the buffer
    nbytes: int


@dataclass(frozen=True)
class WeightBundle:
    version: int
    index: tuple[TensorEntry, ...]
    buffer: np.ndarray  # uint8, contiguous
    # A LoRA adapter instead of full weights: module path (e.g. "model.layers.0.self_attn.q_proj") -> its
    # scaling (alpha / r); the buffer then holds "<module>.lora_A" [r, in] and "<module>.lora_B" [out, r].
    adapter_scaling: dict[str, float] | None = None
    fingerprint: str = ""  # of the tensors as published (``fingerprint``): each replica checks what it loaded

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


ALIGNMENT = 64  # keep every tensor cache-line aligned inside the buffer


def flatten_state_dict(
    state_dict: dict[str, torch.Tensor], version: int, out: np.ndarray | None = None,
    adapter_scaling: dict[str, float] | None = None,
) -> WeightBundle:
    """Copy ``state_dict`` into one aligned byte buffer and describe where each tensor lives.

    ``out``: a buffer from an earlier call to fill again. Reusing it saves the page faults of fresh
    memory, which cost several times the copy itself; safe once the earlier bundle was ``ray.put``
    (the object store holds its own copy).
    """
    entries, offset = [], 0
    for name, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(TensorEntry(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset, nbytes))
        offset += -(-nbytes // ALIGNMENT) * ALIGNMENT
    buffer = out if out is not None and out.nbytes == offset else np.empty(offset, dtype=np.uint8)
    flat = torch.from_numpy(buffer)
    for entry, tensor in zip(entries, state_dict.values()):
        src = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8)
        flat[entry.offset : entry.offset + entry.nbytes].copy_(src)
    return WeightBundle(version=version, index=tuple(entries), buffer=buffer, adapter_scaling=adapter_scaling)


_CHUNK = 7 * 2**22  # 8-byte words summed at a time (a multiple of 7: every 7th word keeps its place)


def _words(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor's raw bytes as int64 words (no copy where its memory allows) and the bytes left over."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    whole = raw.numel() // 8 * 8
    try:
        words = raw[:whole].view(torch.int64)
    except RuntimeError:  # memory not 8-byte aligned: copy it
        words = raw[:whole].clone().view(torch.int64)
    return words, raw[whole:]


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A cheap exact digest of tensor values, 16 hex digits: per tensor, in name order, its name, dtype,
    shape, and the wrapping sums of its raw bytes taken as 8-byte words, of every 7th word, and of the bytes
    left over. Integer sums do not depend on the order of summation, so any process, thread count or device
    gets the same digest for the same bits; one pass over the weights, on the device they are on, no copy."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(tensors):
        tensor = tensors[name]
        words, tail = _words(tensor)
        total = every_7th = 0
        for start in range(0, words.numel(), _CHUNK):
            chunk = words[start : start + _CHUNK]
            total += int(chunk.sum())
            every_7th += int(chunk[3::7].sum())
        rest = int(tail.to(torch.int64).sum()) if tail.numel() else 0
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{total % 2**64}|{every_7th % 2**64}|{rest};".encode())
    return digest.hexdigest()


def with_fingerprint(bundle: WeightBundle) -> WeightBundle:
    """``bundle`` carrying the fingerprint of its tensors (the publisher's, before it travels)."""
    from dataclasses import replace

    return replace(bundle, fingerprint=fingerprint(unflatten(bundle)))


def unflatten(bundle: WeightBundle) -> dict[str, torch.Tensor]:
    """Tensors of ``bundle`` as read-only views of its buffer (no copy). Copy before writing."""
    with warnings.catch_warnings():  # the object store hands out read-only memory; we only read it
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(bundle.buffer, dtype=torch.uint8) if bundle.nbytes else torch.empty(0, dtype=torch.uint8)
    return {
        e.name: flat[e.offset : e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape) for e in bundle.index
    }


def alias_into(model: torch.nn.Module, bundle: WeightBundle) -> bool:
    """Point ``model``'s parameters at the bundle's shared, read-only memory: no copy at all.

    Every replica on a node then reads the one copy in the object store. Only for inference (the
    memory is read-only) and only when every tensor's dtype and device already match; returns False
    (doing nothing) otherwise, so the caller copies instead. The caller must keep ``bundle`` alive.
    """
    tensors = unflatten(bundle)
    params = dict(model.named_parameters())
    missing = [name for name in tensors if name not in params]
    if missing or any(params[n].dtype != t.dtype or params[n].device.type != "cpu" for n, t in tensors.items()):
        return False
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].data = tensor
    return True


def load_into(model: torch.nn.Module, bundle: WeightBundle) -> None:
    """Copy the bundle's tensors into ``model``'s parameters and buffers, in place."""
    own = model.state_dict()
    tensors = unflatten(bundle)
    missing = [name for name in tensors if name not in own]
    if missing:
        raise KeyError(f"weight bundle v{bundle.version} has tensors the model lacks: {missing[:5]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor)


def adapted_weight_names(bundle: WeightBundle) -> list[str]:
    """The base weights an adapter bundle changes: ``<module>.weight`` of every adapted module."""
    return [f"{module}.weight" for module in (bundle.adapter_scaling or {})]


def merge_adapter(base: dict[str, torch.Tensor], bundle: WeightBundle) -> dict[str, torch.Tensor]:
    """The adapted modules' weights ``W = W0 + scaling x B @ A`` (computed in float32, returned in W0's dtype),
    from the base weights ``base`` (``<module>.weight`` -> W0) and an adapter ``bundle``."""
    tensors = unflatten(bundle)
    merged = {}
    for module, scaling in (bundle.adapter_scaling or {}).items():
        w0 = base[f"{module}.weight"]
        delta = tensors[f"{module}.lora_B"].float() @ tensors[f"{module}.lora_A"].float()
        merged[f"{module}.weight"] = (w0.float() + scaling * delta).to(w0.dtype)
    return merged
