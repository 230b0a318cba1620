"""SteadyDancer Image To Video: builds the three conditionings and the empty video latent.

Mirrors core ``WanImageToVideo`` (mask + first-frame image latent on ``concat_latent_image`` /
``concat_mask``) and adds what SteadyDancer needs: pose latents, the reference-image and
first-pose token frames and the CLIP feature of the first pose frame (DESIGN D3, model_spec §3).
"""
from __future__ import annotations

import logging
from typing import Any

import torch

import comfy.model_management
import node_helpers
import nodes as comfy_nodes
from comfy_api.latest import io

from ..steadydancer_core import conditioning, official_inputs
from ..steadydancer_core.pose import keypoints as pose_keypoints
from ..steadydancer_core.pose import negative as pose_negative
from ..steadydancer_core.pose import render as pose_render
from . import cond_keys
from .pose import images_to_uint8

CATEGORY = "SteadyDancer"


def check_frames(name: str, images: torch.Tensor, length: int) -> None:
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, 3], got shape {tuple(images.shape)}")
    if images.shape[0] < length:
        raise ValueError(f"{name} has {images.shape[0]} frames but length is {length}: "
                         f"give at least {length} frames or lower length")


def resize_frames(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, C] in [0, 1] -> the official bicubic resize (no crop, no clamp).

    Bicubic interpolation is linear, so resizing [0, 1] pixels equals the official resize of
    the [-1, 1] values; ComfyUI's VAE does the range change.
    """
    resized = conditioning.resize_bicubic(images[..., :3].movedim(-1, 1), height, width)
    return resized.movedim(1, -1)


def official_pose_frames(pose_frames: torch.Tensor, reference_hw: tuple[int, int], width: int,
                         height: int) -> torch.Tensor:
    """Pose pictures (IMAGE) -> the VAE input the official code makes of them, as an IMAGE at the output size:
    8-bit PIL bicubic to the reference's native size, then the torch bicubic resize (core ``pose_pictures``;
    values stay unclamped, ComfyUI's VAE maps [0, 1] -> [-1, 1] linearly)."""
    pictures = official_inputs.pose_pictures(images_to_uint8(pose_frames, "pose_images"), reference_hw, height, width)
    return (pictures * 0.5 + 0.5).movedim(1, -1)


def negative_pose_frames(keypoints: list, length: int, width: int, height: int, seed: int) -> torch.Tensor:
    """Negative pose pictures made from POSE_KEYPOINT with the official augmentation, as an IMAGE drawn on a
    ``width`` x ``height`` canvas (the positive pictures' canvas, as the official code draws both)."""
    frames = pose_keypoints.frames_from_pose_keypoint(keypoints)
    if len(frames) < length:
        raise ValueError(f"pose_keypoints has {len(frames)} frames but length is {length}")
    perturbed, _ = pose_negative.negative_poses(frames[:length], seed=seed)
    return torch.from_numpy(pose_render.render_frames(perturbed, width, height)).float() / 255.0


def check_sources(node_name: str, reference_image: torch.Tensor, pose_images: torch.Tensor, length: int,
                  width: int, height: int, clip_vision_reference: Any, clip_vision_first_pose: Any,
                  negative_pose_images: torch.Tensor | None, pose_keypoints: list | None,
                  negative_pose_seed: int) -> torch.Tensor | None:
    """Checks of the inputs of a ``length``-frame video, before any VAE call (D10). Returns the negative pose
    images: the given ones, made from ``pose_keypoints`` when absent, or None (pose term off, warned)."""
    check_frames("reference_image", reference_image, 1)
    check_frames("pose_images", pose_images, length)
    if negative_pose_images is None and pose_keypoints is not None:
        negative_pose_images = negative_pose_frames(pose_keypoints, length, pose_images.shape[2],
                                                    pose_images.shape[1], negative_pose_seed)
    if negative_pose_images is not None:
        check_frames("negative_pose_images", negative_pose_images, length)
    for name, clip_out in (("clip_vision_reference", clip_vision_reference),
                           ("clip_vision_first_pose", clip_vision_first_pose)):
        if getattr(clip_out, "penultimate_hidden_states", None) is None:
            raise ValueError(f"{name} has no penultimate hidden states: connect 'SteadyDancer CLIP Vision "
                             "Encode' (or a 'CLIP Vision Encode') with clip_vision_h")
    if negative_pose_images is None:
        logging.warning(f"{node_name}: neither negative pose images nor pose keypoints given, the pose term of "
                        "DC-CFG is switched off (connect 'SteadyDancer Pose Pipeline' to enable it)")
    return negative_pose_images


