"""Pose nodes in real ComfyUI (needs COMFYUI_PATH; skips otherwise).

The DWPose detector runs on onnxruntime with the tiny constant-output YOLOX/DWPose graphs of the
core detector tests (real tensor names and shapes); the nodes must hand ComfyUI exactly what the
core functions give for the same data.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_pose_detect_models import build_dwpose, build_yolox, simcc_for_keypoints, yolox_raw_output

from tests.comfyui import harness

from steadydancer_core.pose.detect.models import DETECTOR_FILE, POSE_FILE

# The core as the pack imports it (ComfyUI loads the pack as its own package, so its classes are
# distinct objects from a top-level ``steadydancer_core`` import).
core_keypoints = core_negative = core_render = None


@pytest.fixture(scope="module", autouse=True)
def pose():
    global core_keypoints, core_negative, core_render
    core_keypoints = harness.pack_module("steadydancer_core.pose.keypoints")
    core_negative = harness.pack_module("steadydancer_core.pose.negative")
    core_render = harness.pack_module("steadydancer_core.pose.render")
    return harness.pack_module("nodes.pose")


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("steadydancer_pose")
    x_bins = (3 * np.arange(133) + 150) % 576
    y_bins = (5 * np.arange(133) + 200) % 768
    simcc_x, simcc_y = simcc_for_keypoints(x_bins, y_bins, np.full(133, 0.9, np.float32))
    build_yolox(folder / DETECTOR_FILE, yolox_raw_output([(200, 100, 440, 560)], [0.9]))
    build_dwpose(folder / POSE_FILE, simcc_x, simcc_y)
    return folder


@pytest.fixture()
def detector(pose, models_folder, monkeypatch):
    import folder_paths

    name = harness.pack_module("nodes.model_folders").POSE_MODELS
    monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(models_folder)], {".onnx"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    assert set(pose.SteadyDancerPoseDetectorLoader.define_schema().inputs[1].options) == {DETECTOR_FILE, POSE_FILE}
    return pose.SteadyDancerPoseDetectorLoader.execute("dwpose", DETECTOR_FILE, POSE_FILE).result[0]


def video(frames: int, h: int = 96, w: int = 64) -> torch.Tensor:
    return torch.rand(frames, h, w, 3, generator=torch.Generator().manual_seed(frames))


def test_extract_matches_core_detector(pose, detector):
    images = video(3)
    keypoints, preview = pose.SteadyDancerExtractPoses.execute(detector, images).result
    frames_u8 = (images * 255).round().to(torch.uint8).numpy()
    expected = [detector.detect(f) for f in frames_u8]
    assert keypoints == core_keypoints.frames_to_pose_keypoint(expected)
    assert len(keypoints) == 3 and len(keypoints[0]["people"]) == 1
    assert preview.shape == (3, 96, 64, 3) and preview.dtype == torch.float32
    assert preview.max() > 0  # something was drawn


def test_negative_and_render_follow_core(pose, detector):
    keypoints = pose.SteadyDancerExtractPoses.execute(detector, video(4)).result[0]
    neg_a = pose.SteadyDancerNegativePose.execute(keypoints, 5).result[0]
    neg_b = pose.SteadyDancerNegativePose.execute(keypoints, 5).result[0]
    assert neg_a == neg_b and neg_a != keypoints
    expected, _ = core_negative.negative_poses(core_keypoints.frames_from_pose_keypoint(keypoints), seed=5)
    assert neg_a == core_keypoints.frames_to_pose_keypoint(expected)

    images = pose.SteadyDancerRenderPoses.execute(neg_a, 48, 80, "steadydancer").result[0]
    drawn = core_render.render_frames(core_keypoints.frames_from_pose_keypoint(neg_a), 48, 80)
    torch.testing.assert_close(images, torch.from_numpy(drawn).float() / 255)


def test_pipeline_outputs(pose, detector):
    outputs = pose.SteadyDancerPosePipeline.execute(detector, video(1, 120, 80), video(7), 48, 80, 5, True, 3).result
    positive, negative, first, keypoints = outputs
    assert positive.shape == negative.shape == (5, 80, 48, 3)
    assert torch.equal(first, positive[:1])
    assert not torch.equal(positive, negative)
    assert len(keypoints) == 5 and keypoints[0]["canvas_width"] == 48 and keypoints[0]["canvas_height"] == 80
    aligned = pose.SteadyDancerAlignPoses.execute(
        pose.SteadyDancerExtractPoses.execute(detector, pose.resize_reference(video(1, 120, 80), 48, 80)).result[0],
        pose.SteadyDancerExtractPoses.execute(detector, video(7)[:5]).result[0], 48, 80, True, 0).result[0]
    assert aligned == keypoints


def test_pipeline_refuses_short_driving_video(pose, detector):
    with pytest.raises(ValueError, match="driving_frames has 3 frames but length is 5"):
        pose.SteadyDancerPosePipeline.execute(detector, video(1), video(3), 48, 80, 5, True, 0)
    with pytest.raises(ValueError, match="4n\\+1"):
        pose.SteadyDancerPosePipeline.execute(detector, video(1), video(9), 48, 80, 6, True, 0)
