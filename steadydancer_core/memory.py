"""Where the DiT's weights live during standalone inference, and how much memory each component needs.

Two options make the 14B DiT fit a 24 GB card (``animate --offload blocks``, ``--dtype fp8``):

* **block offloading** — diffusers' group-offloading hooks (``diffusers.hooks.apply_group_offloading``,
  block level, one block per group, ``use_stream=True``): the 40 transformer blocks stay in pinned CPU
  memory and each is copied to the GPU on a side CUDA stream while the previous block computes, then
  released. The rest of the DiT (embeddings, pose branch, head: 0.24 B parameters) is moved to the GPU
  for each forward by the same hooks.
* **fp8 storage** — every ``nn.Linear`` of the blocks is stored as float8 e4m3 with a per-tensor scale
  and computed in bf16 (``model.fp8_linear``, the scaled-fp8 convention of ``model.fp8_scaled``).

Both combine (fp8 blocks streamed: half the bytes per transfer). :func:`memory_lines` states what each
choice needs, from parameter counts times the bytes of the dtype each tensor is stored in.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import InputError

OFFLOAD_MODES = ("none", "blocks")
#: ``--dtype`` names: the DiT's compute dtype, and whether its block linears are stored in fp8.
DIT_DTYPES: dict[str, tuple[torch.dtype, bool]] = {
    "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False), "fp32": (torch.float32, False),
    "fp8": (torch.bfloat16, True),
}
FP8_STORAGE = torch.float8_e4m3fn
#: Blocks on the GPU at once while streaming: the running one and the one being prefetched.
STREAMED_BLOCKS_RESIDENT = 2
#: Nominal parameter counts of the Wan2.1-I2V auxiliaries, used for the memory estimate when their
#: files are not on disk yet (computed from the architectures: umT5-XXL encoder incl. its 256k x 4096
#: embedding, open-clip ViT-H/14 vision tower, Wan2.1 VAE).
NOMINAL_PARAMETERS = {"text_encoder": 5_680_000_000, "image_encoder": 632_000_000, "vae": 127_000_000}
GIB = 1024**3


@dataclass(frozen=True)
class DiTPlacement:
    """How the DiT's weights are kept: ``offload`` "none" (all on the device) or "blocks"; ``fp8`` storage."""

    offload: str = "none"
    fp8: bool = False

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {OFFLOAD_MODES}; got {self.offload!r}")

    @property
    def plain(self) -> bool:
        return self.offload == "none" and not self.fp8

    def describe(self) -> str:
        return "blocks streamed from pinned CPU memory" if self.offload == "blocks" else "all weights on the device"


# ---- command line ---------------------------------------------------------------------------------

def add_memory_arguments(group: argparse._ArgumentGroup) -> None:
    """``--offload`` (``--dtype fp8`` is one of the ``--dtype`` choices, :data:`DIT_DTYPES`)."""
    group.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                       help="blocks: keep the DiT's transformer blocks in pinned CPU memory and stream each to the "
                            "GPU while the previous one computes (diffusers group offloading; CUDA only)")


def placement_from_args(args: argparse.Namespace, device: torch.device) -> tuple[torch.dtype, DiTPlacement]:
    """(compute dtype, placement) from ``--dtype`` and ``--offload``; default dtype bf16 on GPU, fp32 on CPU."""
    default = "bf16" if device.type == "cuda" else "fp32"
    dtype, fp8 = DIT_DTYPES[args.dtype or default]
    placement = DiTPlacement(offload=args.offload, fp8=fp8)
    if placement.offload == "blocks" and device.type != "cuda":
        raise InputError(f"--offload blocks streams the DiT's blocks from CPU memory to a GPU; with --device "
                         f"{device} the weights are in CPU memory already (drop --offload or use --device cuda)")
    return dtype, placement


# ---- placing a DiT --------------------------------------------------------------------------------