def keep_mask(num_frames: int, kept_frames: int, latent_height: int, latent_width: int,
              like: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``concat_mask`` (0 = keep, 1 = generate; WAN21.concat_cond inverts it) from the core's I2V
    keep mask, ``[1, 4, T, h, w]``, or ``[1, 1, T, h, w]`` when the four channels agree (whole latent frames
    kept, e.g. the one kept frame of a plain run): the layout core ``WanImageToVideo`` writes, which
    ``concat_cond`` repeats onto the four channels."""
    mask = 1.0 - conditioning.i2v_mask(num_frames, latent_height, latent_width, kept_frames=kept_frames,
                                       dtype=like.dtype, device=like.device)[None]
    return mask[:, :1].clone() if bool((mask == mask[:, :1]).all()) else mask


def build_conditionings(positive: list, negative: list, vae: Any, kept_frames: torch.Tensor,
                        pose_frames: torch.Tensor, negative_pose_frames: torch.Tensor | None,
                        clip_vision_reference: Any, clip_vision_first_pose: Any, width: int, height: int,
                        pose_strength_spatial: float, pose_strength_temporal: float, *,
                        reference_hw: tuple[int, int], ref_image_latent: torch.Tensor | None = None,
                        ref_pose_latent: torch.Tensor | None = None,
                        ) -> tuple[list, list, list, dict]:
    """The three DC-CFG conditionings and the empty latent of one I2V run of ``len(pose_frames)`` frames.

    ``kept_frames`` (IMAGE ``[C, H, W, 3]``) are the clip's given first frames: the reference of a plain run,
    the carried tail of the previous segment in a long video. ``ref_image_latent`` / ``ref_pose_latent``
    (``ref_x`` / ``ref_c``) default to frame 0 of the clip and pose latents, the training pairing; a long
    video passes the anchor's latents instead. Inputs are checked by the caller; frames are resized here: the
    kept frames straight to the output size, the pose pictures as the official code (``official_pose_frames``,
    through ``reference_hw``, the reference image's native (height, width)).
    """
    length = pose_frames.shape[0]
    latent_frames = conditioning.latent_frame_count(length)
    # The kept frames first, the rest mid-grey (0 in [-1, 1]), as the official I2V input.
    kept = resize_frames(kept_frames, width, height)
    clip = torch.full((length, height, width, 3), 0.5, dtype=kept.dtype, device=kept.device)
    clip[:kept.shape[0]] = kept
    image_latent = vae.encode(clip)
    mask = keep_mask(length, kept.shape[0], image_latent.shape[-2], image_latent.shape[-1], image_latent)
    # The causal VAE encodes frame 0 alone, so its latent is the first kept frame's own latent (ref_x).
    if ref_image_latent is None:
        ref_image_latent = image_latent[:, :, :1]

    pose_latent = vae.encode(official_pose_frames(pose_frames, reference_hw, width, height))
    if ref_pose_latent is None:
        ref_pose_latent = pose_latent[:, :, :1]

    shared = {
        "concat_latent_image": image_latent,
        "concat_mask": mask,
        "clip_vision_output": clip_vision_reference,
        cond_keys.POSE_CLIP_VISION_OUTPUT: clip_vision_first_pose,
        cond_keys.REF_IMAGE_LATENT: ref_image_latent,
        cond_keys.REF_POSE_LATENT: ref_pose_latent,
        cond_keys.POSE_STRENGTH_SPATIAL: pose_strength_spatial,
        cond_keys.POSE_STRENGTH_TEMPORAL: pose_strength_temporal,
    }
    out_positive = node_helpers.conditioning_set_values(positive, {**shared, cond_keys.POSE_LATENT: pose_latent})
    out_negative = node_helpers.conditioning_set_values(negative, {**shared, cond_keys.POSE_LATENT: pose_latent})
    if negative_pose_frames is not None:
        negative_pose_latent = vae.encode(official_pose_frames(negative_pose_frames, reference_hw, width, height))
        # Positive text with the perturbed poses; ref_c stays the positive first pose (official).
        out_negative_pose = node_helpers.conditioning_set_values(
            positive, {**shared, cond_keys.POSE_LATENT: negative_pose_latent})
    else:
        out_negative_pose = []  # the guider then runs without the pose term (the caller warned once)

    latent = torch.zeros([1, 16, latent_frames, height // 8, width // 8],
                         device=comfy.model_management.intermediate_device())
    return out_positive, out_negative, out_negative_pose, {"samples": latent}


# ---- inputs shared with 'SteadyDancer Long Video' -------------------------------------------------

def source_inputs() -> list:
    """Text conditionings, VAE, reference, poses and the two CLIP vision outputs."""
    return [
        io.Conditioning.Input("positive", tooltip="Text conditioning of the prompt (T5)."),
        io.Conditioning.Input("negative", tooltip="Text conditioning of the negative prompt (T5)."),
        io.Vae.Input("vae", tooltip="The Wan2.1 VAE (wan_2.1_vae.safetensors)."),
        io.Image.Input("reference_image", tooltip="The image to animate, kept as the first frame (after VAE "
                       "Decode frame 0 is its VAE round trip, not the exact pixels). Only the first image of a "
                       "batch is used; its native size is the pose pictures' first resize (official)."),
        io.Image.Input("pose_images", tooltip="Rendered driving poses, one per output frame "
                       "(aligned to the reference, e.g. from 'SteadyDancer Pose Pipeline'); resized as the "
                       "official code: 8-bit PIL bicubic to the reference's size, then bicubic to width x height."),
        io.ClipVisionOutput.Input("clip_vision_reference",
                                  tooltip="'SteadyDancer CLIP Vision Encode' of the reference image (official "
                                          "preprocessing; core 'CLIP Vision Encode' differs from it)."),
        io.ClipVisionOutput.Input("clip_vision_first_pose",
                                  tooltip="'SteadyDancer CLIP Vision Encode' of the first pose picture (official "
                                          "preprocessing)."),
    ]


def size_inputs() -> list:
    return [
        io.Int.Input("width", default=832, min=16, max=comfy_nodes.MAX_RESOLUTION, step=16,
                     tooltip="Output width in pixels (multiple of 16)."),
        io.Int.Input("height", default=480, min=16, max=comfy_nodes.MAX_RESOLUTION, step=16,
                     tooltip="Output height in pixels (multiple of 16)."),
    ]


def pose_strength_inputs() -> list:
    """The pose-branch scales and the seed of generated negative poses."""
    return [
        io.Float.Input("pose_strength_spatial", default=1.0, min=0.0, max=10.0, step=0.01,
                       tooltip="Scale of the spatial pose-branch output (1.0 = as trained)."),
        io.Float.Input("pose_strength_temporal", default=1.0, min=0.0, max=10.0, step=0.01,
                       tooltip="Scale of the temporal pose-branch output (1.0 = as trained)."),
        io.Int.Input("negative_pose_seed", default=0, min=0, max=0xffffffffffffffff,
                     tooltip="Seed of the negative-pose augmentation when it is made here from "
                             "pose_keypoints (unused when negative_pose_images are given)."),
    ]


def negative_pose_inputs() -> list:
    return [
        io.Image.Input("negative_pose_images", optional=True,
                       tooltip="Perturbed poses for the pose term of DC-CFG (e.g. from 'SteadyDancer "
                               "Pose Pipeline'). Without them and without keypoints the pose term is off."),
        io.Custom("POSE_KEYPOINT").Input(
            "pose_keypoints", optional=True,
            tooltip="Keypoints of the positive poses: when negative_pose_images are absent, the negative "
                    "poses are generated from them (official augmentation, negative_pose_seed)."),
    ]


class SteadyDancerImageToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerImageToVideo",
            display_name="SteadyDancer Image To Video",
            category=CATEGORY,
            description="Conditionings for SteadyDancer: the reference image is kept as frame 0 and animated "
                        "with the pose images. Outputs positive, negative (text) and negative-pose conditionings "
                        "for the DC-CFG guider, and the empty video latent.",
            inputs=source_inputs() + size_inputs() + [
                io.Int.Input("length", default=81, min=1, max=comfy_nodes.MAX_RESOLUTION, step=4,
                             tooltip="Number of output frames, 4n+1 (81 = 5 s at 16 fps)."),
            ] + pose_strength_inputs() + negative_pose_inputs(),
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Conditioning.Output(display_name="negative_pose"),
                io.Latent.Output(display_name="latent"),
            ],
        )

    @classmethod
    def execute(cls, positive: list, negative: list, vae: Any, reference_image: torch.Tensor,
                pose_images: torch.Tensor, clip_vision_reference: Any, clip_vision_first_pose: Any,
                width: int, height: int, length: int, pose_strength_spatial: float = 1.0,
                pose_strength_temporal: float = 1.0, negative_pose_seed: int = 0,
                negative_pose_images: torch.Tensor | None = None, pose_keypoints: list | None = None) -> io.NodeOutput:
        # Every check before the first VAE call (D10).
        conditioning.validate_size(height, width)
        conditioning.validate_frame_count(length)
        negative_pose_images = check_sources(
            "SteadyDancer Image To Video", reference_image, pose_images, length, width, height,
            clip_vision_reference, clip_vision_first_pose, negative_pose_images, pose_keypoints, negative_pose_seed)
        return io.NodeOutput(*build_conditionings(
            positive, negative, vae, reference_image[:1], pose_images[:length],
            None if negative_pose_images is None else negative_pose_images[:length],
            clip_vision_reference, clip_vision_first_pose, width, height,
            pose_strength_spatial, pose_strength_temporal, reference_hw=tuple(reference_image.shape[1:3])))
