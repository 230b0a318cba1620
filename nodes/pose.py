"""Pose nodes: thin adapters over ``steadydancer_core.pose`` (detection, alignment, negative pose,
rendering). Keypoints travel as comfyui_controlnet_aux's ``POSE_KEYPOINT`` so they interoperate
with its nodes; images as ComfyUI ``IMAGE`` (float [N, H, W, 3] in [0, 1]).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

import comfy.utils
import folder_paths
import nodes as comfy_nodes
from comfy_api.latest import io

from ..steadydancer_core.pose import conditions as pose_conditions
from ..steadydancer_core.pose import detect, negative, render
from ..steadydancer_core.pose import keypoints as pose_keypoints
from ..steadydancer_core.pose.align import align_sequence
from .model_folders import POSE_MODELS

CATEGORY = "SteadyDancer"
PoseDetector = io.Custom("STEADYDANCER_POSE_DETECTOR")
PoseKeypoint = io.Custom("POSE_KEYPOINT")
PALETTES = ["steadydancer", "openpose"]


def images_to_uint8(images: torch.Tensor, name: str) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] < 3:
        raise ValueError(f"{name} must be an IMAGE batch [frames, height, width, 3], got shape {tuple(images.shape)}")
    return (images[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def uint8_to_images(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).float() / 255.0


def resize_reference(reference_image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The reference at the generation size (official: detected after resizing), as an IMAGE."""
    from ..steadydancer_core import conditioning

    resized = conditioning.resize_bicubic(reference_image[:1, ..., :3].movedim(-1, 1), height, width)
    return resized.movedim(1, -1).clamp(0, 1)


def detect_with_progress(detector: Any, frames: np.ndarray) -> list[pose_keypoints.PoseFrame]:
    progress = comfy.utils.ProgressBar(len(frames))
    out = []
    for frame in frames:
        out.append(detector.detect(frame))
        progress.update(1)
    return out


def size_inputs() -> list:
    return [
        io.Int.Input("width", default=832, min=16, max=comfy_nodes.MAX_RESOLUTION, step=16,
                     tooltip="Width of the generation (the pose pictures are drawn at this size)."),
        io.Int.Input("height", default=480, min=16, max=comfy_nodes.MAX_RESOLUTION, step=16,
                     tooltip="Height of the generation."),
    ]


class SteadyDancerPoseDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list(POSE_MODELS)
        return io.Schema(
            node_id="SteadyDancerPoseDetectorLoader",
            display_name="SteadyDancer Pose Detector Loader",
            category=CATEGORY,
            description="DWPose (YOLOX-L + DWPose-L ONNX on onnxruntime; files in models/steadydancer_pose) "
                        "or mediapipe (offline, optional extra).",
            inputs=[
                io.Combo.Input("backend", options=list(detect.BACKENDS), default="dwpose",
                               tooltip="dwpose = the authors' detector; mediapipe needs the optional package."),
                io.Combo.Input("detector_model", options=files,
                               tooltip="YOLOX person detector (yolox_l.onnx from yzd-v/DWPose)."),
                io.Combo.Input("pose_model", options=files,
                               tooltip="DWPose keypoint model (dw-ll_ucoco_384.onnx from yzd-v/DWPose)."),
            ],
            outputs=[PoseDetector.Output(display_name="detector")],
        )

    @classmethod
    def execute(cls, backend: str, detector_model: str, pose_model: str) -> io.NodeOutput:
        if backend == "mediapipe":
            return io.NodeOutput(detect.create_detector("mediapipe"))
        return io.NodeOutput(detect.DWPoseDetector(
            folder_paths.get_full_path_or_raise(POSE_MODELS, detector_model),
            folder_paths.get_full_path_or_raise(POSE_MODELS, pose_model)))


class SteadyDancerExtractPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerExtractPoses",
            display_name="SteadyDancer Extract Poses",
            category=CATEGORY,
            description="Detect body + hand keypoints in every frame.",
            inputs=[
                PoseDetector.Input("detector", tooltip="From 'SteadyDancer Pose Detector Loader'."),
                io.Image.Input("images", tooltip="Frames to detect people in."),
            ],
            outputs=[PoseKeypoint.Output(display_name="keypoints"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, detector: Any, images: torch.Tensor) -> io.NodeOutput:
        frames = images_to_uint8(images, "images")
        poses = detect_with_progress(detector, frames)
        height, width = frames.shape[1:3]
        preview = render.render_frames(poses, width, height, palette="openpose")
        return io.NodeOutput(pose_keypoints.frames_to_pose_keypoint(poses), uint8_to_images(preview))


class SteadyDancerAlignPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerAlignPoses",
            display_name="SteadyDancer Align Poses",
            category=CATEGORY,
            description="Rescale the driving person bone by bone to the reference body (official per-bone "
                        "ratios from one calibration frame), placed on the generation canvas.",
            inputs=[
                PoseKeypoint.Input("reference_keypoints", tooltip="Keypoints of the reference image (first frame used)."),
                PoseKeypoint.Input("driving_keypoints", tooltip="Keypoints of the driving frames."),
                *size_inputs(),
                io.Boolean.Input("robust", default=True, tooltip="Handle missing joints and clamp bone ratios "
                                 "(off = the official arithmetic, which can produce garbage on missing joints)."),
                io.Int.Input("align_frame", default=0, min=0, max=100000,
                             tooltip="Driving frame used to calibrate the bone ratios."),
            ],
            outputs=[PoseKeypoint.Output(display_name="aligned_keypoints")],
        )

    @classmethod
    def execute(cls, reference_keypoints: list, driving_keypoints: list, width: int, height: int, robust: bool,
                align_frame: int) -> io.NodeOutput:
        reference = pose_keypoints.frames_from_pose_keypoint(reference_keypoints)[0]
        aligned, _ = align_sequence(reference, pose_keypoints.frames_from_pose_keypoint(driving_keypoints),
                                    canvas_size=(width, height), align_frame=align_frame, robust=robust)
        return io.NodeOutput(pose_keypoints.frames_to_pose_keypoint(aligned))


