"""Memory per GPU of a multi-GPU layout, computed (not measured): weights from the module tree, activations
from the token counts and the tensors alive at the peak of a block.

Weights: the DiT's parameters (counted on a meta-device model) in the run's dtype; under FSDP2 1/N of them
plus what is unsharded while it runs: the root unit (embeddings, pose branch, head) and two blocks (the
running one and the one FSDP2 prefetches).

Activations: about 11 token-wide tensors ``[rows, L/N, dim]`` are alive at the peak of a block under
Ulysses (the block input, the normed input, q and k held by the caller, v, the stacked q|k|v and its
all-to-all result), 8 without (the FFN's 2.7x-wide hidden state twice, the input and the normed input);
attention is assumed to be a flash-type kernel (no L x L matrix). Before the split every rank holds the
whole token sequence twice (the embeddings and their padded copy). ``rows`` is the batched DC-CFG passes a
rank runs: 3 inside the pose window, ``ceil(3 / cfg)`` with CFG parallelism.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model.config import DiTConfig
from .session import ParallelLayout

GIB = 1024**3
ULYSSES_PEAK_TENSORS = 11
SINGLE_PEAK_TENSORS = 8
PREFETCHED_BLOCKS = 2


def parameter_counts(config: DiTConfig) -> tuple[int, int]:
    """(all parameters, parameters of one transformer block) of the DiT."""
    from ..model.dit import SteadyDancerDiT

    model = SteadyDancerDiT(config.replace(num_layers=1), device="meta")
    block = sum(p.numel() for p in model.blocks[0].parameters())
    root = sum(p.numel() for p in model.parameters()) - block
    return root + config.num_layers * block, block


def token_count(config: DiTConfig, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Tokens of one DiT pass: (T video + 2 reference frames) x (h / 2) x (w / 2)."""
    _, ph, pw = config.patch_size
    return (latent_frames + 2) * (latent_height // ph) * (latent_width // pw)


@dataclass(frozen=True)
class GPUMemory:
    weights: float  # GiB
    activations: float  # GiB

    @property
    def total(self) -> float:
        return self.weights + self.activations


def memory_per_gpu(config: DiTConfig, layout: ParallelLayout, tokens: int, dtype_bytes: int = 2,
                   passes: int = 3) -> GPUMemory:
    """Weights and peak activations of one rank's DiT (the encoders of rank 0 come on top, see README)."""
    total, block = parameter_counts(config)
    if layout.fsdp:
        root = total - config.num_layers * block
        weights = total / layout.world + root + PREFETCHED_BLOCKS * block
    else:
        weights = total
    rows = -(-passes // layout.cfg)
    local = -(-tokens // layout.ulysses)
    per_block = (ULYSSES_PEAK_TENSORS if layout.ulysses > 1 else SINGLE_PEAK_TENSORS) * local
    before_split = 2 * tokens if layout.ulysses > 1 else 0
    activations = rows * max(per_block, before_split) * config.dim
    return GPUMemory(weights * dtype_bytes / GIB, activations * dtype_bytes / GIB)
