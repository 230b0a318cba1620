"""The three DiT forwards training needs, all on the one ``SteadyDancerDiT`` (no second block stack).

* ``full``    - the SteadyDancer forward itself (``SteadyDancerDiT.forward``): stages 1, 3 and the
                conditional term of stage 2.
* ``uncond``  - the student with conditions removed (stage 2's ``v_u``); what is removed is the config
                list ``distill.uncond_drop``:
                  pose   - fused/aligned pose channels of ``patch_embedding_fuse`` get zeros (== using
                           only its first ``in_dim`` input channels);
                  ref_x  - no reference-image token frame;
                  ref_c  - no first-pose token frame;
                  clip_c - no CLIP feature of the first pose frame (only the reference's).
                Dropping all four gives the student exactly the inputs of the Wan2.1-I2V teacher.
* ``teacher`` - plain Wan2.1-I2V: the 36-channel ``patch_embedding`` embeds the video (its pretrained
                role, which SteadyDancer re-purposes for ``ref_x``), no pose, no reference frames, one CLIP
                feature. The teacher is a ``SteadyDancerDiT`` loaded from a Wan2.1-I2V checkpoint; its
                pose modules are never called.

``uncond``/``teacher`` share :func:`transformer_tail`, the token-to-velocity half of the official
forward; a test checks that ``uncond`` with nothing dropped equals ``SteadyDancerDiT.forward`` exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from steadydancer_core.model.dit import SteadyDancerDiT
from steadydancer_core.model.layers import sinusoidal_embedding
from steadydancer_core.model.rope import rope_cos_sin

UNCOND_ITEMS = ("pose", "ref_x", "ref_c", "clip_c")


def transformer_tail(dit: SteadyDancerDiT, video: torch.Tensor, extra_frames: Sequence[torch.Tensor],
                     timestep: torch.Tensor, context: torch.Tensor, clip_features: Sequence[torch.Tensor],
                     num_frames: int) -> torch.Tensor:
    """Embedded token frames ``[B, dim, F, h, w]`` -> velocity ``[B, out_dim, num_frames, H, W]``.

    Mirrors the second half of ``SteadyDancerDiT.forward``: RoPE frame positions 0..F-1 over all token
    frames, float64 sinusoid, text padded to ``text_len``, CLIP projections summed.
    """
    cfg = dit.config
    dtype, device = video.dtype, video.device
    b = video.shape[0]
    tokens = torch.cat([video, *extra_frames], dim=2)
    grid = tuple(tokens.shape[2:])
    tokens = tokens.flatten(2).transpose(1, 2)
    rope_dtype = torch.promote_types(dtype, torch.float32)
    rope_cos, rope_sin = rope_cos_sin(torch.arange(grid[0], device=device), grid[1], grid[2], cfg.head_dim, rope_dtype)
    timestep = torch.as_tensor(timestep).to(device).flatten().expand(b)
    e = dit.time_embedding(sinusoidal_embedding(timestep, cfg.freq_dim).to(device=device, dtype=dtype))
    e0 = dit.time_projection(e).unflatten(1, (6, cfg.dim))
    context = context.to(device=device, dtype=dtype)
    if context.shape[1] < cfg.text_len:
        context = torch.cat([context, context.new_zeros(b, cfg.text_len - context.shape[1], cfg.text_dim)], 1)
    context = dit.text_embedding(context)
    context_clip = sum(dit.img_emb(c.to(device=device, dtype=dtype)) for c in clip_features)
    context = torch.cat([context_clip, context], dim=1)
    sharding = dit.sequence_parallel  # the same token split as SteadyDancerDiT.forward (compute.sequence_parallel)
    if sharding is not None:
        tokens, rope_cos, rope_sin = sharding.shard(tokens, rope_cos, rope_sin)
    for block in dit.blocks:
        tokens = block(tokens, e0, context, context_clip.shape[1], rope_cos, rope_sin)
    out = dit.head(tokens, e)
    if sharding is not None:
        out = sharding.gather(out)
    return dit.unpatchify(out, grid)[:, :, :num_frames]


def uncond_forward(dit: SteadyDancerDiT, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                   clip_fea_x: torch.Tensor, clip_fea_c: torch.Tensor, pose_latents: torch.Tensor,
                   ref_x: torch.Tensor, ref_c: torch.Tensor, drop: Sequence[str]) -> torch.Tensor:
    unknown = set(drop) - set(UNCOND_ITEMS)
    if unknown:
        raise ValueError(f"unknown unconditional drop items {sorted(unknown)}; expected a subset of {UNCOND_ITEMS}")
    cfg = dit.config
    dtype, device = x.dtype, x.device
    if "pose" in drop:
        pose_in = x.new_zeros(x.shape[0], 2 * cfg.in_dim_c, *x.shape[2:])
    else:
        fused, aligned = dit.pose_features(pose_latents.to(device=device, dtype=dtype), x[:, :cfg.out_dim])
        pose_in = torch.cat([fused, aligned], dim=1)
    video = dit.patch_embedding_fuse(torch.cat([x, pose_in], dim=1))
    extra = []
    if "ref_x" not in drop:
        ref_x = ref_x.to(device=device, dtype=dtype)
        mask_ones = torch.ones_like(x[:, cfg.out_dim:cfg.in_dim - cfg.out_dim, :1])
        extra.append(dit.patch_embedding(torch.cat([ref_x, mask_ones, ref_x], dim=1)))
    if "ref_c" not in drop:
        extra.append(dit.patch_embedding_ref_c(ref_c.to(device=device, dtype=dtype)))
    clips = [clip_fea_x] if "clip_c" in drop else [clip_fea_x, clip_fea_c]
    return transformer_tail(dit, video, extra, timestep, context, clips, x.shape[2])


def teacher_forward(dit: SteadyDancerDiT, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                    clip_fea_x: torch.Tensor) -> torch.Tensor:
    """Wan2.1-I2V forward: ``patch_embedding(noise | mask | image latent)``, one CLIP feature, no extras."""
    return transformer_tail(dit, dit.patch_embedding(x), [], timestep, context, [clip_fea_x], x.shape[2])


class TrainingDiT(nn.Module):
    """The module FSDP2/DDP wrap: its ``forward`` dispatches to one of the three forwards, so the
    engine's hooks (FSDP2 unshard of the root parameters, DDP's reducer) run for every variant."""

    def __init__(self, dit: SteadyDancerDiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, mode: str, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                clip_fea_x: torch.Tensor, clip_fea_c: torch.Tensor | None = None,
                pose_latents: torch.Tensor | None = None, ref_x: torch.Tensor | None = None,
                ref_c: torch.Tensor | None = None, drop: Sequence[str] = ()) -> torch.Tensor:
        if mode == "full":
            out = self.dit(x, timestep, context, clip_fea_x, clip_fea_c, pose_latents, ref_x, ref_c)
        elif mode == "uncond":
            out = uncond_forward(self.dit, x, timestep, context, clip_fea_x, clip_fea_c, pose_latents,
                                 ref_x, ref_c, drop)
        elif mode == "teacher":
            out = teacher_forward(self.dit, x, timestep, context, clip_fea_x)
        else:
            raise ValueError(f"unknown forward mode {mode!r}; expected full, uncond or teacher")
        # The DiT returns a crop (a view); FSDP2's pre-backward hook must sit on a tensor of its own.
        return out.clone()
