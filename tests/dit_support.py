"""Builders shared by the DiT tests: a seeded tiny SteadyDancer DiT and matching random inputs."""
from __future__ import annotations

import torch

from steadydancer_core.model import TINY, DiTConfig, SteadyDancerDiT


def make_model(config: DiTConfig = TINY, seed: int = 0, **kwargs) -> SteadyDancerDiT:
    """A seeded random model in eval mode (``kwargs`` go to the constructor)."""
    torch.manual_seed(seed)
    return SteadyDancerDiT(config, **kwargs).eval()


def make_inputs(config: DiTConfig = TINY, batch: int = 1, frames: int = 3, height: int = 8, width: int = 12,
                text_tokens: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random forward() keyword arguments in our convention (x = noise | mask | image latent)."""
    g = torch.Generator().manual_seed(seed)
    c = config.out_dim
    mask_channels = config.in_dim - 2 * c
    noise = torch.randn(batch, c, frames, height, width, generator=g)
    mask = torch.zeros(batch, mask_channels, frames, height, width)
    mask[:, :, 0] = 1.0
    image_latent = torch.randn(batch, c, frames, height, width, generator=g)
    pose = torch.randn(batch, config.in_dim_c, frames, height, width, generator=g)
    return {
        "x": torch.cat([noise, mask, image_latent], dim=1),
        "timestep": torch.full((batch,), 700.0),
        "context": torch.randn(batch, text_tokens, config.text_dim, generator=g),
        "clip_fea_x": torch.randn(batch, 257, config.clip_dim, generator=g),
        "clip_fea_c": torch.randn(batch, 257, config.clip_dim, generator=g),
        "pose_latents": pose,
        "ref_x": image_latent[:, :, :1].clone(),
        "ref_c": pose[:, :, :1].clone(),
    }


def select(inputs: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Sample ``index`` of a batched input dict, keeping the batch dim."""
    return {k: v[index:index + 1] for k, v in inputs.items()}
