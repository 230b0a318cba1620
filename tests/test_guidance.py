"""DC-CFG: the step window, the formulas on hand-computed tensors, evaluation counts, missing negative pose."""
from __future__ import annotations

import warnings

import pytest
import torch

from steadydancer_core.conditioning import ConditioningLatents, call_dit
from steadydancer_core.guidance import (
    DCCFGConfig,
    DCCFGGuidance,
    combine_predictions,
    dc_cfg,
    official_pose_scale,
    pose_window_active,
    pose_window_active_at_percent,
    pose_window_active_for_sigma,
    pose_window_steps,
    step_index_for_sigma,
)
from steadydancer_core.model import TINY, SteadyDancerDiT
from steadydancer_core.schedule import comfy_percent_for_sigma, official_unipc_schedule

# Hand-computed case: e_c = [1, 2], e_t = [0.5, 1], e_p = [0, 3].
COND = torch.tensor([1.0, 2.0])
UNCOND_TEXT = torch.tensor([0.5, 1.0])
UNCOND_POSE = torch.tensor([0.0, 3.0])
# e_t + 5 (e_c - e_t) = [0.5 + 2.5, 1 + 5] = [3, 6]; + 1 (e_c - e_p) = + [1, -1] -> [4, 5].
TEXT_ONLY = torch.tensor([3.0, 6.0])
WITH_POSE = torch.tensor([4.0, 5.0])


def test_window_steps_official():
    assert pose_window_steps(40, 0.1, 0.4) == tuple(range(5, 16))
    assert pose_window_steps(50, 0.1, 0.4) == tuple(range(6, 20))
    assert pose_window_steps(40, 0.1, 0.5) == tuple(range(5, 20))
    # Strict at both ends: step 4 of 40 is exactly 0.1, step 16 exactly 0.4.
    assert not pose_window_active(4, 40) and not pose_window_active(16, 40)
    with pytest.raises(ValueError, match="step index must be in"):
        pose_window_active(40, 40)


def test_window_from_sigmas_and_percent():
    schedule = official_unipc_schedule(40, 5.0)
    by_sigma = [pose_window_active_for_sigma(float(s), schedule.sigmas) for s in schedule.sigmas[:-1]]
    assert by_sigma == [pose_window_active(i, 40) for i in range(40)]
    assert step_index_for_sigma(schedule.sigmas[7], schedule.sigmas) == 7
    with pytest.raises(ValueError, match="not one of the sampling sigmas"):
        step_index_for_sigma(0.5 * float(schedule.sigmas[30] + schedule.sigmas[31]), schedule.sigmas)
    # ComfyUI's sigma percent at step 4 is 0.1009 > 0.1: raw strict test flips, snapping to the grid does not.
    comfy_percent = comfy_percent_for_sigma(float(schedule.sigmas[4]), 5.0)
    assert comfy_percent > 0.1
    assert pose_window_active_at_percent(comfy_percent, 0.1, 0.4) is True
    assert pose_window_active_at_percent(comfy_percent, 0.1, 0.4, num_steps=40) is False
    assert [pose_window_active_at_percent(i / 40, num_steps=40) for i in range(40)] == [
        pose_window_active(i, 40) for i in range(40)
    ]


def test_official_formula_hand_computed():
    config = DCCFGConfig()  # w_text 5, w_pose 1, 0.1..0.4
    torch.testing.assert_close(combine_predictions(config, 10, 40, COND, UNCOND_TEXT, UNCOND_POSE), WITH_POSE)
    # Outside the window the negative-pose prediction is ignored.
    torch.testing.assert_close(combine_predictions(config, 20, 40, COND, UNCOND_TEXT, UNCOND_POSE), TEXT_ONLY)
    torch.testing.assert_close(combine_predictions(config, 4, 40, COND, UNCOND_TEXT, UNCOND_POSE), TEXT_ONLY)


def test_w_pose_zero_is_off():
    config = DCCFGConfig(w_pose=0.0)
    assert not any(config.pose_active(i, 40) for i in range(40))
    assert [config.evaluations(i, 40) for i in range(40)] == [2] * 40
    torch.testing.assert_close(combine_predictions(config, 10, 40, COND, UNCOND_TEXT, UNCOND_POSE), TEXT_ONLY)