def load_placed_dit(path: str | Path, placement: DiTPlacement, dtype: torch.dtype,
                    device: torch.device) -> nn.Module:
    """Load the DiT from ``path`` and place it as ``placement`` says (a plain load goes straight to ``device``)."""
    from .model.checkpoint import load_dit

    if placement.plain:
        return load_dit(path, dtype=dtype, device=device)
    # fp8 conversion and pinning happen in CPU memory; only the result goes to the GPU.
    return place_dit(load_dit(path, dtype=dtype, device="cpu"), placement, device)


def place_dit(model: nn.Module, placement: DiTPlacement, device: torch.device | str) -> nn.Module:
    """Store the block linears in fp8 and/or install block offloading; otherwise move ``model`` to ``device``."""
    from .model.fp8_linear import store_linears_in_fp8

    device = torch.device(device)
    if placement.fp8:
        store_linears_in_fp8(model.blocks, FP8_STORAGE)
    if placement.offload == "blocks":
        offload_blocks(model, device)
    else:
        model.to(device)
    return model


def offload_blocks(model: nn.Module, device: torch.device | str) -> None:
    """Install diffusers' block-level group offloading on ``model`` (held in CPU memory) for ``device``.

    On CUDA the transfers run on a side stream (``use_stream=True``: the next block is prefetched while the
    current one computes), from pinned memory. The parameters are pinned here module by module first, so
    diffusers' own ``pin_memory()`` finds them pinned and does not make a second copy of the model.
    Elsewhere streams do not exist (diffusers refuses ``use_stream`` for a CPU onload device): the same hooks
    are installed without streams and move each group at its first use.
    """
    from diffusers.hooks import apply_group_offloading

    device = torch.device(device)
    streams = device.type == "cuda"
    if streams:
        for module in model.modules():
            for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if tensor.device.type == "cpu" and not tensor.is_pinned():
                    tensor.data = tensor.data.pin_memory()
    apply_group_offloading(model, onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1, use_stream=streams)


# ---- memory plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiTMemory:
    """Bytes of the DiT's weights as stored: the blocks (each) and everything else."""

    parameters: int
    blocks: int
    block_bytes: int  # one block
    other_bytes: int  # embeddings, pose branch, head

    @property
    def total_bytes(self) -> int:
        return self.blocks * self.block_bytes + self.other_bytes

    def device_bytes(self, placement: DiTPlacement) -> int:
        """Weights on the GPU at the peak of a forward."""
        if placement.offload == "blocks":
            return self.other_bytes + min(STREAMED_BLOCKS_RESIDENT, self.blocks) * self.block_bytes
        return self.total_bytes

    def host_bytes(self, placement: DiTPlacement) -> int:
        """Weights kept in CPU memory during sampling (pinned for the blocks)."""
        return self.total_bytes if placement.offload == "blocks" else 0


def _stored_bytes(module: nn.Module, dtype: torch.dtype, fp8_linears: bool) -> int:
    """Bytes of ``module``'s parameters in ``dtype``; with ``fp8_linears`` every nn.Linear weight takes one byte
    per element plus a float32 scale (its bias stays in ``dtype``)."""
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for sub in module.modules():
        linear = fp8_linears and type(sub) is nn.Linear
        for name, param in sub.named_parameters(recurse=False):
            if linear and name == "weight":
                total += param.numel() * torch.empty((), dtype=FP8_STORAGE).element_size() + 4
            else:
                total += param.numel() * size
    return total


