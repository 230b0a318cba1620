"""The collectives of multi-GPU inference, on ``torch.distributed``, with autograd and a byte count.

Every tensor handed to a collective goes through :func:`record`, so a run can report the bytes it passed to
``all_to_all_single`` / ``all_gather_single`` per rank and compare them with the formulas of
``benchmarks/bench_multi_gpu_comm.py``. The autograd rules make the same code usable from training:

* all-to-all (Ulysses head/sequence exchange): its gradient is the inverse all-to-all;
* all-gather of the output tokens: every rank of the group computes the same loss from the gathered
  tensor, so the gradient of a rank's own tokens is its slice of the incoming gradient (no communication);
  gradients of the weights are then partial sums over the group's ranks (see ``sequence_parallel``).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

ProcessGroup = dist.ProcessGroup
# torch 2.13 renamed all_gather_into_tensor (now deprecated) to all_gather_single; older releases have only the first.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class CommCounter:
    """Bytes of the input tensors passed to each kind of collective by this rank (and the call counts)."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, op: str, tensor: torch.Tensor) -> None:
        self.bytes[op] += tensor.numel() * tensor.element_size()
        self.calls[op] += 1

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


_counters: list[CommCounter] = []


@contextmanager
def count_collectives() -> Iterator[CommCounter]:
    """Count what this process passes to the collectives of this package inside the block."""
    counter = CommCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def record(op: str, tensor: torch.Tensor) -> None:
    for counter in _counters:
        counter.add(op, tensor)


def group_size(group: ProcessGroup | None) -> int:
    return dist.get_world_size(group)


def group_rank(group: ProcessGroup | None) -> int:
    return dist.get_rank(group)


def _all_to_all(chunks: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``chunks[i]`` goes to rank i; returns ``out[i]`` = what rank i sent here (dim 0 = the world)."""
    chunks = chunks.contiguous()
    record("all_to_all_single", chunks)
    out = torch.empty_like(chunks)
    dist.all_to_all_single(out, chunks, group=group)
    return out


def _sequence_to_heads(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``[..., B, L_local, H, d]`` -> ``[..., B, N * L_local, H / N, d]`` (leading dims kept)."""
    n = group_size(group)
    *lead, b, length, heads, d = x.shape
    k = len(lead)
    # [..., B, L, N, H/N, d] -> [N, ..., B, L, H/N, d]: chunk j (heads of rank j) goes to rank j.
    chunks = x.reshape(*lead, b, length, n, heads // n, d).movedim(k + 2, 0)
    received = _all_to_all(chunks, group)  # dim 0 = source rank = its token block
    # [N, ..., B, L, H/N, d] -> [..., B, N, L, H/N, d] -> [..., B, N*L, H/N, d]
    return received.movedim(0, k + 1).reshape(*lead, b, n * length, heads // n, d)


def _heads_to_sequence(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``[B, N * L_local, H / N, d]`` -> ``[B, L_local, H, d]`` (the inverse of :func:`_sequence_to_heads`)."""
    n = group_size(group)
    *lead, b, length, heads, d = x.shape
    k = len(lead)
    chunks = x.reshape(*lead, b, n, length // n, heads, d).movedim(k + 1, 0)  # chunk j = tokens of rank j
    received = _all_to_all(chunks, group)  # dim 0 = source rank = its head block
    return received.movedim(0, k + 2).reshape(*lead, b, length // n, n * heads, d)


class SequenceToHeads(torch.autograd.Function):
    """All-to-all: tokens split -> heads split; backward is the inverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _sequence_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _heads_to_sequence(grad, ctx.group), None


class HeadsToSequence(torch.autograd.Function):
    """All-to-all: heads split -> tokens split; backward is the inverse exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _heads_to_sequence(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _sequence_to_heads(grad, ctx.group), None


def all_gather_rows(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """``[R, ...]`` on every rank -> ``[N * R, ...]`` in rank order (no autograd; inference)."""
    x = x.contiguous()
    record("all_gather_single", x)
    out = x.new_empty((group_size(group) * x.shape[0], *x.shape[1:]))
    _all_gather_single(out, x, group=group)
    return out


class GatherTokens(torch.autograd.Function):
    """All-gather of ``[B, L_local, C]`` along the tokens -> ``[B, N * L_local, C]``.

    Backward: this rank's slice of the gradient (every rank computes the same loss from the gathered
    tokens, see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        n, rank = group_size(group), group_rank(group)
        ctx.slice = (rank * x.shape[1], (rank + 1) * x.shape[1])
        gathered = all_gather_rows(x.transpose(0, 1), group)  # [N*L, B, C]
        return gathered.transpose(0, 1).contiguous() if n > 1 else x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        start, stop = ctx.slice
        return grad[:, start:stop], None