class SteadyDancerNegativePose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerNegativePose",
            display_name="SteadyDancer Negative Pose",
            category=CATEGORY,
            description="The perturbed pose for DC-CFG: every frame scaled by U(0.7, 1.3) and its width by "
                        "U(0.6, 1.4) about the neck (official augmentation), seeded.",
            inputs=[
                PoseKeypoint.Input("keypoints", tooltip="Aligned keypoints (positive pose)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the per-frame random scales."),
            ],
            outputs=[PoseKeypoint.Output(display_name="negative_keypoints")],
        )

    @classmethod
    def execute(cls, keypoints: list, seed: int) -> io.NodeOutput:
        frames = pose_keypoints.frames_from_pose_keypoint(keypoints)
        perturbed, _ = negative.negative_poses(frames, seed=seed)
        return io.NodeOutput(pose_keypoints.frames_to_pose_keypoint(perturbed))


class SteadyDancerRenderPoses(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerRenderPoses",
            display_name="SteadyDancer Render Poses",
            category=CATEGORY,
            description="Draw keypoints as the official pose pictures (body + hands, dimmed limbs, 2x supersampled).",
            inputs=[
                PoseKeypoint.Input("keypoints", tooltip="Keypoints to draw."),
                *size_inputs(),
                io.Combo.Input("palette", options=PALETTES, default="steadydancer",
                               tooltip="steadydancer = the pictures the model was trained on; openpose = standard colours."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, keypoints: list, width: int, height: int, palette: str) -> io.NodeOutput:
        frames = pose_keypoints.frames_from_pose_keypoint(keypoints)
        return io.NodeOutput(uint8_to_images(render.render_frames(frames, width, height, palette=palette)))


class SteadyDancerPosePipeline(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerPosePipeline",
            display_name="SteadyDancer Pose Pipeline",
            category=CATEGORY,
            description="Reference image + driving frames -> aligned positive pose images, negative pose "
                        "images, the first pose image (for CLIP) and the aligned keypoints.",
            inputs=[
                PoseDetector.Input("detector", tooltip="From 'SteadyDancer Pose Detector Loader'."),
                io.Image.Input("reference_image", tooltip="The image to animate (first image used)."),
                io.Image.Input("driving_frames", tooltip="Frames of the driving video (e.g. Load Video at 16 fps)."),
                *size_inputs(),
                io.Int.Input("length", default=81, min=1, max=comfy_nodes.MAX_RESOLUTION, step=4,
                             tooltip="Frames to produce (4n+1); the first `length` driving frames are used."),
                io.Boolean.Input("align", default=True, tooltip="Align the driving body to the reference body."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the negative-pose augmentation."),
            ],
            outputs=[
                io.Image.Output(display_name="pose_images"),
                io.Image.Output(display_name="negative_pose_images"),
                io.Image.Output(display_name="first_pose_image"),
                PoseKeypoint.Output(display_name="keypoints"),
            ],
        )

    @classmethod
    def execute(cls, detector: Any, reference_image: torch.Tensor, driving_frames: torch.Tensor, width: int,
                height: int, length: int, align: bool, seed: int) -> io.NodeOutput:
        from ..steadydancer_core import conditioning

        conditioning.validate_size(height, width)
        conditioning.validate_frame_count(length)
        if driving_frames.shape[0] < length:
            raise ValueError(f"driving_frames has {driving_frames.shape[0]} frames but length is {length}")
        # The official code detects on the reference resized to the generation size.
        reference = resize_reference(reference_image, width, height)
        reference_pose = detector.detect(images_to_uint8(reference, "reference_image")[0])
        driving = detect_with_progress(detector, images_to_uint8(driving_frames[:length], "driving_frames"))
        result = pose_conditions.build_pose_conditions(reference_pose, driving, width, height, seed, align=align)
        positive = uint8_to_images(result.positive_images)
        return io.NodeOutput(positive, uint8_to_images(result.negative_images), positive[:1],
                             pose_keypoints.frames_to_pose_keypoint(result.aligned))
