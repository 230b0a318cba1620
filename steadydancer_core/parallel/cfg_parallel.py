"""CFG parallelism: the DC-CFG passes of a step on different ranks, gathered before the guidance combine.

The pipeline evaluates the 2-3 DC-CFG passes of a step (positive, negative text, negative pose inside the
pose window) as ONE batched DiT call (``conditioning.call_dit``); the samples of a batch are independent
(DESIGN D4). :class:`CFGParallelDiT` wraps the DiT and splits the rows of that call into contiguous chunks
of ``ceil(rows / K)``, one per rank of the CFG group; each rank runs its chunk (through its own Ulysses
group when sequence parallelism is on) and the outputs are all-gathered, so every rank holds all the
predictions when ``DCCFGGuidance`` combines them. With 3 passes on 2 ranks one rank runs two.

A rank that gets no row at a step (1 pass on 2 ranks, or 2 passes on 3) runs nothing, unless the DiT is
FSDP-sharded: then every rank must run the same sequence of forwards (FSDP all-gathers the weights block by
block), so it evaluates a copy of row 0 and drops it; it would otherwise wait for the others anyway.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .comm import ProcessGroup, all_gather_rows, group_rank, group_size


class CFGParallelDiT(nn.Module):
    """``SteadyDancerDiT`` whose batched calls are split by rows over ``group``; same call and output."""

    def __init__(self, dit: nn.Module, group: ProcessGroup, always_run: bool = False) -> None:
        super().__init__()
        self.dit = dit
        self.group = group
        self.world = group_size(group)
        self.rank = group_rank(group)
        self.always_run = always_run

    @property
    def config(self):
        return self.dit.config

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, *conditions: torch.Tensor,
                **options: float) -> torch.Tensor:
        rows = x.shape[0]
        per_rank = -(-rows // self.world)
        start = min(rows, self.rank * per_rank)
        stop = min(rows, start + per_rank)
        timestep = torch.as_tensor(timestep)
        if stop > start:
            local = self._run(x, timestep, conditions, options, slice(start, stop), rows)
        elif self.always_run:
            local = self._run(x, timestep, conditions, options, slice(0, 1), rows)[:0]
        else:
            local = None
        if local is None:  # output shape without running: [0, out_dim, T, H, W]
            local = x.new_empty((0, self.dit.config.out_dim, *x.shape[2:]))
        padded = torch.cat([local, local.new_zeros((per_rank - local.shape[0], *local.shape[1:]))])
        return all_gather_rows(padded, self.group)[:rows]

    def _run(self, x: torch.Tensor, timestep: torch.Tensor, conditions: tuple[torch.Tensor, ...],
             options: dict[str, float], rows: slice, total: int) -> torch.Tensor:
        def take(t: torch.Tensor) -> torch.Tensor:
            return t[rows] if t.ndim and t.shape[0] == total else t

        return self.dit(take(x), take(timestep.flatten()) if timestep.numel() == total else timestep,
                        *(take(c) for c in conditions), **options)
