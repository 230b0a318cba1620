"""Tiny random models in the released key layouts, built in-process (tests never download)."""
from __future__ import annotations

import torch

from steadydancer_core.model import TINY, DiTConfig, SteadyDancerDiT


def tiny_dit_state_dict(config: DiTConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised SteadyDancer DiT (official key names)."""
    torch.manual_seed(seed)
    model = SteadyDancerDiT(config)
    # Zero-initialised layers (e.g. the head) would make every output identical; randomise all.
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.05)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def core_dit(state_dict: dict[str, torch.Tensor], config: DiTConfig = TINY) -> SteadyDancerDiT:
    """The core DiT with the given weights (plain torch.nn, SDPA): the independent reference."""
    model = SteadyDancerDiT(config)
    model.load_state_dict(state_dict)
    return model.eval()


def scaled_fp8_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kijai/old-ComfyUI scaled fp8: block Linear weights as e4m3fn + per-tensor ``scale_weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("blocks.") and key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / 448.0
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out
