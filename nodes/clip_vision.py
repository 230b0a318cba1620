"""SteadyDancer CLIP Vision Encode: the CLIP features of the reference and of the first pose picture, with the
official preprocessing (``steadydancer_core.official_inputs``) instead of core *CLIP Vision Encode*'s.

Core *CLIP Vision Encode* resizes with antialias and rounds the resized pixels to 8 bits, and a pose picture
goes in at its own size; the official code squashes each image to the tower's size with plain bicubic, no
rounding, after PIL-resizing the first pose picture to the reference's size. Only the pixel preparation is
ours: the network is ComfyUI's own CLIP vision model, called as ``ClipVisionModel.encode_image`` calls it.
"""
from __future__ import annotations

from typing import Any

import torch

import comfy.clip_vision
import comfy.model_management
from comfy_api.latest import io

from ..steadydancer_core import conditioning, official_inputs
from .pose import images_to_uint8

CATEGORY = "SteadyDancer"


def encode_model_range(clip_vision: Any, images: torch.Tensor) -> list[Any]:
    """One ``CLIP_VISION_OUTPUT`` per image of ``images`` [B, 3, H, W] in [-1, 1] at native size, through the
    official ``ClipPreprocess`` and ComfyUI's CLIP vision network (the fields ``encode_image`` fills)."""
    if not hasattr(clip_vision, "image_size") or not hasattr(clip_vision, "patcher"):
        raise ValueError("clip_vision must be a CLIP vision model (CLIP Vision Loader), "
                         f"got {type(clip_vision).__name__}")
    preprocess = official_inputs.ClipPreprocess(size=int(clip_vision.image_size), mean=tuple(clip_vision.image_mean),
                                                std=tuple(clip_vision.image_std))
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    pixel_values = preprocess(images.to(clip_vision.load_device))
    all_hidden = getattr(clip_vision, "return_all_hidden_states", False)
    with torch.no_grad():
        out = clip_vision.model(pixel_values=pixel_values, intermediate_output="all" if all_hidden else -2)
    device = comfy.model_management.intermediate_device()
    penultimate = (out[1][:, -2] if all_hidden else out[1]).to(device)
    outputs = []
    for i in range(images.shape[0]):
        item = comfy.clip_vision.Output()
        item["last_hidden_state"] = out[0][i:i + 1].to(device)
        item["image_embeds"] = out[2][i:i + 1].to(device)
        item["penultimate_hidden_states"] = penultimate[i:i + 1]
        item["mm_projected"] = None if out[3] is None else out[3][i:i + 1]
        outputs.append(item)
    return outputs


def images_to_model_range(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, C] in [0, 1] -> [N, 3, H, W] in [-1, 1] (no 8-bit rounding)."""
    return conditioning.to_model_range(images[..., :3].movedim(-1, 1))


def official_clip_outputs(clip_vision: Any, reference_image: torch.Tensor, pose_images: torch.Tensor) -> list[Any]:
    """[CLIP of the reference, CLIP of the first pose picture], both prepared as the official pipeline does."""
    reference = images_to_model_range(reference_image[:1])
    first_pose = images_to_uint8(pose_images[:1], "pose_images")[0]
    return encode_model_range(clip_vision, official_inputs.clip_images(reference, first_pose))


class SteadyDancerClipVisionEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerClipVisionEncode",
            display_name="SteadyDancer CLIP Vision Encode",
            category=CATEGORY,
            description="CLIP of the reference image and of the first pose picture, preprocessed as the official "
                        "code: the pose picture PIL-bicubic-resized to the reference's size, then each squashed "
                        "to the CLIP input size with bicubic (no crop, no antialias, no 8-bit rounding).",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="CLIP vision model (clip_vision_h)."),
                io.Image.Input("reference_image", tooltip="The reference at its native size (first image used)."),
                io.Image.Input("pose_images", tooltip="The pose pictures; the first one is encoded (as the pose "
                               "pictures given to 'SteadyDancer Image To Video')."),
            ],
            outputs=[
                io.ClipVisionOutput.Output(display_name="clip_vision_reference"),
                io.ClipVisionOutput.Output(display_name="clip_vision_first_pose"),
            ],
        )

    @classmethod
    def execute(cls, clip_vision: Any, reference_image: torch.Tensor, pose_images: torch.Tensor) -> io.NodeOutput:
        for name, images in (("reference_image", reference_image), ("pose_images", pose_images)):
            if images.ndim != 4 or images.shape[0] < 1 or images.shape[-1] < 3:
                raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, 3], "
                                 f"got shape {tuple(images.shape)}")
        return io.NodeOutput(*official_clip_outputs(clip_vision, reference_image, pose_images))
