"""SteadyDancer Long Video: a video of any length as a chain of I2V segments that keep the reference (D11).

The plan, the per-segment seeds, the anchors and the colour matching are the core's
(``steadydancer_core.segments``); this node only renders each segment the core asks for, with the
conditioning builder of 'SteadyDancer Image To Video', the DC-CFG sampling of 'SteadyDancer KSampler' and
ComfyUI's own VAE Decode, so segment 0 is exactly the plain Image To Video + KSampler + VAE Decode run.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

import comfy.model_management
import latent_preview
import nodes as comfy_nodes
from comfy_api.latest import io

from ..steadydancer_core import conditioning, official_inputs, segments
from . import cond_keys
from .clip_vision import encode_model_range, images_to_model_range
from .image_to_video import (build_conditionings, check_sources, negative_pose_inputs, official_pose_frames,
                             pose_strength_inputs, resize_frames, size_inputs, source_inputs)
from .model_registration import require_steadydancer_model
from .pose import images_to_uint8, uint8_to_images
from .sampling import SamplerCallback, model_input, sample_dc_cfg, sampling_inputs

CATEGORY = "SteadyDancer"
NODE_NAME = "SteadyDancer Long Video"


class SegmentRenderer:
    """Renders the segments the core's chain requests (``segments.SegmentRenderer``): conditionings, DC-CFG
    sampling with the segment's seed, VAE decode, uint8 frames. Everything fixed over the run lives here."""

    def __init__(self, *, model: Any, vae: Any, positive: list, negative: list, reference_image: torch.Tensor,
                 pose_images: torch.Tensor, negative_pose_images: torch.Tensor | None, clip_vision: Any,
                 clip_vision_reference: Any, clip_vision_first_pose: Any, width: int, height: int,
                 pose_strength_spatial: float, pose_strength_temporal: float, sampling: dict[str, Any],
                 progress: SamplerCallback, total_steps: int) -> None:
        self.model, self.vae, self.clip_vision = model, vae, clip_vision
        self.positive, self.negative = positive, negative
        self.reference_image = reference_image
        self.reference_hw = tuple(reference_image.shape[1:3])  # native size: the pose pictures' first resize
        self.pose_images, self.negative_pose_images = pose_images, negative_pose_images
        self.clip_vision_reference, self.clip_vision_first_pose = clip_vision_reference, clip_vision_first_pose
        self.width, self.height = width, height
        self.pose_strengths = (pose_strength_spatial, pose_strength_temporal)
        self.sampling = sampling  # steps, cfgs, pose window, formula, sampler_name, scheduler
        self.progress, self.total_steps = progress, total_steps
        self.reference_latents: tuple[torch.Tensor, torch.Tensor] | None = None  # segment 0's (ref_x, ref_c)

    def __call__(self, request: segments.SegmentRequest) -> np.ndarray:
        # Cancel between segments (the samplers check within steps, the VAE between its chunks).
        comfy.model_management.throw_exception_if_processing_interrupted()
        seg = request.segment
        indices = torch.from_numpy(request.pose_indices)
        poses = self.pose_images[indices]
        negative_poses = None if self.negative_pose_images is None else self.negative_pose_images[indices]
        # Segment 0 keeps the reference exactly as Image To Video does (the float resize; the core's uint8 copy
        # serves colour matching); later segments keep the previous output's last frames.
        kept = self.reference_image if seg.index == 0 else uint8_to_images(request.kept_frames)
        ref_x, ref_c, clip_x, clip_c = self.anchor(request)
        positive, negative, negative_pose, latent = build_conditionings(
            self.positive, self.negative, self.vae, kept, poses, negative_poses, clip_x, clip_c,
            self.width, self.height, *self.pose_strengths, reference_hw=self.reference_hw, ref_image_latent=ref_x,
            ref_pose_latent=ref_c)
        if seg.index == 0:
            shared = positive[0][1]
            self.reference_latents = (shared[cond_keys.REF_IMAGE_LATENT], shared[cond_keys.REF_POSE_LATENT])

        steps = self.sampling["steps"]
        done = seg.index * steps

        def callback(step: int, x0: torch.Tensor, x: torch.Tensor, _segment_steps: int) -> None:
            self.progress(done + step, x0, x, self.total_steps)

        out = sample_dc_cfg(self.model, seg.seed, positive=positive, negative=negative, negative_pose=negative_pose,
                            latent_image=latent, callback=callback, node_name=NODE_NAME, **self.sampling)
        return images_to_uint8(comfy_nodes.VAEDecode().decode(self.vae, out)[0], "decoded segment")

    def anchor(self, request: segments.SegmentRequest) -> tuple[torch.Tensor | None, torch.Tensor | None, Any, Any]:
        """(ref_x, ref_c, CLIP of the anchor frame, CLIP of the anchor pose) for the segment; None latents =
        the builder's frame-0 latents, which for segment 0 are the reference's."""
        if request.anchor_is_reference:
            ref_x, ref_c = self.reference_latents or (None, None)
            return ref_x, ref_c, self.clip_vision_reference, self.clip_vision_first_pose
        frame = uint8_to_images(request.anchor_frame[None])
        pose = self.pose_images[request.anchor_pose_index:request.anchor_pose_index + 1]
        # Each encoded alone, as the reference and the first pose of a plain run (causal VAE: frame 0 alone),
        # and prepared as the core's segment anchor: the frame at the output size, the pose at the reference's.
        ref_x = self.vae.encode(resize_frames(frame, self.width, self.height))
        ref_c = self.vae.encode(official_pose_frames(pose, self.reference_hw, self.width, self.height))
        pose_native = official_inputs.poses_at_reference_size(images_to_uint8(pose, "pose_images"), self.reference_hw)
        clips = [encode_model_range(self.clip_vision, images)[0]
                 for images in (images_to_model_range(frame), pose_native)]
        return ref_x, ref_c, clips[0], clips[1]


class SteadyDancerLongVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerLongVideo",
            display_name=NODE_NAME,
            category=CATEGORY,
            description="A video of any length from the reference and the poses, generated segment by segment: "
                        "each segment keeps the last frame(s) of the previous one and the reference as identity "
                        "anchor, sampled with the DC-CFG of 'SteadyDancer KSampler'. Outputs exactly `length` "
                        "frames; frame 0 is the VAE decode of the kept reference.",
            inputs=[model_input()] + source_inputs() + size_inputs() + [
                io.Int.Input("length", default=241, min=1, max=comfy_nodes.MAX_RESOLUTION,
                             tooltip="Number of output frames, any count up to the pose frames given "
                                     "(241 = 15 s at 16 fps)."),
                io.Int.Input("segment_frames", default=segments.DEFAULT_SEGMENT_FRAMES, min=5,
                             max=comfy_nodes.MAX_RESOLUTION, step=4,
                             tooltip="Frames generated per segment, 4n+1 (81 = the official clip length)."),
                io.Int.Input("carry_frames", default=segments.DEFAULT_CARRY_FRAMES, min=1,
                             max=comfy_nodes.MAX_RESOLUTION,
                             tooltip="Last frames of each segment kept as the first frames of the next "
                                     "(1 = as trained, where frame 0 alone was kept; more = more motion context, not measured)."),
                io.Combo.Input("anchor", options=list(segments.ANCHORS), default=segments.DEFAULT_ANCHOR,
                               tooltip="reference = every segment keeps the reference image and first pose as "
                                       "identity (ref tokens, CLIP); segment = each segment's own first frame "
                                       "and pose (as trained, but drift accumulates; needs clip_vision)."),
                io.Combo.Input("color_match", options=list(segments.COLOR_MATCH_MODES),
                               default=segments.DEFAULT_COLOR_MATCH,
                               tooltip="Histogram matching of each later segment's new frames: onto the "
                                       "reference (bounds colour drift), onto the previous segment, or none."),
            ] + pose_strength_inputs() + sampling_inputs(
                "Seed of segment 0's noise (segment 0 then equals the plain KSampler run); later segments draw "
                "their seeds from it.") + negative_pose_inputs() + [
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP vision model (clip_vision_h), needed by anchor = segment to "
                                            "encode each segment's first frame and first pose (official CLIP "
                                            "preprocessing)."),
            ],
            outputs=[io.Image.Output(display_name="frames")],
        )

    @classmethod
    def execute(cls, model: Any, positive: list, negative: list, vae: Any, reference_image: torch.Tensor,
                pose_images: torch.Tensor, clip_vision_reference: Any, clip_vision_first_pose: Any, width: int,
                height: int, length: int, segment_frames: int, carry_frames: int, anchor: str, color_match: str,
                pose_strength_spatial: float, pose_strength_temporal: float, negative_pose_seed: int, seed: int,
                steps: int, text_cfg: float, pose_cfg: float, pose_start: float, pose_end: float, formula: str,
                sampler_name: str, scheduler: str, negative_pose_images: torch.Tensor | None = None,
                pose_keypoints: list | None = None, clip_vision: Any = None, shift: str = "auto") -> io.NodeOutput:
        # Every check before the first VAE call (D10): a long run must not fail at segment 5. The core checks
        # anchor and color_match before it renders anything.
        require_steadydancer_model(model, NODE_NAME)
        conditioning.validate_size(height, width)
        plan = segments.plan_segments(length, segment_frames, carry_frames, seed)
        negative_pose_images = check_sources(
            NODE_NAME, reference_image, pose_images, length, width, height, clip_vision_reference,
            clip_vision_first_pose, negative_pose_images, pose_keypoints, negative_pose_seed)
        if anchor == "segment" and clip_vision is None:
            raise ValueError("anchor = segment encodes each segment's first frame and first pose with CLIP vision: "
                             "connect clip_vision (a CLIP Vision Loader with clip_vision_h), or use "
                             "anchor = reference")
        if anchor == "reference" and clip_vision is not None:
            logging.warning(f"{NODE_NAME}: clip_vision is only used with anchor = segment; with anchor = reference "
                            "every segment uses clip_vision_reference and clip_vision_first_pose")
        for line in plan.describe():
            logging.info(f"{NODE_NAME}: {line}")

        total_steps = len(plan.segments) * steps
        renderer = SegmentRenderer(
            model=model, vae=vae, positive=positive, negative=negative, reference_image=reference_image[:1],
            pose_images=pose_images, negative_pose_images=negative_pose_images, clip_vision=clip_vision,
            clip_vision_reference=clip_vision_reference, clip_vision_first_pose=clip_vision_first_pose,
            width=width, height=height, pose_strength_spatial=pose_strength_spatial,
            pose_strength_temporal=pose_strength_temporal,
            sampling=dict(steps=steps, text_cfg=text_cfg, pose_cfg=pose_cfg, pose_start=pose_start,
                          pose_end=pose_end, formula=formula, sampler_name=sampler_name, scheduler=scheduler,
                          shift=shift),
            # One progress bar (with latent previews) over every segment's steps.
            progress=latent_preview.prepare_callback(model, total_steps), total_steps=total_steps)
        reference = images_to_uint8(resize_frames(reference_image[:1], width, height), "reference_image")[0]
        chunks: list[np.ndarray] = []
        segments.generate_long_video(plan, reference, renderer, chunks.append, anchor=anchor, color_match=color_match)
        return io.NodeOutput(uint8_to_images(np.concatenate(chunks)))
