"""The pictures the official pipeline gives the VAE and CLIP, prepared exactly as ``WanI2VDancer.generate`` does.

One implementation for the standalone pipeline and the ComfyUI nodes (model_spec §6):

- pose pictures: PIL-bicubic-resized (8-bit, as the official code reads its pose PNGs/JPEGs) to the
  reference's native size, then to [-1, 1] and torch-bicubic-resized to the output size (``resize_bicubic``);
- CLIP input: the reference at its native size and the first pose picture at that size (so the first
  resize above), each squashed to the tower's input size with bicubic (no crop, no antialias, no 8-bit
  rounding after the resize), mapped back to [0, 1] and normalised with the CLIP mean/std (``ClipPreprocess``).

Pure PyTorch/NumPy/PIL (no transformers/ftfy), so ComfyUI can import it without the standalone extras.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .conditioning import resize_bicubic, to_model_range

#: OpenAI CLIP normalisation, used by the official open-clip ViT-H/14 (model_spec §6.2).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def frames_to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (official to_tensor then (v - 0.5) / 0.5)."""
    _check_uint8_frames("frames", frames)
    # A copy: arrays from PIL are read-only, which torch.from_numpy warns about.
    return to_model_range(torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).div(255.0))


def resize_poses_to_reference(poses: np.ndarray, reference_hw: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of every uint8 pose frame [N, h, w, 3] to the reference's native ``(height, width)``
    (the official code's first resize, done on the 8-bit pictures); frames already that size are unchanged."""
    _check_uint8_frames("pose frames", poses)
    height, width = reference_hw
    if poses.shape[1:3] == (height, width):
        return poses
    return np.stack([np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BICUBIC))
                     for p in poses])


def poses_at_reference_size(poses: np.ndarray, reference_hw: tuple[int, int]) -> torch.Tensor:
    """uint8 pose frames [N, h, w, 3] -> float32 [N, 3, H, W] in [-1, 1] at the reference's native size."""
    return frames_to_model_range(resize_poses_to_reference(poses, reference_hw))


def pose_pictures(poses: np.ndarray, reference_hw: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """What the official code feeds the VAE for pose frames: [N, 3, height, width] float32 in [-1, 1]
    (PIL bicubic to the reference size, then the torch bicubic resize to the output size, no clamp)."""
    return resize_bicubic(poses_at_reference_size(poses, reference_hw), height, width)


def clip_images(reference: torch.Tensor, first_pose: np.ndarray) -> torch.Tensor:
    """The two images the official code encodes with CLIP, [2, 3, H, W] in [-1, 1] at the reference's size:
    ``reference`` [1, 3, H, W] in [-1, 1] at its native size, and the first pose frame (uint8 [h, w, 3]),
    PIL-resized to that size."""
    if reference.ndim != 4 or reference.shape[:2] != (1, 3):
        raise ValueError(f"reference must be [1, 3, H, W] in [-1, 1], got {tuple(reference.shape)}")
    pose = poses_at_reference_size(first_pose[None], tuple(reference.shape[-2:])).to(reference.device)
    return torch.cat([reference.float(), pose])


@dataclass(frozen=True)
class ClipPreprocess:
    """The official CLIP input transform: squash-resize to ``size`` (no crop), [-1,1] -> [0,1], mean/std."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [B, 3, H, W] in [-1, 1] at native size -> normalised [B, 3, size, size] float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP input must be [B, 3, H, W], got {tuple(images.shape)}")
        # Aspect ratio is deliberately not preserved and there is no antialias: official clip.py.
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = x * 0.5 + 0.5
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _check_uint8_frames(name: str, frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"{name} must be uint8 RGB [N, H, W, 3], got {getattr(frames, 'dtype', type(frames))} "
                         f"{tuple(shape) if shape is not None else ''}")