def dit_memory(config, dtype: torch.dtype, fp8: bool) -> DiTMemory:
    """Weight bytes of a DiT of ``config`` stored in ``dtype`` (block linears in fp8 with ``fp8``); from the
    parameter shapes of a model built on the meta device (no memory)."""
    from .model import SteadyDancerDiT

    model = SteadyDancerDiT(config, device="meta")
    block_bytes = _stored_bytes(model.blocks[0], dtype, fp8)
    blocks_total = sum(_stored_bytes(block, dtype, fp8) for block in model.blocks)
    if blocks_total != block_bytes * len(model.blocks):
        raise AssertionError("the DiT's blocks differ in size; the plan assumes identical blocks")
    everything = _stored_bytes(model, dtype, False) - _stored_bytes(model.blocks, dtype, False)
    return DiTMemory(parameters=sum(p.numel() for p in model.parameters()), blocks=len(model.blocks),
                     block_bytes=block_bytes, other_bytes=everything)


def _safetensors_parameters(folder: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:  # reads the header only
            for key in handle.keys():
                total += int(np.prod(handle.get_slice(key).get_shape(), dtype=np.int64))
    return total


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def memory_lines(dit: str | None, wan_dir: str | None, device: torch.device, dtype: torch.dtype,
                 placement: DiTPlacement) -> list[str]:
    """The dry-run's memory plan: weights of each component where the run keeps them (activations excluded)."""
    from .model import OFFICIAL_14B
    from .model.checkpoint import read_checkpoint_config

    config, origin = OFFICIAL_14B, "nominal 14B"
    if dit and Path(dit).exists():  # its header was checked before
        config, origin = read_checkpoint_config(dit), "from checkpoint header"
    on_gpu = device.type == "cuda"
    dtypes = {"text_encoder": torch.bfloat16 if on_gpu else torch.float32,
              "image_encoder": torch.float16 if on_gpu else torch.float32, "vae": torch.float32}
    dit_mem = dit_memory(config, dtype, placement.fp8)
    storage = f"computed in {_name(dtype)}" + (f", block linears stored in {_name(FP8_STORAGE)} + per-tensor scale"
                                                if placement.fp8 else "")
    lines = ["  (parameter count x bytes of the dtype each tensor is stored in; activations come on top)",
             f"  DiT: {dit_mem.parameters / 1e6:,.1f} M params ({origin}), {storage}: {placement.describe()}"]
    device_gib, host_gib = dit_mem.device_bytes(placement) / GIB, dit_mem.host_bytes(placement) / GIB
    if placement.offload == "blocks":
        lines.append(f"    on {device.type}: {device_gib:.2f} GiB = non-block {dit_mem.other_bytes / GIB:.2f} GiB "
                     f"+ {STREAMED_BLOCKS_RESIDENT} of {dit_mem.blocks} blocks x {dit_mem.block_bytes / GIB:.3f} GiB "
                     f"(running + prefetched); CPU memory: {host_gib:.2f} GiB (blocks pinned)")
    else:
        lines.append(f"    on {device.type}: {device_gib:.2f} GiB = {dit_mem.blocks} blocks x "
                     f"{dit_mem.block_bytes / GIB:.3f} GiB + non-block {dit_mem.other_bytes / GIB:.2f} GiB")
    if not placement.plain:
        loading = dit_memory(config, dtype, False).total_bytes / GIB
        lines.append(f"    loading: read into CPU memory in {_name(dtype)} first ({loading:.2f} GiB), converted/pinned "
                     "there tensor by tensor")
    peak = dit_mem.device_bytes(placement)
    for name in ("text_encoder", "image_encoder", "vae"):
        found = _safetensors_parameters(Path(wan_dir) / name) if wan_dir else None
        count, source = (found, "from files") if found is not None else (NOMINAL_PARAMETERS[name], "nominal")
        size = count * torch.empty((), dtype=dtypes[name]).element_size()
        lines.append(f"  {name}: {count / 1e6:,.1f} M params ({source}), {_name(dtypes[name])} -> "
                     f"{size / GIB:.2f} GiB on {device.type} while it runs")
        if name == "vae":
            peak += size
    # Components are loaded one after the other; the DiT and the VAE are the ones resident together.
    lines.append(f"  resident at once on {device.type} (DiT + VAE): {peak / GIB:.2f} GiB")
    return lines
