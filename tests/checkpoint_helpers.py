"""Shared builders for the checkpoint tests: a seeded tiny DiT, its inputs, a scaled-fp8 state dict."""
from __future__ import annotations

import torch
import torch.nn as nn

from steadydancer_core.model.config import TINY
from steadydancer_core.model.dit import SteadyDancerDiT

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def tiny_dit(seed: int = 0) -> SteadyDancerDiT:
    """TINY DiT whose every tensor is distinct and non-zero (zero-initialised layers get noise too)."""
    torch.manual_seed(seed)
    model = SteadyDancerDiT(TINY)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def tiny_inputs(seed: int = 1, frames: int = 3, size: int = 4) -> dict[str, torch.Tensor]:
    """Forward inputs for the TINY DiT (batch 1, 3 latent frames of 4x4)."""
    gen = torch.Generator().manual_seed(seed)
    cfg = TINY

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    return {
        "x": randn(1, cfg.in_dim, frames, size, size),
        "timestep": torch.tensor([637.0]),
        "context": randn(1, 5, cfg.text_dim),
        "clip_fea_x": randn(1, 7, cfg.clip_dim),
        "clip_fea_c": randn(1, 7, cfg.clip_dim),
        "pose_latents": randn(1, cfg.in_dim_c, frames, size, size),
        "ref_x": randn(1, cfg.out_dim, 1, size, size),
        "ref_c": randn(1, cfg.in_dim_c, 1, size, size),
    }


def linear_weight_keys(model: nn.Module) -> list[str]:
    """``<module>.weight`` of every ``nn.Linear`` (what Kijai's fp8-scaled files quantise)."""
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def quantize_scaled_fp8(model: nn.Module, scale_suffix: str = ".scale_weight"
                        ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Scaled-fp8 state dict of ``model``: Linear weights -> float8_e4m3fn + per-tensor fp32 scale.

    Returns the state dict (with the ``scaled_fp8`` marker) and ``{weight key: (fp8, scale)}``.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    quantised: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in linear_weight_keys(model):
        weight = state[key].float()
        scale = (weight.abs().max() / FP8_MAX).reshape(())
        fp8 = (weight / scale).to(torch.float8_e4m3fn)
        state[key] = fp8
        state[key[: -len(".weight")] + scale_suffix] = scale
        quantised[key] = (fp8, scale)
    state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return state, quantised