def test_paper_option_is_official_with_pose_weight_minus_one():
    paper = DCCFGConfig(w_pose=2.0, formula="paper")
    assert paper.pose_coefficient == 1.0 == official_pose_scale(2.0)
    torch.testing.assert_close(combine_predictions(paper, 10, 40, COND, UNCOND_TEXT, UNCOND_POSE), WITH_POSE)
    # Paper weight 1 = no pose guidance, and no pose pass.
    paper_off = DCCFGConfig(w_pose=1.0, formula="paper")
    assert not any(paper_off.pose_active(i, 40) for i in range(40))
    torch.testing.assert_close(combine_predictions(paper_off, 10, 40, COND, UNCOND_TEXT, UNCOND_POSE), TEXT_ONLY)
    # A general case: e_c + (w_t - 1)(e_c - e_t) + (w_p - 1)(e_c - e_p) with w_t 3, w_p 1.5:
    # [1, 2] + 2 [0.5, 1] + 0.5 [1, -1] = [2.5, 3.5].
    general = DCCFGConfig(w_text=3.0, w_pose=1.5, formula="paper")
    expected = torch.tensor([2.5, 3.5])
    torch.testing.assert_close(combine_predictions(general, 10, 40, COND, UNCOND_TEXT, UNCOND_POSE), expected)
    with pytest.raises(ValueError, match="formula must be one of"):
        DCCFGConfig(formula="eq8")


def test_bf16_rounds_like_the_official_order_of_operations():
    generator = torch.Generator().manual_seed(0)
    c, t, p = (torch.randn(64, generator=generator).to(torch.bfloat16) for _ in range(3))
    guided = dc_cfg(c, t, p, 5.0, 1.0)
    assert guided.dtype == torch.bfloat16
    # Official: each of (c - t), 5 * (.), t + (.), (c - p), 1 * (.), and the final sum is a bf16 tensor op.
    step = t + 5.0 * (c - t)
    assert torch.equal(guided, step + 1.0 * (c - p))
    assert not torch.equal(guided.float(), (t.float() + 5 * (c.float() - t.float()) + (c.float() - p.float())))


