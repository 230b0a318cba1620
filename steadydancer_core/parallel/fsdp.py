"""``--dit-fsdp``: the DiT's weights sharded over all ranks with FSDP2 (``torch.distributed.fsdp.fully_shard``).

One FSDP unit per transformer block plus the root (embeddings, pose branch, head), as in training
(``training/steadydancer_train/distributed.py``): a rank holds 1/N of every block and all-gathers one block
at a time during the forward (``reshard_after_forward=True``), so the 33 GB of bf16 14B weights become
33/N GB per GPU plus one block and the root unsharded while they run.

Loading: the model is built on the meta device and sharded before any weight exists; then every rank reads
the checkpoint memory-mapped, one tensor at a time, and keeps its own shard (``distribute_tensor`` with
``src_data_rank=None`` slices locally, no communication). Ranks on one machine share the page cache, so the
file is read from disk once and no rank ever holds more than one full tensor beyond its shards.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from ..model.checkpoint import _OpenCheckpoint, check_is_steadydancer, check_state_dict_shapes, read_checkpoint_config
from ..model.dit import SteadyDancerDiT


def shard_dit(dit: SteadyDancerDiT, mesh: DeviceMesh) -> SteadyDancerDiT:
    """One FSDP2 unit per block, then the root; parameters keep their names."""
    for block in dit.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(dit, mesh=mesh, reshard_after_forward=True)
    return dit


@torch.no_grad()
def load_dit_fsdp(path: str | Path, mesh: DeviceMesh, *, dtype: torch.dtype, device: torch.device) -> SteadyDancerDiT:
    """A sharded ``SteadyDancerDiT`` from a checkpoint (any layout ``load_dit`` reads); call on every rank."""
    with _OpenCheckpoint(path) as ckpt:
        shapes = ckpt.parameter_shapes
        check_is_steadydancer(shapes.keys(), str(ckpt.path))
        dit = shard_dit(SteadyDancerDiT(read_checkpoint_config(path), dtype=dtype, device="meta"), mesh)
        dit.to_empty(device=device)
        targets = dict(dit.state_dict())
        check_state_dict_shapes({k: t.shape for k, t in targets.items()}, shapes, str(ckpt.path))
        for name, target in targets.items():
            # One full tensor at a time, read (and dequantised, for scaled fp8) straight into the target dtype.
            full = ckpt.tensor(name, target.dtype, device)
            if isinstance(target, DTensor):
                target.copy_(distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None))
            else:
                target.copy_(full)
    return dit.eval()
