"""First-frame conditioning: mask layout, ref tokens, frame counts, sizes, image preparation, DiT call."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from steadydancer_core.conditioning import (
    ConditioningLatents,
    PassInputs,
    call_dit,
    concat_pass_inputs,
    i2v_mask,
    latent_frame_count,
    latent_size,
    nearest_valid_frame_count,
    output_size,
    pixel_frame_count,
    prepare_images,
    resize_bicubic,
    select_pose_frames,
    to_model_range,
    validate_frame_count,
    validate_size,
)
from steadydancer_core.model import TINY, SteadyDancerDiT


def _official_style_mask(num_frames: int, height: int, width: int) -> torch.Tensor:
    """The official construction generalised from its literal 81: per-pixel-frame mask, frame 0 repeated
    4x, folded into groups of 4 frames, channels = position in the group."""
    per_frame = torch.ones(1, num_frames, height, width)
    per_frame[:, 1:] = 0
    per_frame = torch.cat([per_frame[:, :1].repeat(1, 4, 1, 1), per_frame[:, 1:]], dim=1)
    folded = per_frame.view(1, per_frame.shape[1] // 4, 4, height, width)
    return folded.transpose(1, 2)[0]


@pytest.mark.parametrize("num_frames", [1, 5, 17, 81, 121])
def test_mask_layout_any_4n_plus_1(num_frames):
    mask = i2v_mask(num_frames, 3, 5)
    latent_frames = 1 + (num_frames - 1) // 4
    assert mask.shape == (4, latent_frames, 3, 5)
    assert torch.equal(mask[:, 0], torch.ones(4, 3, 5))
    assert torch.equal(mask[:, 1:], torch.zeros(4, latent_frames - 1, 3, 5))
    assert torch.equal(mask, _official_style_mask(num_frames, 3, 5))


def test_mask_and_ref_tokens_match_official_fixture(shared_dir):
    recorded = load_file(str(shared_dir / "data" / "parity" / "dit_tiny_a.safetensors"))
    y, condition = recorded["in.y"], recorded["in.condition"]
    latent_frames, height, width = y.shape[1:]
    assert torch.equal(i2v_mask(pixel_frame_count(latent_frames), height, width), y[:4])
    latents = ConditioningLatents.from_latents(y[None, 4:], condition[None])
    assert torch.equal(latents.image_condition[0], y)
    assert torch.equal(latents.ref_x[0], recorded["in.ref_x"][:16])
    assert torch.equal(latents.ref_c[0], recorded["in.ref_c"][:16])
    x = latents.model_input(recorded["in.x"][None])
    assert torch.equal(x[0], torch.cat([recorded["in.x"], y]))


def test_conditioning_latents_shapes_and_negative_pass_keeps_positive_ref_c():
    generator = torch.Generator().manual_seed(0)
    shape = (2, 16, 5, 4, 6)
    image_latent, pose, negative = (torch.randn(shape, generator=generator) for _ in range(3))
    latents = ConditioningLatents.from_latents(image_latent, pose, negative)
    assert latents.image_condition.shape == (2, 20, 5, 4, 6)
    assert torch.equal(latents.image_condition[:, :4], i2v_mask(17, 4, 6).expand(2, -1, -1, -1, -1))
    assert torch.equal(latents.image_condition[:, 4:], image_latent)
    assert torch.equal(latents.ref_x, image_latent[:, :, :1]) and latents.ref_x.shape == (2, 16, 1, 4, 6)
    assert torch.equal(latents.ref_c, pose[:, :, :1])
    assert latents.latent_shape == (16, 5, 4, 6)
    noise = torch.randn(shape, generator=generator)
    x = latents.model_input(noise)
    assert x.shape == (2, 36, 5, 4, 6) and torch.equal(x[:, :16], noise) and torch.equal(x[:, 16:], latents.image_condition)

    context, negative_context = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    clip_x, clip_c = torch.randn(2, 257, 12), torch.randn(2, 257, 12)
    positive, negative_text, negative_pose = latents.dc_cfg_passes(context, negative_context, clip_x, clip_c)
    assert positive.pose_latents is pose and negative_text.pose_latents is pose
    assert negative_text.context is negative_context and negative_pose.context is context
    assert negative_pose.pose_latents is negative
    assert torch.equal(negative_pose.ref_c, pose[:, :, :1])  # official: ref_c from the POSITIVE pose
    assert not torch.equal(negative_pose.ref_c, negative[:, :, :1])

    without_negative = ConditioningLatents.from_latents(image_latent, pose)
    assert without_negative.dc_cfg_passes(context, negative_context, clip_x, clip_c)[2] is None
    with pytest.raises(ValueError, match="no negative pose latents"):
        without_negative.pass_inputs(context, clip_x, clip_c, negative_pose=True)


def test_conditioning_latents_errors():
    image_latent = torch.zeros(1, 16, 5, 4, 6)
    with pytest.raises(ValueError, match="pose count shorter than the frame count"):
        ConditioningLatents.from_latents(image_latent, torch.zeros(1, 16, 4, 4, 6))
    with pytest.raises(ValueError, match="negative_pose_latents .*pose count shorter"):
        ConditioningLatents.from_latents(image_latent, torch.zeros(1, 16, 5, 4, 6), torch.zeros(1, 16, 3, 4, 6))
    with pytest.raises(ValueError, match="does not match image_latent"):
        ConditioningLatents.from_latents(image_latent, torch.zeros(1, 16, 5, 4, 8))
    with pytest.raises(ValueError, match=r"image_latent must be \[B, 16, T, h, w\]"):
        ConditioningLatents.from_latents(torch.zeros(1, 20, 5, 4, 6), torch.zeros(1, 16, 5, 4, 6))
    latents = ConditioningLatents.from_latents(image_latent, torch.zeros(1, 16, 5, 4, 6))
    with pytest.raises(ValueError, match="noisy latent shape"):
        latents.model_input(torch.zeros(1, 16, 5, 4, 7))


def test_frame_count_helpers():
    assert [latent_frame_count(f) for f in (1, 5, 17, 81, 121)] == [1, 2, 5, 21, 31]
    assert pixel_frame_count(21) == 81
    assert [nearest_valid_frame_count(f) for f in (2, 3, 4, 78, 79, 80, 100)] == [1, 1, 5, 77, 77, 81, 101]
    for bad in (0, 80, 82, -3, 2.0):
        with pytest.raises(ValueError, match="4n\\+1"):
            validate_frame_count(bad)
    with pytest.raises(ValueError, match="nearest valid: 81"):
        latent_frame_count(80)


def test_select_pose_frames():
    poses = torch.arange(90).reshape(90, 1)
    assert torch.equal(select_pose_frames(poses, 81), poses[:81])
    with pytest.raises(ValueError, match="only 60 pose frames .* at most 57 frames"):
        select_pose_frames(poses[:60], 81)
    with pytest.raises(ValueError, match="4n\\+1"):
        select_pose_frames(poses, 80)


def test_output_size_official_quirk_and_exact_rule():
    # Landscape 832x480 reference at the 832*480 preset: official float64 rounding gives 464x832.
    assert output_size(480, 832, 832 * 480, official_rounding=True) == (464, 832)
    assert output_size(480, 832, 832 * 480) == (480, 832)
    assert output_size(832, 480, 480 * 832, official_rounding=True) == (832, 480)
    assert output_size(1080, 1920, 1024 * 576) == (576, 1024)
    assert output_size(1080, 1920, 1024 * 576, official_rounding=True) == (576, 1024)


def test_output_size_exact_rule_against_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        h0, w0 = rng.randint(64, 4000), rng.randint(64, 4000)
        area = rng.choice([832 * 480, 1024 * 576, 1280 * 720, rng.randint(100_000, 2_000_000)])
        height, width = output_size(h0, w0, area)
        # Largest multiple of 16 whose square is <= area * h0 / w0, found by counting (no square roots).
        k_h = 0
        while (16 * (k_h + 1)) ** 2 * w0 <= area * h0:
            k_h += 1
        k_w = 0
        while (16 * (k_w + 1)) ** 2 * h0 <= area * w0:
            k_w += 1
        if k_h == 0 or k_w == 0:
            continue
        assert (height, width) == (16 * k_h, 16 * k_w), (h0, w0, area)
        official = output_size(h0, w0, area, official_rounding=True)
        assert 0 <= height - official[0] <= 16 and 0 <= width - official[1] <= 16


def test_size_validation():
    validate_size(480, 832)
    assert latent_size(480, 832) == (60, 104)
    with pytest.raises(ValueError, match="multiples of 16.*nearest below: 832x480"):
        validate_size(481, 840 - 8)
    with pytest.raises(ValueError, match="multiples of 16"):
        latent_size(0, 832)
    with pytest.raises(ValueError, match="too elongated"):
        output_size(2, 5000, 832 * 480)
    with pytest.raises(ValueError, match="image size must be positive"):
        output_size(0, 5, 832 * 480)


def test_image_normalisation_and_official_resize():
    assert torch.equal(to_model_range(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    # A hard edge, downscaled 4x: no antialias (differs from the antialiased resize), no clamp (overshoot).
    image = torch.zeros(3, 64, 64)
    image[:, :, 31:] = 1.0
    prepared = prepare_images(image, 16, 16)
    assert prepared.shape == (3, 16, 16)
    official = F.interpolate(to_model_range(image)[None], size=(16, 16), mode="bicubic", align_corners=False)[0]
    assert torch.equal(prepared, official)
    antialiased = F.interpolate(to_model_range(image)[None], size=(16, 16), mode="bicubic", antialias=True)[0]
    assert not torch.allclose(prepared, antialiased)
    upscaled = resize_bicubic(to_model_range(image)[None], 128, 128)
    assert upscaled.shape == (1, 3, 128, 128)
    assert float(upscaled.max()) > 1.0 and float(upscaled.min()) < -1.0  # bicubic overshoot kept
    # Keys cubic kernel with a = -0.75 (torch/official): 2x upscale, output 4 samples source 1.75, weights
    # W(1.75), W(0.75), W(0.25), W(1.25) = -0.03515625, 0.26171875, 0.87890625, -0.10546875 on a ramp
    # 0, 1, 2, 3 -> 0.26171875 + 2 * 0.87890625 - 3 * 0.10546875 = 1.703125 (a linear resize gives 1.75).
    ramp = torch.arange(32, dtype=torch.float32).repeat(1, 8, 1)
    resized = resize_bicubic(ramp, 8, 64)
    assert float(resized[0, 0, 4]) == 1.703125
    flat = resize_bicubic(torch.full((3, 8, 8), 0.25), 24, 40)
    torch.testing.assert_close(flat, torch.full((3, 24, 40), 0.25))
    with pytest.raises(ValueError, match=r"expected images \[C, H, W\]"):
        resize_bicubic(torch.zeros(4, 4), 8, 8)
    with pytest.raises(ValueError, match="multiples of 16"):
        prepare_images(image, 15, 16)


def test_call_dit_batches_passes_like_separate_calls():
    torch.manual_seed(0)
    model = SteadyDancerDiT(TINY).eval()
    generator = torch.Generator().manual_seed(5)
    shape = (1, 16, 2, 4, 4)
    image_latent, pose, negative, noise = (torch.randn(shape, generator=generator) for _ in range(4))
    latents = ConditioningLatents.from_latents(image_latent, pose, negative)
    context = torch.randn(1, 3, TINY.text_dim, generator=generator)
    negative_context = torch.randn(1, 6, TINY.text_dim, generator=generator)
    clip_x, clip_c = (torch.randn(1, 257, TINY.clip_dim, generator=generator) for _ in range(2))
    passes = latents.dc_cfg_passes(context, negative_context, clip_x, clip_c)
    with torch.no_grad():
        batched = call_dit(model, noise, torch.tensor(640), passes)
        separate = torch.cat([call_dit(model, noise, torch.tensor(640), [p]) for p in passes])
        direct = model(latents.model_input(noise), torch.tensor([640]), context, clip_x, clip_c, pose,
                       latents.ref_x, latents.ref_c)
    assert batched.shape == (3, 16, 2, 4, 4)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(separate[:1], direct, rtol=0, atol=0)


def test_concat_pass_inputs_pads_context_and_checks_strengths():
    base = PassInputs(
        image_condition=torch.zeros(1, 20, 1, 2, 2), context=torch.ones(1, 3, 4), clip_fea_x=torch.zeros(1, 257, 2),
        clip_fea_c=torch.zeros(1, 257, 2), pose_latents=torch.zeros(1, 16, 1, 2, 2), ref_x=torch.zeros(1, 16, 1, 2, 2),
        ref_c=torch.zeros(1, 16, 1, 2, 2),
    )
    longer = PassInputs(**{**base.__dict__, "context": torch.full((1, 5, 4), 2.0)})
    stacked = concat_pass_inputs([base, longer])
    assert stacked.context.shape == (2, 5, 4)
    assert torch.equal(stacked.context[0, :3], torch.ones(3, 4)) and torch.equal(stacked.context[0, 3:], torch.zeros(2, 4))
    stronger = PassInputs(**{**base.__dict__, "pose_strength_spatial": 0.5})
    with pytest.raises(ValueError, match="share pose strengths"):
        concat_pass_inputs([base, stronger])
    with pytest.raises(ValueError, match="no passes"):
        concat_pass_inputs([])
    # One pass (e.g. a stack cached by the sampler) is used as it is: no per-step copies.
    assert concat_pass_inputs([stacked]) is stacked