class CountingModel:
    """A real (if simple) model: prediction = x * (condition value) + timestep / 1000, per condition."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x, timestep, conditions):
        self.calls.append(len(conditions))
        return torch.cat([x * value + timestep / 1000 for value in conditions], dim=0)


def _run(guidance: DCCFGGuidance, model: CountingModel, steps: int = 40) -> list[int]:
    """Evaluations per step (summed over calls)."""
    per_step = []
    x = torch.ones(1, 2)
    for index in range(steps):
        before = len(model.calls)
        guidance(x, torch.tensor(500), index, steps)
        per_step.append(sum(model.calls[before:]))
    return per_step


def test_evaluation_counts_per_step():
    model = CountingModel()
    guidance = DCCFGGuidance(model, 1.0, 0.5, 0.25, DCCFGConfig())
    counts = _run(guidance, model)
    assert counts == [3 if 5 <= i <= 15 else 2 for i in range(40)]
    assert sum(counts) == 91  # 11 three-pass steps: the official 91 forwards
    assert all(n == 1 for n in model.calls)  # unbatched: one condition per call


def test_evaluation_counts_at_w_text_one_skip_negative_text():
    model = CountingModel()
    guidance = DCCFGGuidance(model, 1.0, None, 0.25, DCCFGConfig(w_text=1.0))
    counts = _run(guidance, model)
    assert counts == [2 if 5 <= i <= 15 else 1 for i in range(40)]
    # e_c + 1 (e_c - e_p) with e_c = x*1 + 0.5, e_p = x*0.25 + 0.5 at x = 1: 1.5 + 0.75 = 2.25.
    out = guidance(torch.ones(1, 2), torch.tensor(500), 10, 40)
    torch.testing.assert_close(out, torch.full((1, 2), 2.25))


def test_batched_is_one_call_per_step_and_same_result():
    separate_model, batched_model = CountingModel(), CountingModel()
    separate = DCCFGGuidance(separate_model, 1.0, 0.5, 0.25, DCCFGConfig())
    batched = DCCFGGuidance(batched_model, 1.0, 0.5, 0.25, DCCFGConfig(), batched=True)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    for index in range(40):
        calls_before = len(batched_model.calls)
        torch.testing.assert_close(batched(x, torch.tensor(700), index, 40), separate(x, torch.tensor(700), index, 40))
        assert len(batched_model.calls) == calls_before + 1
        assert batched_model.calls[-1] == (3 if 5 <= index <= 15 else 2)
    # Hand check at step 10: e_c = x + 0.7, e_t = 0.5x + 0.7, e_p = 0.25x + 0.7
    # -> e_t + 5 (0.5x) + 0.75x = 0.5x + 0.7 + 2.5x + 0.75x = 3.75x + 0.7.
    torch.testing.assert_close(batched(x, torch.tensor(700), 10, 40), 3.75 * x + 0.7)


def test_missing_negative_pose_warns_and_turns_pose_term_off():
    model = CountingModel()
    with pytest.warns(UserWarning, match="no negative pose given"):
        guidance = DCCFGGuidance(model, 1.0, 0.5, None, DCCFGConfig())
    counts = _run(guidance, model)
    assert counts == [2] * 40
    # Text-only at x = 1, t = 500: e_c = 1.5, e_t = 1.0 -> 1.0 + 5 * 0.5 = 3.5.
    torch.testing.assert_close(guidance(torch.ones(1, 2), torch.tensor(500), 10, 40), torch.full((1, 2), 3.5))
    with pytest.warns(UserWarning, match="no negative-pose prediction inside the pose window"):
        out = combine_predictions(DCCFGConfig(), 10, 40, COND, UNCOND_TEXT, None)
    torch.testing.assert_close(out, TEXT_ONLY)
    # w_pose 0 with no negative pose: nothing to warn about.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DCCFGGuidance(model, 1.0, 0.5, None, DCCFGConfig(w_pose=0.0))
    with pytest.raises(ValueError, match="negative_text conditions are required"):
        DCCFGGuidance(model, 1.0, None, 0.25, DCCFGConfig())


def test_guidance_drives_the_tiny_dit_batched_equals_separate():
    torch.manual_seed(0)
    model = SteadyDancerDiT(TINY).eval()
    generator = torch.Generator().manual_seed(3)
    shape = (1, 16, 2, 4, 6)
    image_latent, pose, negative_pose, noise = (torch.randn(shape, generator=generator) for _ in range(4))
    latents = ConditioningLatents.from_latents(image_latent, pose, negative_pose)
    context = torch.randn(1, 5, TINY.text_dim, generator=generator)
    negative_context = torch.randn(1, 7, TINY.text_dim, generator=generator)
    clip_x, clip_c = (torch.randn(1, 257, TINY.clip_dim, generator=generator) for _ in range(2))
    positive, negative_text, negative = latents.dc_cfg_passes(context, negative_context, clip_x, clip_c)

    def model_fn(x, timestep, passes):
        return call_dit(model, x, timestep, passes)

    timestep = torch.tensor([812])
    with torch.no_grad():
        separate = DCCFGGuidance(model_fn, positive, negative_text, negative)(noise, timestep, 10, 40)
        batched = DCCFGGuidance(model_fn, positive, negative_text, negative, batched=True)(noise, timestep, 10, 40)
        e_c = call_dit(model, noise, timestep, [positive])
        e_t = call_dit(model, noise, timestep, [negative_text])
        e_p = call_dit(model, noise, timestep, [negative])
    assert e_c.abs().max() > 0 and not torch.allclose(e_c, e_p) and not torch.allclose(e_c, e_t)
    expected = e_t + 5.0 * (e_c - e_t) + 1.0 * (e_c - e_p)
    torch.testing.assert_close(separate, expected, rtol=0, atol=0)
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)
