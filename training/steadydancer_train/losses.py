"""Stage losses, all computed in fp32 over every latent frame (incl. frame 0, as Wan2.1-I2V trainers do)."""
from __future__ import annotations

import torch


def flow_mse(prediction: torch.Tensor, target: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``weight * mean((v - v*)^2)``: stages 1 and 3 (Action Supervision, Motion Discontinuity Mitigation)
    and the conditional term of stage 2."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {list(prediction.shape)} != target shape {list(target.shape)}")
    return weight * torch.mean((prediction.float() - target.float()) ** 2)


def distill_mse(student_uncond: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Stage 2 decoupling term ``||v_u(student) - v(teacher)||^2`` (teacher output carries no grad)."""
    return flow_mse(student_uncond, teacher.detach())
