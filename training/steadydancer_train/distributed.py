"""Process group, device, and wrapping on PyTorch's own engines: FSDP2 (``fully_shard``) or DDP.

Nothing here communicates by hand: gradients are reduced by FSDP2/DDP, full state dicts come from
``torch.distributed.checkpoint.state_dict.get_model_state_dict`` (a collective: every rank must call it).
"""
from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.checkpoint import checkpoint

from .config import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(device_choice: str, local_rank: int) -> torch.device:
    """``compute.device`` (auto | cpu | cuda) for the process with ``local_rank``."""
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("compute.device is 'cuda' but no CUDA device is available (use auto or cpu)")
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def init_distributed(device_choice: str, backend_choice: str) -> DistInfo:
    """Join the torchrun group when launched by torchrun (WORLD_SIZE > 1); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = backend_choice if backend_choice != "auto" else ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend=backend, device_id=device if use_cuda else None)
    return DistInfo(rank, world, local_rank, device)


def check_sequence_parallel(size: int, world: int, num_heads: int) -> None:
    """``compute.sequence_parallel``: a group size that divides the world and the DiT's head count."""
    from steadydancer_core.parallel.sequence_parallel import check_heads_divisible

    if size < 1 or world % size:
        raise ConfigError(f"compute.sequence_parallel ({size}) must be >= 1 and divide the number of processes "
                          f"({world})")
    try:
        check_heads_divisible(num_heads, size)
    except ValueError as err:
        raise ConfigError(f"compute.sequence_parallel: {err}") from err


def sequence_parallel_group(info: DistInfo, size: int) -> dist.ProcessGroup | None:
    """The Ulysses group of this rank: ``size`` consecutive ranks (a (data, sequence) mesh); None when off."""
    if size == 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(info.device.type, (info.world // size, size), mesh_dim_names=("data", "sequence"))
    return mesh.get_group("sequence")


def resolve_strategy(choice: str, stage: int, world: int) -> str:
    if choice == "auto":
        if world == 1:
            return "none"
        return "fsdp2" if stage == 2 else "ddp"
    if choice in ("fsdp2", "ddp") and world == 1:
        # FSDP2 on one process would only add overhead; DDP needs a group. Same math either way.
        return "none"
    return choice


def enable_gradient_checkpointing(blocks: Iterable[torch.nn.Module]) -> None:
    """Recompute each transformer block in backward. The block's ``forward`` is replaced on the
    instance (names and FSDP hooks, which live in ``__call__``, are unchanged); dropout masks are
    reproduced because checkpoint restores the RNG state."""
    for block in blocks:
        original = block.forward
        block.forward = functools.partial(checkpoint, original, use_reentrant=False)  # type: ignore[method-assign]


def shard_fsdp2(model: torch.nn.Module, blocks: Iterable[torch.nn.Module], info: DistInfo,
                param_dtype: torch.dtype, reshard_after_forward: bool = True) -> torch.nn.Module:
    """One FSDP2 unit per block plus the root (which keeps every small module, incl. the pose branch, so a
    forward that skips them never desynchronises collectives). fp32 reduce: master weights stay fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world,))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def no_sync(model: torch.nn.Module, active: bool) -> ContextManager[Any]:
    """Skip DDP's all-reduce for all but the last backward of a step (FSDP2 and single process: no-op;
    FSDP2 reduce-scatters every backward, which is correct, just not minimal)."""
    if active and hasattr(model, "no_sync"):
        return model.no_sync()
    return nullcontext()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU state dict on every rank. Collective under FSDP2: call on all ranks."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(model, options=options)


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a logged scalar over ranks (display only; gradients are reduced by the engine)."""
    if not info.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return float(tensor) / info.world


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
