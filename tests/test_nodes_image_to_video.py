"""SteadyDancer Image To Video in real ComfyUI (needs COMFYUI_PATH; skips otherwise).

A random full-architecture Wan2.1 VAE (ComfyUI's own VAE class) encodes tiny frames; expectations
are the conditioning layout ComfyUI's Wan model reads and the causal-VAE fact that frame 0 of a clip
encodes alone.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.comfyui import harness
from tests.comfyui.tiny_models import comfy_wan21_vae


@pytest.fixture(scope="module", autouse=True)
def i2v_module():
    return harness.pack_module("nodes.image_to_video")


@pytest.fixture(scope="module")
def cond_keys():
    return harness.pack_module("nodes.cond_keys")


@pytest.fixture(scope="module")
def vae():
    return comfy_wan21_vae()


def clip_output(seed: int):
    import comfy.clip_vision

    out = comfy.clip_vision.Output()
    out["penultimate_hidden_states"] = torch.randn(1, 257, 48, generator=torch.Generator().manual_seed(seed))
    return out


def frames(n: int, h: int = 40, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def text_cond(seed: int) -> list:
    return [[torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def run(i2v_module, vae, **overrides):
    args = dict(positive=text_cond(1), negative=text_cond(2), vae=vae, reference_image=frames(1, seed=3),
                pose_images=frames(6, seed=4), clip_vision_reference=clip_output(5),
                clip_vision_first_pose=clip_output(6), width=16, height=32, length=5,
                negative_pose_images=frames(5, seed=7))
    args.update(overrides)
    return i2v_module.SteadyDancerImageToVideo.execute(**args)


def test_conditionings_and_latent(i2v_module, cond_keys, vae):
    out = run(i2v_module, vae)
    positive, negative, negative_pose, latent = out.result
    assert latent["samples"].shape == (1, 16, 2, 4, 2)
    assert torch.count_nonzero(latent["samples"]) == 0

    pos = positive[0][1]
    torch.testing.assert_close(positive[0][0], text_cond(1)[0][0])
    torch.testing.assert_close(negative[0][0], text_cond(2)[0][0])
    # Mask: 0 (keep) at latent frame 0, 1 (generate) after; WAN21.concat_cond inverts it.
    assert pos["concat_mask"].shape == (1, 1, 2, 4, 2)
    assert pos["concat_mask"][:, :, 0].eq(0).all() and pos["concat_mask"][:, :, 1:].eq(1).all()
    assert pos["concat_latent_image"].shape == (1, 16, 2, 4, 2)
    # The causal VAE encodes frame 0 alone: the reference's own latent is frame 0 of the clip latent.
    reference_alone = vae.encode(i2v_module.resize_frames(frames(1, seed=3), 16, 32))
    torch.testing.assert_close(pos[cond_keys.REF_IMAGE_LATENT], reference_alone, rtol=1e-4, atol=1e-4)
    # Pose pictures: the official two-step resize via the reference's native size (40 x 24 here).
    pose_latent = vae.encode(i2v_module.official_pose_frames(frames(6, seed=4)[:5], (40, 24), 16, 32))
    torch.testing.assert_close(pos[cond_keys.POSE_LATENT], pose_latent)
    torch.testing.assert_close(pos[cond_keys.REF_POSE_LATENT], pose_latent[:, :, :1])
    assert pos["clip_vision_output"].penultimate_hidden_states is not None
    assert negative[0][1][cond_keys.POSE_LATENT] is pos[cond_keys.POSE_LATENT]

    # Negative pose pass: positive text, perturbed poses, but ref_c from the POSITIVE first pose.
    neg_pose = negative_pose[0][1]
    torch.testing.assert_close(negative_pose[0][0], text_cond(1)[0][0])
    expected_negative = vae.encode(i2v_module.official_pose_frames(frames(5, seed=7), (40, 24), 16, 32))
    torch.testing.assert_close(neg_pose[cond_keys.POSE_LATENT], expected_negative)
    torch.testing.assert_close(neg_pose[cond_keys.REF_POSE_LATENT], pose_latent[:, :, :1])


def test_resize_is_official_bicubic(i2v_module):
    image = frames(1, h=20, w=12, seed=9)
    resized = i2v_module.resize_frames(image, 32, 48)
    expected = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(48, 32), mode="bicubic",
                                               align_corners=False).movedim(1, -1)
    assert resized.shape == (1, 48, 32, 3)
    torch.testing.assert_close(resized, expected)


def test_missing_negative_pose_switches_pose_term_off(i2v_module, vae, caplog):
    with caplog.at_level(logging.WARNING):
        out = run(i2v_module, vae, negative_pose_images=None)
    assert out.result[2] == []
    assert "pose term of DC-CFG is switched off" in caplog.text


@pytest.mark.parametrize("overrides, message", [
    ({"length": 6}, "4n\\+1"),
    ({"width": 40}, "multiples of 16"),
    ({"pose_images": frames(3)}, "pose_images has 3 frames but length is 5"),
    ({"negative_pose_images": frames(4)}, "negative_pose_images has 4 frames"),
    ({"reference_image": torch.rand(1, 8, 8)}, "reference_image must be an IMAGE"),
])
def test_bad_input_is_refused_before_encoding(i2v_module, overrides, message):
    class NoVae:  # any VAE call would fail loudly: the checks must come first
        def encode(self, *_):
            raise AssertionError("VAE called before the inputs were checked")

    with pytest.raises(ValueError, match=message):
        run(i2v_module, NoVae(), **overrides)


def pose_keypoint_doc(frames: int) -> list:
    """comfyui_controlnet_aux POSE_KEYPOINT: one person, 18 body points in pixels of a 16x32 canvas."""
    rng = np.random.default_rng(1)
    doc = []
    for _ in range(frames):
        body = np.column_stack([rng.uniform(4, 12, 18), rng.uniform(4, 28, 18), np.ones(18)]).ravel().tolist()
        doc.append({"people": [{"pose_keypoints_2d": body}], "canvas_width": 16, "canvas_height": 32})
    return doc


def test_negative_pose_generated_from_keypoints(i2v_module, cond_keys, vae):
    keypoints = harness.pack_module("steadydancer_core.pose.keypoints")
    negative = harness.pack_module("steadydancer_core.pose.negative")
    render = harness.pack_module("steadydancer_core.pose.render")
    doc = pose_keypoint_doc(5)
    out = run(i2v_module, vae, negative_pose_images=None, pose_keypoints=doc, negative_pose_seed=9)
    perturbed, _ = negative.negative_poses(keypoints.frames_from_pose_keypoint(doc), seed=9)
    # Drawn on the positive pictures' canvas (24 x 40), then resized as every pose picture.
    pictures = torch.from_numpy(render.render_frames(perturbed, 24, 40)).float() / 255
    expected = vae.encode(i2v_module.official_pose_frames(pictures, (40, 24), 16, 32))
    torch.testing.assert_close(out.result[2][0][1][cond_keys.POSE_LATENT], expected)
    with pytest.raises(ValueError, match="pose_keypoints has 3 frames but length is 5"):
        run(i2v_module, vae, negative_pose_images=None, pose_keypoints=pose_keypoint_doc(3))
