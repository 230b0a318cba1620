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

from ..model.checkpoint import check_is_steadydancer, check_state_dict_shapes, load_state_dict, read_checkpoint_config
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
    config = read_checkpoint_config(path)
    dit = shard_dit(SteadyDancerDiT(config, dtype=dtype, device="meta"), mesh)
    dit.to_empty(device=device)
    state = load_state_dict(path)  # memory-mapped views in the stored dtype
    check_is_steadydancer(state.keys(), str(path))
    targets = dict(dit.state_dict())
    check_state_dict_shapes({k: t.shape for k, t in targets.items()}, {k: t.shape for k, t in state.items()}, str(path))
    for name, target in targets.items():
        full = state[name].to(device=device, dtype=target.dtype)
        if isinstance(target, DTensor):
            target.copy_(distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None))
        else:
            target.copy_(full)
    return dit.eval()
