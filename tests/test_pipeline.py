"""SteadyDancerPipeline: conditioning built as the official code, DC-CFG sampling loop, the run plan."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from steadydancer_core.conditioning import ConditioningLatents
from steadydancer_core.encoders import CLIPVisionEncoder, T5TextEncoder, WanVAE
from steadydancer_core.pipeline import (
    DEFAULT_NEGATIVE_PROMPT,
    Conditioning,
    SamplingSettings,
    SteadyDancerPipeline,
    check_frames,
    make_plan,
)
from steadydancer_core.schedule import official_unipc_schedule
from tiny_models import build_tiny_dit_checkpoint, build_tiny_wan_dir

HEIGHT, WIDTH = 32, 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    rng = np.random.default_rng(5)
    return {
        "wan": build_tiny_wan_dir(root / "wan"),
        "dit": build_tiny_dit_checkpoint(root / "dit.safetensors"),
        "reference": rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8),
        # Pose pictures at a different size: resized to the reference first (official PIL bicubic).
        "poses": rng.integers(0, 255, (5, 24, 40, 3), dtype=np.uint8),
        "negative": rng.integers(0, 255, (5, 24, 40, 3), dtype=np.uint8),
    }


def _settings(**changes) -> SamplingSettings:
    values = dict(frames=5, max_area=HEIGHT * WIDTH, steps=3, seed=11)
    values.update(changes)
    return SamplingSettings(**values)


def _minus_one_to_one(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_conditioning_equals_separate_official_encodes(tiny, monkeypatch):
    pipe = SteadyDancerPipeline(tiny["wan"], tiny["dit"])
    sampled: list[Conditioning] = []
    real_sample = SteadyDancerPipeline.sample

    def recording_sample(self, dit, cond, plan, settings, progress=True, on_step=None):
        sampled.append(cond)
        return real_sample(self, dit, cond, plan, settings, progress, on_step)

    monkeypatch.setattr(SteadyDancerPipeline, "sample", recording_sample)
    pipe(tiny["reference"], tiny["poses"], "a person dances", negative_poses=tiny["negative"],
         settings=_settings(steps=1), progress=False)
    cond, = sampled
    latents = cond.latents
    assert latents.image_condition.shape == (1, 20, 2, 4, 6)
    mask = latents.image_condition[:, :4]
    assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()

    # The official code encodes the reference and the first pose frame separately (model_spec §3.3);
    # the pipeline takes latent frame 0 of the clips instead. Same numbers:
    vae = WanVAE.from_pretrained(tiny["wan"] / "vae")
    first_pose = np.asarray(Image.fromarray(tiny["poses"][0]).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC))
    torch.testing.assert_close(latents.ref_x, vae.encode(_minus_one_to_one(tiny["reference"])[:, :, None]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latents.ref_c, vae.encode(_minus_one_to_one(first_pose)[:, :, None]),
                               rtol=1e-5, atol=1e-5)
    assert latents.negative_pose_latents is not None
    assert not torch.allclose(latents.negative_pose_latents, latents.pose_latents)

    clip = CLIPVisionEncoder.from_pretrained(tiny["wan"])
    torch.testing.assert_close(cond.clip_x, clip.encode(_minus_one_to_one(tiny["reference"])))
    torch.testing.assert_close(cond.clip_c, clip.encode(_minus_one_to_one(first_pose)))

    t5 = T5TextEncoder.from_pretrained(tiny["wan"])
    prompt = t5.encode(["a person dances"], max_length=16)[0]
    assert cond.context.shape == (1, 16, 32)
    torch.testing.assert_close(cond.context[0, :len(prompt)], prompt)
    assert cond.context[0, len(prompt):].abs().sum() == 0
    negative = t5.encode([DEFAULT_NEGATIVE_PROMPT], max_length=16)[0]
    torch.testing.assert_close(cond.negative_context[0, :len(negative)], negative)
    # Same output size: frame 0 of the output is the reference itself.
    np.testing.assert_array_equal(cond.reference_frame, tiny["reference"])


class _ConstantPerPass(torch.nn.Module):
    """A DiT double whose velocity for each sample is the constant sum(context) + 10 * sum(pose latents).

    The three DC-CFG passes differ only in context or pose, so each gets its own constant.
    """

    def forward(self, x, timestep, context, clip_fea_x, clip_fea_c, pose_latents, ref_x, ref_c, **_):
        value = context.sum(dim=(1, 2)) + 10 * pose_latents.sum(dim=(1, 2, 3, 4))
        return value.view(-1, 1, 1, 1, 1).expand(x.shape[0], 16, *x.shape[2:]).to(x.dtype)


@pytest.mark.parametrize("batched", [True, False])
def test_dc_cfg_euler_loop_matches_hand_computed_trajectory(batched):
    torch.manual_seed(0)
    latents = ConditioningLatents.from_latents(torch.randn(1, 16, 2, 4, 6), torch.randn(1, 16, 2, 4, 6) * 0.1,
                                               torch.randn(1, 16, 2, 4, 6) * 0.1)
    context, negative_context = torch.randn(1, 16, 32) * 0.1, torch.randn(1, 16, 32) * 0.1
    clip = torch.randn(1, 257, 48)
    cond = Conditioning(latents, context, negative_context, clip, clip, reference_frame=np.zeros((1, 1, 3)))
    settings = _settings(solver="euler", steps=10, w_text=4.0, w_pose=1.5, pose_window=(0.1, 0.5),
                         batch_conditions=batched)
    plan = make_plan((HEIGHT, WIDTH), settings, pose_guidance=True)
    pipe = SteadyDancerPipeline("unused", "unused")
    final = pipe.sample(_ConstantPerPass(), cond, plan, settings, progress=False)

    # Independent expectation: constant velocities, Euler x_{i+1} = x_i + (s_{i+1} - s_i) v_i.
    e_c = float(context.sum() + 10 * latents.pose_latents.sum())
    e_t = float(negative_context.sum() + 10 * latents.pose_latents.sum())
    e_p = float(context.sum() + 10 * latents.negative_pose_latents.sum())
    sigmas = official_unipc_schedule(10, plan.shift).sigmas.double()
    noise = torch.randn((1, 16, 2, 4, 6), generator=torch.Generator().manual_seed(11))
    shift = 0.0
    for i in range(10):
        v = e_t + 4.0 * (e_c - e_t)
        if 0.1 < i / 10 < 0.5:  # steps 2, 3, 4
            v += 1.5 * (e_c - e_p)
        shift += float(sigmas[i + 1] - sigmas[i]) * v
    torch.testing.assert_close(final, noise + shift, rtol=1e-4, atol=1e-4)


def test_batched_and_sequential_conditions_give_the_same_video(tiny):
    pipe = SteadyDancerPipeline(tiny["wan"], tiny["dit"])
    videos = [pipe(tiny["reference"], tiny["poses"], "a person dances", negative_poses=tiny["negative"],
                   settings=_settings(batch_conditions=batched, steps=2), progress=False)
              for batched in (True, False)]
    assert videos[0].shape == (5, HEIGHT, WIDTH, 3) and videos[0].dtype == np.uint8
    # Samples are independent inside a batched DiT call (DESIGN D4): equal up to float reordering.
    assert np.abs(videos[0].astype(int) - videos[1].astype(int)).max() <= 1
    np.testing.assert_array_equal(videos[0][0], tiny["reference"])


def test_plan_official_defaults():
    # The default budget is the authors' README run, 1024x576 pixels: a portrait 832x480 reference gives
    # floor(sqrt(589824 * 832 / 480) / 16) * 16 = 1008 by floor(sqrt(589824 * 480 / 832) / 16) * 16 = 576, shift 5.
    plan = make_plan((832, 480), SamplingSettings(), pose_guidance=True)
    assert (plan.height, plan.width, plan.frames, plan.shift) == (1008, 576, 81, 5.0)
    # Portrait 480x832 reference at the 480p area: official size, shift 3, window 5..15 of 40 steps.
    plan = make_plan((832, 480), SamplingSettings(max_area=480 * 832), pose_guidance=True)
    assert (plan.height, plan.width, plan.frames) == (832, 480, 81)
    assert plan.latent_shape == (16, 21, 104, 60)
    assert plan.shift == 3.0 and plan.solver == "unipc"
    assert plan.pose_steps == tuple(range(5, 16))
    assert plan.model_evaluations == 40 * 2 + 11
    # Larger area: shift 5; no negative pose: no pose steps, two evaluations a step.
    plan = make_plan((576, 1024), SamplingSettings(max_area=1024 * 576), pose_guidance=False)
    assert (plan.height, plan.width, plan.shift) == (576, 1024, 5.0)
    assert plan.pose_steps == () and plan.model_evaluations == 80
    # Exact size overrides the area rule.
    plan = make_plan((100, 100), SamplingSettings(size=(64, 32)), pose_guidance=True)
    assert (plan.height, plan.width) == (32, 64)


def test_settings_and_frame_checks():
    with pytest.raises(ValueError, match="4n\\+1"):
        SamplingSettings(frames=80)
    with pytest.raises(ValueError, match="multiples of 16"):
        SamplingSettings(size=(100, 64))
    with pytest.raises(ValueError, match="solver"):
        SamplingSettings(solver="ddim")
    reference = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="only 3 pose frames"):
        check_frames(reference, np.zeros((3, 8, 8, 3), np.uint8), None, 5)
    with pytest.raises(ValueError, match="only 1 negative pose frames"):
        check_frames(reference, np.zeros((5, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8), 5)
    with pytest.raises(ValueError, match="uint8 RGB"):
        check_frames(reference.astype(np.float32), np.zeros((5, 8, 8, 3), np.uint8), None, 5)
