"""SteadyDancer CLIP Vision Encode and the pose pictures of Image To Video in real ComfyUI (needs COMFYUI_PATH).

The same tiny random CLIP vision weights run as ComfyUI's ``ClipVisionModel`` (in the node) and as the core's
standalone ``CLIPVisionEncoder`` (transformers); the node's features must equal what the standalone path computes
from the same images, and both must equal the official preprocessing written out here (PIL bicubic of the pose
picture to the reference size, bicubic squash to the tower's size without antialias or rounding, mean/std).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.comfyui import harness
from tests.comfyui.tiny_models import comfy_wan21_vae, tiny_clip_vision_pair

from steadydancer_core import official_inputs

REF_HW, POSE_HW = (40, 24), (80, 48)  # pose pictures at 2x the reference, as the official pose pictures


@pytest.fixture(scope="module")
def clip_vision_module():
    return harness.pack_module("nodes.clip_vision")


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    harness.load_pack()
    return tiny_clip_vision_pair(tmp_path_factory.mktemp("tiny_clip"))


def uint8_frames(n: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def as_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames as a ComfyUI IMAGE (what Load Image gives)."""
    return torch.from_numpy(frames).float() / 255.0


def official_pil_resize(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))


def official_minus_one_to_one(frame: np.ndarray) -> torch.Tensor:
    """The official TF.to_tensor(img).sub_(0.5).div_(0.5), [3, H, W]."""
    return (torch.from_numpy(np.array(frame)).permute(2, 0, 1).float() / 255.0).sub(0.5).div(0.5)


def official_clip_features(core_encoder, image: torch.Tensor) -> torch.Tensor:
    """Official clip.py: squash to the input size with bicubic, [-1,1] -> [0,1], mean/std; block -2's output."""
    size = core_encoder.preprocess.size
    x = F.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False).mul(0.5).add(0.5)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (official_inputs.CLIP_MEAN, official_inputs.CLIP_STD))
    x = (x - mean) / std
    with torch.no_grad():
        return core_encoder.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]


@pytest.mark.parametrize("pose_hw", [POSE_HW, REF_HW], ids=["pose-2x-reference", "pose-at-reference-size"])
def test_features_equal_the_standalone_path_and_the_official_preprocessing(clip_vision_module, towers, pose_hw):
    comfy_tower, core_encoder = towers
    reference, poses = uint8_frames(1, REF_HW, 0), uint8_frames(3, pose_hw, 1)
    out_reference, out_pose = clip_vision_module.SteadyDancerClipVisionEncode.execute(
        comfy_tower, as_image(reference), as_image(poses)).result

    # The standalone pipeline's call (pipeline.generate) on the same images.
    standalone = core_encoder.encode(official_inputs.clip_images(
        official_inputs.frames_to_model_range(reference), poses[0]))
    torch.testing.assert_close(out_reference.penultimate_hidden_states, standalone[:1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out_pose.penultimate_hidden_states, standalone[1:], rtol=0, atol=1e-5)

    # Independent: the official steps written out.
    first_pose = official_pil_resize(poses[0], REF_HW)
    torch.testing.assert_close(out_reference.penultimate_hidden_states,
                               official_clip_features(core_encoder, official_minus_one_to_one(reference[0])),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(out_pose.penultimate_hidden_states,
                               official_clip_features(core_encoder, official_minus_one_to_one(first_pose)),
                               rtol=0, atol=1e-5)
    assert out_reference.penultimate_hidden_states.shape == (1, 257, 48)


def test_core_clip_vision_encode_differs_from_the_official_preprocessing(towers):
    """Why the node exists: core CLIP Vision Encode (antialias, 8-bit rounding, pose at its own size) gives other
    features than the official preprocessing on the same images."""
    comfy_tower, core_encoder = towers
    reference, poses = uint8_frames(1, REF_HW, 0), uint8_frames(1, POSE_HW, 1)
    official = official_clip_features(core_encoder, official_minus_one_to_one(official_pil_resize(poses[0], REF_HW)))
    with torch.no_grad():
        core_node = comfy_tower.encode_image(as_image(poses), crop=False).penultimate_hidden_states
    assert float((core_node - official).abs().max()) > 1e-2


def test_clip_vision_encode_rejects_bad_inputs(clip_vision_module, towers):
    comfy_tower, _ = towers
    with pytest.raises(ValueError, match="pose_images must be an IMAGE batch"):
        clip_vision_module.SteadyDancerClipVisionEncode.execute(comfy_tower, as_image(uint8_frames(1, REF_HW, 0)),
                                                                torch.zeros(0, 8, 8, 3))
    with pytest.raises(ValueError, match="clip_vision must be a CLIP vision model"):
        clip_vision_module.SteadyDancerClipVisionEncode.execute(object(), as_image(uint8_frames(1, REF_HW, 0)),
                                                                as_image(uint8_frames(1, REF_HW, 1)))


def test_image_to_video_pose_latents_are_the_official_pictures(towers):
    """Pose and negative-pose latents = the VAE of the official pictures: PIL bicubic to the reference's native
    size, then torch bicubic to the output size (no clamp); the core's pose_pictures (the standalone path) too."""
    import comfy.clip_vision

    i2v = harness.pack_module("nodes.image_to_video")
    keys = harness.pack_module("nodes.cond_keys")
    vae = comfy_wan21_vae()
    width, height, length = 16, 32, 5
    reference, poses, negative = uint8_frames(1, REF_HW, 2), uint8_frames(5, POSE_HW, 3), uint8_frames(5, POSE_HW, 4)
    clip = comfy.clip_vision.Output()
    clip["penultimate_hidden_states"] = torch.zeros(1, 257, 48)
    positive, _, negative_pose, _ = i2v.SteadyDancerImageToVideo.execute(
        positive=[[torch.zeros(1, 7, 32), {}]], negative=[[torch.zeros(1, 7, 32), {}]], vae=vae,
        reference_image=as_image(reference), pose_images=as_image(poses), clip_vision_reference=clip,
        clip_vision_first_pose=clip, width=width, height=height, length=length,
        negative_pose_images=as_image(negative)).result

    for frames, conditioning in ((poses, positive), (negative, negative_pose)):
        official = torch.stack([official_minus_one_to_one(official_pil_resize(f, REF_HW)) for f in frames])
        official = F.interpolate(official, size=(height, width), mode="bicubic", align_corners=False)
        core = official_inputs.pose_pictures(frames, REF_HW, height, width)
        torch.testing.assert_close(core, official, rtol=0, atol=1e-6)
        node_pictures = i2v.official_pose_frames(as_image(frames), REF_HW, width, height)
        torch.testing.assert_close(node_pictures * 2 - 1, official.movedim(1, -1), rtol=0, atol=1e-6)
        expected = vae.encode(official.movedim(1, -1) * 0.5 + 0.5)
        torch.testing.assert_close(conditioning[0][1][keys.POSE_LATENT], expected, rtol=1e-5, atol=1e-5)
    # The straight resize to the output size (what Image To Video did before) is not the official picture.
    straight = F.interpolate(official_inputs.frames_to_model_range(poses), size=(height, width), mode="bicubic",
                             align_corners=False)
    assert float((straight - official_inputs.pose_pictures(poses, REF_HW, height, width)).abs().max()) > 1e-2
