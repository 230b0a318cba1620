"""First-frame I2V conditioning: sizes, frame counts, image preparation, and the DiT's per-pass inputs.

Everything here works on tensors the VAE / T5 / CLIP produced elsewhere (model_spec §3). The DiT is called
``model(x, timestep, context, clip_fea_x, clip_fea_c, pose_latents, ref_x, ref_c, pose_strength_spatial,
pose_strength_temporal)`` with ``x = noise (16) | mask (4) | image latent (16)`` on channels (DESIGN D3).

Official behaviours kept: the I2V mask is 1 on all 4 channels at latent frame 0 and 0 elsewhere; ``ref_x``
is the image latent's frame 0 and ``ref_c`` the POSITIVE pose latent's frame 0, also in the negative-pose
pass (both equal the separate VAE encodes the official code makes, because the causal VAE encodes frame 0
alone). Fixed: the official mask is built for a literal 81 frames; here any ``4n + 1`` works.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LATENT_CHANNELS = 16
MASK_CHANNELS = 4
VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8
# Pixel sizes must be multiples of VAE stride (8) x patch size (2).
SIZE_MULTIPLE = VAE_SPATIAL_STRIDE * 2
#: Default output pixel budget of ``poses`` and ``animate`` alike: the area of the authors' README run
#: (``generate_dancer.py --size 1024*576``), with the reference's aspect.
DEFAULT_MAX_AREA = 1024 * 576


# ---- frame counts --------------------------------------------------------------------------------

def validate_frame_count(num_frames: int) -> None:
    """Raise unless ``num_frames`` is ``4n + 1`` (1, 5, 9, ..., 81, ...): the causal VAE's frame rule."""
    if not isinstance(num_frames, (int, np.integer)) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"frame count must be a positive integer of the form 4n+1, got {num_frames!r}")
    if (num_frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(
            f"frame count must be 4n+1 (e.g. 77, 81, 85), got {num_frames}; "
            f"nearest valid: {nearest_valid_frame_count(num_frames)}"
        )


def latent_frame_count(num_frames: int) -> int:
    """Latent frames of a ``4n + 1`` pixel-frame clip: ``1 + (F - 1) // 4``."""
    validate_frame_count(num_frames)
    return 1 + (num_frames - 1) // VAE_TEMPORAL_STRIDE


def pixel_frame_count(latent_frames: int) -> int:
    """Pixel frames decoded from ``T`` latent frames: ``4 (T - 1) + 1``."""
    if not isinstance(latent_frames, (int, np.integer)) or latent_frames < 1:
        raise ValueError(f"latent frame count must be a positive integer, got {latent_frames!r}")
    return VAE_TEMPORAL_STRIDE * (latent_frames - 1) + 1


def nearest_valid_frame_count(num_frames: int) -> int:
    """The ``4n + 1`` count nearest to ``num_frames`` (ties go down: never ask for frames one lacks)."""
    if num_frames < 1:
        raise ValueError(f"frame count must be positive, got {num_frames}")
    below = _floor_valid(num_frames)
    above = below + VAE_TEMPORAL_STRIDE
    return below if num_frames - below <= above - num_frames else above


def select_pose_frames(pose_frames: torch.Tensor, num_frames: int, dim: int = 0) -> torch.Tensor:
    """The first ``num_frames`` pose frames along ``dim``; a clear error if there are fewer."""
    validate_frame_count(num_frames)
    available = pose_frames.shape[dim]
    if available < num_frames:
        raise ValueError(
            f"{num_frames} frames requested but only {available} pose frames given (pose count shorter "
            f"than the frame count); use at most {_floor_valid(available)} frames or supply more poses"
        )
    return pose_frames.narrow(dim, 0, num_frames)


def _floor_valid(num_frames: int) -> int:
    """The largest ``4n + 1`` not above ``num_frames``."""
    return 1 + (num_frames - 1) // VAE_TEMPORAL_STRIDE * VAE_TEMPORAL_STRIDE


# ---- sizes ---------------------------------------------------------------------------------------

def validate_size(height: int, width: int) -> None:
    """Raise unless height and width are positive multiples of 16 (VAE stride 8 x patch 2)."""
    if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"size {width}x{height} (WxH) must be positive multiples of {SIZE_MULTIPLE}; "
            f"nearest below: {max(SIZE_MULTIPLE, width // SIZE_MULTIPLE * SIZE_MULTIPLE)}x"
            f"{max(SIZE_MULTIPLE, height // SIZE_MULTIPLE * SIZE_MULTIPLE)}"
        )


def latent_size(height: int, width: int) -> tuple[int, int]:
    """Latent (height, width) of a valid pixel size: each divided by 8."""
    validate_size(height, width)
    return height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE


