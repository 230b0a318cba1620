"""The process layout of a multi-GPU run under ``torchrun``: groups, devices, and the DiT built for them.

World = ``cfg x ulysses`` ranks, laid out as a ``(cfg, ulysses)`` device mesh: the ranks of one Ulysses group
are consecutive (``rank = c * ulysses + u``), so on one machine they share the fastest links; rank ``u`` of
each Ulysses group forms a CFG group. ``--dit-fsdp`` shards the DiT over the whole world.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import InputError
from .sequence_parallel import check_heads_divisible

BACKENDS = ("auto", "nccl", "gloo")
CFG_DEGREES = (2, 3)


@dataclass(frozen=True)
class ParallelLayout:
    """How the ranks of one run share the work (``ulysses * cfg`` processes)."""

    ulysses: int = 1
    cfg: int = 1
    fsdp: bool = False
    backend: str = "auto"

    @property
    def world(self) -> int:
        return self.ulysses * self.cfg

    def describe(self) -> str:
        parts = [f"{self.world} processes: Ulysses sequence parallel x{self.ulysses}",
                 f"CFG parallel x{self.cfg}", "DiT sharded with FSDP2" if self.fsdp else "DiT replicated"]
        return ", ".join(parts)


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun tells each process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int
    world: int
    local_rank: int

    @classmethod
    def from_environ(cls) -> "LaunchEnv":
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def resolve_backend(layout: ParallelLayout, device_type: str) -> str:
    """nccl on CUDA, gloo on CPU; nccl asked for without CUDA is refused before anything starts."""
    if layout.backend == "nccl" and (device_type != "cuda" or not torch.cuda.is_available()):
        raise InputError("--dist-backend nccl needs CUDA GPUs (NCCL runs only between CUDA devices), but "
                         + ("this machine has no usable CUDA device" if not torch.cuda.is_available()
                            else "the run uses --device cpu") + "; use --dist-backend gloo to run on the CPU")
    if layout.backend == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    return layout.backend


def check_layout(layout: ParallelLayout, env: LaunchEnv, *, batched_conditions: bool = True,
                 num_heads: int | None = None) -> None:
    """Every layout problem as an :class:`InputError`, before a process group or a weight exists."""
    if layout.ulysses < 1:
        raise InputError(f"--ulysses must be >= 1; got {layout.ulysses}")
    if layout.cfg not in (1, *CFG_DEGREES):
        raise InputError(f"--cfg-parallel takes {' or '.join(map(str, CFG_DEGREES))} ranks; got {layout.cfg}")
    if layout.world != env.world:
        how = (f"torchrun --nproc_per_node={layout.world} -m steadydancer_core animate ..." if env.world == 1
               else f"--ulysses and --cfg-parallel whose product is {env.world}")
        raise InputError(f"the layout needs {layout.world} process{'es' if layout.world > 1 else ''} (--ulysses "
                         f"{layout.ulysses} x CFG {layout.cfg}) but {env.world} {'is' if env.world == 1 else 'are'} "
                         f"running; use {how}")
    if layout.backend != "auto" and layout.world == 1:
        raise InputError(f"--dist-backend {layout.backend} applies to multi-process runs (--ulysses and/or "
                         "--cfg-parallel under torchrun); a single process needs no backend")
    if layout.fsdp and layout.world == 1:
        raise InputError("--dit-fsdp shards the DiT over several processes; run under torchrun with --ulysses "
                         "and/or --cfg-parallel")
    if layout.cfg > 1 and not batched_conditions:
        raise InputError("--cfg-parallel splits the batched DC-CFG passes over ranks; it cannot be combined "
                         "with --sequential-conditions")
    if num_heads is not None:
        try:
            check_heads_divisible(num_heads, layout.ulysses)
        except ValueError as err:
            raise InputError(str(err)) from err


class ParallelSession:
    """The process group and sub-groups of one run, and the rank-0 -> workers command channel."""

    def __init__(self, layout: ParallelLayout, env: LaunchEnv, device: torch.device) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self.layout = layout
        self.env = env
        self.device = device
        backend = resolve_backend(layout, device.type)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timedelta(minutes=30),
                                    device_id=device if device.type == "cuda" else None)
        mesh = init_device_mesh(device.type, (layout.cfg, layout.ulysses), mesh_dim_names=("cfg", "ulysses"))
        self.ulysses_group = mesh.get_group("ulysses")
        self.cfg_group = mesh.get_group("cfg")
        self.world_mesh = init_device_mesh(device.type, (layout.world,)) if layout.fsdp else None

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    # -- commands from rank 0 ---------------------------------------------------------------------

    def send(self, command: str, **payload: Any) -> None:
        """Rank 0: tell every worker what to do next (pickled; CPU tensors only)."""
        dist.broadcast_object_list([(command, payload)], src=0)

    def receive(self) -> tuple[str, dict[str, Any]]:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- the DiT ----------------------------------------------------------------------------------

    def build_dit(self, path: str | Path, dtype: torch.dtype) -> torch.nn.Module:
        """Load the DiT for this layout on every rank (a collective under FSDP2)."""
        from ..model.checkpoint import load_dit
        from .fsdp import load_dit_fsdp

        if self.layout.fsdp:
            return self.build_dit_module(load_dit_fsdp(path, self.world_mesh, dtype=dtype, device=self.device))
        return self.build_dit_module(load_dit(path, dtype=dtype, device=self.device))

    def build_dit_module(self, dit: torch.nn.Module) -> torch.nn.Module:
        """``dit`` (loaded, or FSDP-sharded by :func:`~.fsdp.load_dit_fsdp`) split over this layout's groups."""
        from .cfg_parallel import CFGParallelDiT
        from .sequence_parallel import enable_sequence_parallel

        if self.layout.ulysses > 1:
            enable_sequence_parallel(dit, self.ulysses_group)
        if self.layout.cfg > 1:
            return CFGParallelDiT(dit, self.cfg_group, always_run=self.layout.fsdp).eval()
        return dit

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def rank_device(device: torch.device, env: LaunchEnv) -> torch.device:
    """Each process's device: ``cuda:LOCAL_RANK`` for a CUDA run (an explicit index is an error), else CPU."""
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise InputError(f"--device {device}: under torchrun every process takes cuda:LOCAL_RANK; pass --device cuda "
                         "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
    if env.local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {env.local_rank} but this machine has {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", env.local_rank)
