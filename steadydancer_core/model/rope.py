"""3-D rotary position embedding of Wan2.1 (frame, row, column), interleaved pairs.

Each head's channels are taken as adjacent pairs ``(2i, 2i+1)``. The ``head_dim/2`` pairs are split
``[d - 4(d//6), 2(d//6), 2(d//6)] / 2`` between the frame, row and column axes (22/21/21 pairs for
``d = 128``); pair ``j`` of an axis with ``n`` channels rotates by ``pos * 10000^(-2j/n)``.
Angles are computed in float64 as in the official code; the table is a function of the grid and is
recomputed per call (it is not a state-dict entry).
"""
from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def float64_device(device: torch.device) -> torch.device:
    """Where float64 math for ``device`` can run: the device itself, or the CPU for MPS (no float64 there)."""
    return torch.device("cpu") if device.type == "mps" else device


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of each head given to the (frame, row, column) axes."""
    sixth = head_dim // 6
    return head_dim - 4 * sixth, 2 * sixth, 2 * sixth


def _axis_angles(positions: torch.Tensor, axis_dim: int) -> torch.Tensor:
    """``[len(positions), axis_dim/2]`` rotation angles (float64)."""
    inv_freq = 1.0 / torch.pow(
        ROPE_THETA, torch.arange(0, axis_dim, 2, dtype=torch.float64, device=positions.device) / axis_dim
    )
    return torch.outer(positions.to(torch.float64), inv_freq)


def rope_cos_sin(
    frame_positions: torch.Tensor, height: int, width: int, head_dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[F*height*width, head_dim/2]`` for tokens ordered row-major over (f, h, w).

    ``frame_positions`` gives the RoPE frame index of each token frame (the reference frames of
    SteadyDancer continue the video's numbering).
    """
    target = frame_positions.device
    device = float64_device(target)  # angles in float64 as released
    frame_positions = frame_positions.to(device)
    dim_f, dim_h, dim_w = rope_axis_dims(head_dim)
    ang_f = _axis_angles(frame_positions, dim_f)
    ang_h = _axis_angles(torch.arange(height, device=device), dim_h)
    ang_w = _axis_angles(torch.arange(width, device=device), dim_w)
    frames = frame_positions.numel()
    angles = torch.cat(
        [
            ang_f[:, None, None, :].expand(frames, height, width, -1),
            ang_h[None, :, None, :].expand(frames, height, width, -1),
            ang_w[None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(frames * height * width, -1)
    return angles.cos().to(device=target, dtype=dtype), angles.sin().to(device=target, dtype=dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate ``x`` ``[B, L, heads*head_dim]`` by the tables of :func:`rope_cos_sin`.

    The rotation runs in the tables' dtype (at least float32) and the result is cast back to
    ``x.dtype``.
    """
    batch, length, inner = x.shape
    pairs = x.to(cos.dtype).view(batch, length, heads, inner // heads // 2, 2)
    even, odd = pairs.unbind(-1)
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.reshape(batch, length, inner).to(x.dtype)