def output_size(
    image_height: int, image_width: int, max_area: int, *, official_rounding: bool = False
) -> tuple[int, int]:
    """Output (height, width) for a reference image: the largest multiples of 16 with the image's aspect
    within ``max_area``: ``h = floor(sqrt(A * ar) / 16) * 16``, ``w = floor(sqrt(A / ar) / 16) * 16``,
    ``ar = image_height / image_width``.

    By default this is evaluated exactly (integer square roots). ``official_rounding=True`` reproduces the
    official float64 ``round(np.sqrt(max_area * ar) // 8 // 2 * 2) * 8``, which loses one step when the
    square root lands a hair below a multiple of 16: a landscape 832x480 image at area 832*480 gives
    464x832 there (``np.sqrt`` returns 479.99999999999994), 480x832 here.
    """
    if image_height <= 0 or image_width <= 0:
        raise ValueError(f"image size must be positive, got {image_width}x{image_height} (WxH)")
    if max_area < SIZE_MULTIPLE * SIZE_MULTIPLE:
        raise ValueError(f"max_area must be at least {SIZE_MULTIPLE * SIZE_MULTIPLE} pixels, got {max_area}")
    if official_rounding:
        aspect = image_height / image_width
        lat_h = round(np.sqrt(max_area * aspect) // VAE_SPATIAL_STRIDE // 2 * 2)
        lat_w = round(np.sqrt(max_area / aspect) // VAE_SPATIAL_STRIDE // 2 * 2)
        height, width = int(lat_h) * VAE_SPATIAL_STRIDE, int(lat_w) * VAE_SPATIAL_STRIDE
    else:
        # floor(sqrt(y)) == isqrt(floor(y)) for y >= 0, so this is the exact value of the formula.
        cell = SIZE_MULTIPLE * SIZE_MULTIPLE
        height = SIZE_MULTIPLE * math.isqrt(max_area * image_height // (cell * image_width))
        width = SIZE_MULTIPLE * math.isqrt(max_area * image_width // (cell * image_height))
    if height == 0 or width == 0:
        raise ValueError(
            f"a {image_width}x{image_height} image is too elongated for max_area {max_area}: "
            f"one side would be below {SIZE_MULTIPLE} pixels"
        )
    return height, width


# ---- image preparation ---------------------------------------------------------------------------

def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] as the official ``(v - 0.5) / 0.5`` (float32)."""
    return (images.to(torch.float32) - 0.5) / 0.5


def resize_bicubic(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Official resize: bicubic, ``align_corners=False``, no antialias, no clamp (may overshoot [-1, 1]).

    ``images`` is ``[C, H, W]`` or ``[N, C, H, W]``; computed in float32 like the official (CPU) resize.
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images [C, H, W] or [N, C, H, W], got shape {tuple(images.shape)}")
    batched = images if images.ndim == 4 else images[None]
    resized = F.interpolate(
        batched.to(torch.float32), size=(height, width), mode="bicubic", align_corners=False, antialias=False
    )
    return resized if images.ndim == 4 else resized[0]


def prepare_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Official order: normalise [0, 1] -> [-1, 1], then resize to (height, width)."""
    validate_size(height, width)
    return resize_bicubic(to_model_range(images), height, width)


# ---- latents -------------------------------------------------------------------------------------

def i2v_mask(
    num_frames: int, latent_height: int, latent_width: int, *, kept_frames: int = 1,
    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
) -> torch.Tensor:
    """The I2V keep mask ``[4, T, h, w]``: 1 where a pixel frame is given (kept), 0 where it is generated.

    Built as the official code builds it, from a per-pixel-frame mask (1 on the first ``kept_frames``),
    frame 0 repeated 4x and the result folded in groups of 4 onto the 4 channels: latent frame 0 holds pixel
    frame 0 on all channels, latent frame ``t >= 1`` pixel frames ``4t - 3 .. 4t`` on channels 0..3. One kept
    frame (the official first-frame case) is all channels of latent frame 0; unlike the official, any ``4n + 1``
    works, and so does keeping more frames (the carried frames of a long video's later segments).
    """
    latent_frames = latent_frame_count(num_frames)
    if not 1 <= kept_frames <= num_frames:
        raise ValueError(f"kept_frames must be between 1 and {num_frames}, got {kept_frames}")
    per_frame = torch.zeros(num_frames, dtype=dtype, device=device)
    per_frame[:kept_frames] = 1
    folded = torch.cat([per_frame[:1].repeat(VAE_TEMPORAL_STRIDE), per_frame[1:]])
    mask = folded.view(latent_frames, MASK_CHANNELS).transpose(0, 1)
    return mask[:, :, None, None].expand(-1, -1, latent_height, latent_width).contiguous()


@dataclass(frozen=True)
class ConditioningLatents:
    """The latents of one generation, shared by all DC-CFG passes.

    image_condition: ``[B, 20, T, h, w]`` = I2V mask (4) | image latent (16).
    pose_latents / negative_pose_latents: ``[B, 16, T, h, w]`` (negative may be None: no pose guidance).
    ref_x: ``[B, 16, 1, h, w]`` image latent frame 0. ref_c: ``[B, 16, 1, h, w]`` positive pose frame 0.
    """

    image_condition: torch.Tensor
    pose_latents: torch.Tensor
    negative_pose_latents: torch.Tensor | None
    ref_x: torch.Tensor
    ref_c: torch.Tensor

    @classmethod
    def from_latents(
        cls, image_latent: torch.Tensor, pose_latents: torch.Tensor,
        negative_pose_latents: torch.Tensor | None = None, *, kept_frames: int = 1,
        ref_x: torch.Tensor | None = None, ref_c: torch.Tensor | None = None,
    ) -> "ConditioningLatents":
        """Build from VAE latents ``[B, 16, T, h, w]`` (image clip = the kept frames, then grey frames).

        ``ref_x`` / ``ref_c`` default to the image latent's and the positive pose latent's frame 0; a long
        video's later segments may pass the reference's instead (``segments`` anchor ``reference``).
        """
        _check_latent("image_latent", image_latent)
        batch, _, frames, height, width = image_latent.shape
        for name, latent in (("pose_latents", pose_latents), ("negative_pose_latents", negative_pose_latents)):
            if latent is None:
                continue
            _check_latent(name, latent)
            if latent.shape[2] < frames:
                raise ValueError(
                    f"{name} has {latent.shape[2]} latent frames ({pixel_frame_count(latent.shape[2])} pose "
                    f"frames) but the video needs {frames} ({pixel_frame_count(frames)} frames): pose count "
                    "shorter than the frame count"
                )
            if latent.shape[2] != frames or latent.shape[0] != batch or latent.shape[3:] != (height, width):
                raise ValueError(
                    f"{name} shape {tuple(latent.shape)} does not match image_latent {tuple(image_latent.shape)}"
                )
        mask = i2v_mask(pixel_frame_count(frames), height, width, kept_frames=kept_frames,
                        dtype=image_latent.dtype, device=image_latent.device)
        for name, ref in (("ref_x", ref_x), ("ref_c", ref_c)):
            if ref is not None and ref.shape != (batch, LATENT_CHANNELS, 1, height, width):
                raise ValueError(f"{name} must be [{batch}, {LATENT_CHANNELS}, 1, {height}, {width}], "
                                 f"got {tuple(ref.shape)}")
        return cls(
            image_condition=torch.cat([mask.expand(batch, -1, -1, -1, -1), image_latent], dim=1),
            pose_latents=pose_latents,
            negative_pose_latents=negative_pose_latents,
            ref_x=image_latent[:, :, :1] if ref_x is None else ref_x,
            ref_c=pose_latents[:, :, :1] if ref_c is None else ref_c,
        )

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(16, T, h, w)``: the noise latent's shape per sample."""
        _, _, frames, height, width = self.image_condition.shape
        return LATENT_CHANNELS, frames, height, width

    def model_input(self, noise_latent: torch.Tensor) -> torch.Tensor:
        """``[B, 36, T, h, w]`` = noisy latent | mask | image latent, in the noisy latent's dtype."""
        if noise_latent.shape[1:] != self.latent_shape:
            raise ValueError(
                f"noisy latent shape {tuple(noise_latent.shape)} does not match the conditioning "
                f"(expected [B, {', '.join(map(str, self.latent_shape))}])"
            )
        return torch.cat([noise_latent, self.image_condition.to(noise_latent)], dim=1)

    def pass_inputs(
        self, context: torch.Tensor, clip_fea_x: torch.Tensor, clip_fea_c: torch.Tensor, *,
        negative_pose: bool = False, pose_strength_spatial: float = 1.0, pose_strength_temporal: float = 1.0,
    ) -> "PassInputs":
        """Inputs of one DiT pass. The negative-pose pass swaps only the pose latents: ``ref_c`` stays the
        positive first pose frame (official ``arg_null_condition``)."""
        if negative_pose and self.negative_pose_latents is None:
            raise ValueError("a negative-pose pass was requested but no negative pose latents were given")
        return PassInputs(
            image_condition=self.image_condition,
            context=context,
            clip_fea_x=clip_fea_x,
            clip_fea_c=clip_fea_c,
            pose_latents=self.negative_pose_latents if negative_pose else self.pose_latents,
            ref_x=self.ref_x,
            ref_c=self.ref_c,
            pose_strength_spatial=pose_strength_spatial,
            pose_strength_temporal=pose_strength_temporal,
        )

    def dc_cfg_passes(
        self, context: torch.Tensor, negative_context: torch.Tensor, clip_fea_x: torch.Tensor,
        clip_fea_c: torch.Tensor, **strengths: float,
    ) -> tuple["PassInputs", "PassInputs", "PassInputs | None"]:
        """(positive, negative text, negative pose or None): the three official condition sets (§3.5)."""
        positive = self.pass_inputs(context, clip_fea_x, clip_fea_c, **strengths)
        negative_text = replace(positive, context=negative_context)
        negative_pose = (
            None if self.negative_pose_latents is None
            else self.pass_inputs(context, clip_fea_x, clip_fea_c, negative_pose=True, **strengths)
        )
        return positive, negative_text, negative_pose


@dataclass(frozen=True)
class PassInputs:
    """Everything one DiT evaluation takes besides the noisy latent and the timestep (batch B)."""

    image_condition: torch.Tensor  # [B, 20, T, h, w]
    context: torch.Tensor  # [B, L, text_dim]
    clip_fea_x: torch.Tensor  # [B, 257, clip_dim]
    clip_fea_c: torch.Tensor  # [B, 257, clip_dim]
    pose_latents: torch.Tensor  # [B, 16, T, h, w]
    ref_x: torch.Tensor  # [B, 16, 1, h, w]
    ref_c: torch.Tensor  # [B, 16, 1, h, w]
    pose_strength_spatial: float = 1.0
    pose_strength_temporal: float = 1.0


def concat_pass_inputs(passes: Sequence[PassInputs]) -> PassInputs:
    """Stack several passes along the batch (one batched DiT call).

    Text contexts of different lengths are zero-padded to the longest: exact, because the DiT itself pads
    every context with zeros to ``text_len`` and attends without a mask (official behaviour).
    """
    if not passes:
        raise ValueError("no passes to concatenate")
    if len(passes) == 1:  # nothing to stack; callers that cached a stack pass it back every step
        return passes[0]
    strengths = {(p.pose_strength_spatial, p.pose_strength_temporal) for p in passes}
    if len(strengths) != 1:
        raise ValueError(f"passes in one batch must share pose strengths, got {sorted(strengths)}")
    longest = max(p.context.shape[1] for p in passes)
    stacked = {}
    for field in fields(PassInputs):
        if field.name.startswith("pose_strength"):
            continue
        tensors = [getattr(p, field.name) for p in passes]
        if field.name == "context":
            tensors = [F.pad(t, (0, 0, 0, longest - t.shape[1])) for t in tensors]
        stacked[field.name] = torch.cat(tensors, dim=0)
    spatial, temporal = strengths.pop()
    return PassInputs(**stacked, pose_strength_spatial=spatial, pose_strength_temporal=temporal)


def call_dit(
    model: torch.nn.Module, noise_latent: torch.Tensor, timestep: torch.Tensor | float,
    passes: Sequence[PassInputs],
) -> torch.Tensor:
    """Evaluate the DiT for ``passes`` in ONE batched call; output ``[len(passes) * B, 16, T, h, w]``.

    ``noise_latent`` is the bare ``[B, 16, T, h, w]`` sample; it is repeated per pass and concatenated with
    each pass's mask | image latent. ``timestep`` is one value or ``[B]``.
    """
    inputs = concat_pass_inputs(passes)
    count = len(passes)
    x = torch.cat([noise_latent.repeat(count, 1, 1, 1, 1), inputs.image_condition.to(noise_latent)], dim=1)
    timestep = torch.as_tensor(timestep, device=noise_latent.device)
    if timestep.numel() not in (1, noise_latent.shape[0]):
        raise ValueError(f"timestep must hold 1 or {noise_latent.shape[0]} values, got {timestep.numel()}")
    timestep = timestep.flatten().expand(noise_latent.shape[0]).repeat(count)
    return model(
        x, timestep, inputs.context, inputs.clip_fea_x, inputs.clip_fea_c, inputs.pose_latents, inputs.ref_x,
        inputs.ref_c, pose_strength_spatial=inputs.pose_strength_spatial,
        pose_strength_temporal=inputs.pose_strength_temporal,
    )


def _check_latent(name: str, latent: torch.Tensor) -> None:
    if latent.ndim != 5 or latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"{name} must be [B, {LATENT_CHANNELS}, T, h, w], got shape {tuple(latent.shape)}")
