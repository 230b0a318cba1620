"""DC-CFG guider, KSampler and official schedule nodes in real ComfyUI (needs COMFYUI_PATH).

A tiny SteadyDancer DiT is loaded by ComfyUI's own loader; conditionings come from the Image To
Video node. Every model call is observed through ComfyUI's unet-function wrapper, so the test
checks (a) which passes run at each step and (b) that the guided prediction equals the DC-CFG
formula written out here from the recorded per-pass predictions.
"""
from __future__ import annotations

import pytest
import torch

from tests.comfyui import harness
from tests.comfyui.tiny_models import comfy_wan21_vae, tiny_dit_state_dict, tiny_i2v_conditionings

STEPS = 10  # window (0.1, 0.4) strict on i/10 -> steps 2 and 3


@pytest.fixture(scope="module", autouse=True)
def sampling():
    return harness.pack_module("nodes.sampling")


@pytest.fixture(scope="module")
def model():
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(tiny_dit_state_dict())


@pytest.fixture(scope="module")
def conditionings():
    return tiny_i2v_conditionings(with_negative_pose=True)  # positive, negative, negative_pose, latent


def record_calls(model):
    """A clone of ``model`` whose every diffusion call is logged as (cond indices, sigma, output)."""
    calls = []
    patched = model.clone()

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        calls.append((list(args["cond_or_uncond"]), float(args["timestep"][0]), out.detach().clone()))
        return out

    patched.set_model_unet_function_wrapper(wrapper)
    return patched, calls


def sample_with_guider(guider, latent, sigmas, seed=7):
    import comfy.sample
    import comfy.samplers

    x0_per_step = []
    noise = comfy.sample.prepare_noise(latent["samples"], seed)
    out = guider.sample(noise, latent["samples"], comfy.samplers.sampler_object("euler"), sigmas,
                        callback=lambda step, x0, x, total: x0_per_step.append(x0.clone()), disable_pbar=True,
                        seed=seed)
    return out, x0_per_step


@pytest.mark.parametrize("text_cfg, formula, rows_outside, rows_inside",
                         [(5.0, "official", 2, 3), (1.0, "official", 1, 2), (4.0, "paper", 2, 3)])
def test_passes_per_step_and_formula(sampling, model, conditionings, text_cfg, formula, rows_outside, rows_inside):
    positive, negative, negative_pose, latent = conditionings
    patched, calls = record_calls(model)
    guider = sampling.SteadyDancerDCCFGGuider.execute(patched, positive, negative, negative_pose, text_cfg,
                                                      1.5, 0.1, 0.4, formula).result[0]
    sigmas = sampling.official_sigmas(STEPS, 5.0)
    _, x0_per_step = sample_with_guider(guider, latent, sigmas)

    # One batched model call per step (tiny model: memory allows), the pose pass only at steps 2, 3.
    assert len(calls) == STEPS
    rows = [len(cond_idx) for cond_idx, _, _ in calls]
    assert rows == [rows_inside if i in (2, 3) else rows_outside for i in range(STEPS)]
    for step, (cond_idx, _, out) in enumerate(calls):
        preds = dict(zip(cond_idx, out.chunk(len(cond_idx))))  # 0 positive, 1 negative text, 2 negative pose
        cond = preds[0]
        if formula == "official":  # e_t + w_t (e_c - e_t) + w_p (e_c - e_p)
            expected = cond if text_cfg == 1.0 else preds[1] + text_cfg * (cond - preds[1])
            if 2 in preds:
                expected = expected + 1.5 * (cond - preds[2])
        else:  # paper convention: e_c + (w_t - 1)(e_c - e_t) + (w_p - 1)(e_c - e_p)
            expected = cond + (text_cfg - 1) * (cond - preds[1]) + (1.5 - 1) * (cond - preds[2] if 2 in preds else 0)
        torch.testing.assert_close(x0_per_step[step], expected, rtol=1e-5, atol=1e-5)


def test_empty_negative_pose_turns_pose_term_off(sampling, model, conditionings, caplog):
    positive, negative, _, latent = conditionings
    patched, calls = record_calls(model)
    guider = sampling.SteadyDancerDCCFGGuider.execute(patched, positive, negative, [], 5.0, 1.0, 0.1, 0.4).result[0]
    sample_with_guider(guider, latent, sampling.official_sigmas(STEPS, 5.0))
    assert [len(c) for c, _, _ in calls] == [2] * STEPS
    assert "pose guidance term is off" in caplog.text


def test_ksampler_equals_guider_with_sampler_custom_advanced(sampling, model, conditionings):
    from comfy_extras import nodes_custom_sampler

    positive, negative, negative_pose, latent = conditionings
    out = sampling.SteadyDancerKSampler.execute(model, 11, 4, 5.0, 1.0, 0.1, 0.4, "euler", "simple", positive,
                                                negative, negative_pose, latent, 1.0, shift="model").result[0]
    assert out["samples"].shape == latent["samples"].shape and torch.isfinite(out["samples"]).all()

    guider = sampling.SteadyDancerDCCFGGuider.execute(model, positive, negative, negative_pose, 5.0, 1.0,
                                                      0.1, 0.4).result[0]
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4).cpu()
    args = (nodes_custom_sampler.Noise_RandomNoise(11), guider, comfy.samplers.sampler_object("euler"), sigmas,
            latent)
    node = nodes_custom_sampler.SamplerCustomAdvanced
    if hasattr(node, "execute"):  # V3 node (0.8.0)
        core_out = node.execute(*args).result[0]
    else:  # V1 node (0.3.64)
        core_out = node().sample(*args)[0]
    torch.testing.assert_close(out["samples"], core_out["samples"])


def test_steadydancer_file_samples_at_the_authors_shift_by_default(sampling, model):
    """Load Diffusion Model gives shift 5.0 (the authors' README run), not Wan2.1's generic 8.0;
    ModelSamplingSD3 still sets its own."""
    import comfy_extras.nodes_model_advanced as advanced

    assert sampling.model_shift(model) == 5.0
    shifted = advanced.ModelSamplingSD3().patch(model, 3.0)[0]
    assert sampling.model_shift(shifted) == 3.0


@pytest.mark.parametrize("latent_hw, expected", [((72, 128), 5.0), ((128, 72), 5.0), ((60, 104), 3.0),
                                                 ((104, 60), 3.0), ((58, 104), 3.0), ((90, 160), 5.0)])
def test_shift_auto_is_the_official_rule_by_output_size(sampling, model, latent_hw, expected):
    """Official generate.py: 3.0 for the 832*480 / 480*832 presets (any output size they give), else 5.0."""
    value, reason = sampling.sampling_shift(model, "auto", torch.zeros(1, 16, 1, *latent_hw))
    assert value == expected and f"{latent_hw[1] * 8}x{latent_hw[0] * 8}" in reason
    assert sampling.sampling_shift(model, "model", torch.zeros(1, 16, 1, *latent_hw))[0] == 5.0
    with pytest.raises(ValueError, match="shift must be one of"):
        sampling.sampling_shift(model, "7", torch.zeros(1, 16, 1, *latent_hw))


@pytest.mark.parametrize("sampler_name, scheduler", [("steadydancer_unipc", "steadydancer_official"),
                                                     ("euler", "simple")])
def test_shift_auto_samples_as_model_sampling_sd3_at_that_shift(sampling, model, conditionings, caplog,
                                                                sampler_name, scheduler):
    """At 16x32 auto means 3.0: the same run as ModelSamplingSD3(3.0) + shift = model, for every scheduler; the
    value is logged, and the model's own sampling object is left alone."""
    import logging

    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    positive, negative, negative_pose, latent = conditionings
    run = lambda m, shift: sampling.SteadyDancerKSampler.execute(  # noqa: E731
        m, 3, 3, 5.0, 1.0, 0.1, 0.4, sampler_name, scheduler, positive, negative, negative_pose, latent, 1.0,
        shift=shift).result[0]["samples"]
    with caplog.at_level(logging.INFO):
        auto = run(model, "auto")
    assert "flow shift 3 (auto: the official rule for 16x32); the model's shift 5 is not used" in caplog.text
    assert sampling.model_shift(model) == 5.0
    torch.testing.assert_close(auto, run(ModelSamplingSD3().patch(model, 3.0)[0], "model"), rtol=0, atol=0)
    assert not torch.allclose(auto, run(model, "model"))


def test_official_schedule_values(sampling):
    sigmas = sampling.SteadyDancerOfficialSchedule.execute(40, 5.0, 1.0).result[0]
    assert sigmas.shape == (41,) and float(sigmas[-1]) == 0.0
    first = 5 * 0.999 / (1 + 4 * 0.999)
    assert abs(float(sigmas[0]) - first) < 1e-6
    # Official model timesteps (model_spec §5.1): int(sigma * 1000) for N = 40, shift 5.
    assert [int(float(s) * 1000) for s in sigmas[:5]] == [999, 994, 989, 983, 978]
    half = sampling.SteadyDancerOfficialSchedule.execute(10, 5.0, 0.5).result[0]
    full20 = sampling.SteadyDancerOfficialSchedule.execute(20, 5.0, 1.0).result[0]
    torch.testing.assert_close(half, full20[-11:])


def test_plain_wan_model_is_refused(sampling, conditionings):
    import comfy.ldm.wan.model
    import comfy.ops
    import comfy.sd

    wan = comfy.ldm.wan.model.WanModel(model_type="i2v", in_dim=36, dim=256, ffn_dim=512, num_heads=2,
                                       num_layers=1, out_dim=16, operations=comfy.ops.disable_weight_init)
    plain = comfy.sd.load_diffusion_model_state_dict({k: torch.randn_like(v) * 0.02
                                                      for k, v in wan.state_dict().items()})
    positive, negative, negative_pose, _ = conditionings
    with pytest.raises(ValueError, match="needs a SteadyDancer model"):
        sampling.SteadyDancerDCCFGGuider.execute(plain, positive, negative, negative_pose, 5.0, 1.0, 0.1, 0.4)


def core_dc_cfg_unipc(model, conditionings, steps: int, seed: int, shift: float, *, official_start: bool,
                      integer_timesteps: bool) -> torch.Tensor:
    """The core's DC-CFG + FlowUniPC loop with the core DiT on the node's latents (ComfyUI's latent space).

    official_start: start from the bare noise (official) instead of sigma_0 * noise (ComfyUI's noise scaling);
    integer_timesteps: the DiT gets the official int(1000 sigma) instead of the float 1000 sigma.
    """
    import comfy.sample

    from steadydancer_core import conditioning as core_conditioning
    from steadydancer_core import guidance as core_guidance
    from steadydancer_core import schedule as core_schedule
    from steadydancer_core import solvers as core_solvers
    from steadydancer_core.model import TINY

    from tests.comfyui.tiny_models import core_dit

    keys = harness.pack_module("nodes.cond_keys")
    positive, negative, negative_pose, latent = conditionings
    fmt = model.model.latent_format
    pos = positive[0][1]
    _, _, frames, h, w = latent["samples"].shape
    y = torch.cat([core_conditioning.i2v_mask(4 * (frames - 1) + 1, h, w)[None],
                   fmt.process_in(pos["concat_latent_image"])], 1)
    shared = dict(clip_fea_x=pos["clip_vision_output"].penultimate_hidden_states,
                  clip_fea_c=pos[keys.POSE_CLIP_VISION_OUTPUT].penultimate_hidden_states,
                  ref_x=fmt.process_in(pos[keys.REF_IMAGE_LATENT]), ref_c=fmt.process_in(pos[keys.REF_POSE_LATENT]))
    pose = fmt.process_in(pos[keys.POSE_LATENT])
    neg_pose = fmt.process_in(negative_pose[0][1][keys.POSE_LATENT])
    dit = core_dit(tiny_dit_state_dict(), TINY.replace(text_len=512))
    grid = core_schedule.official_unipc_schedule(steps, shift)

    def velocity(sample, timestep, index):
        if not integer_timesteps:
            timestep = grid.sigmas[index:index + 1] * 1000
        x = torch.cat([sample, y], 1)
        e_c = dit(x, timestep, positive[0][0], pose_latents=pose, **shared)
        e_t = dit(x, timestep, negative[0][0], pose_latents=pose, **shared)
        v = e_t + 5.0 * (e_c - e_t)
        if core_guidance.pose_window_active(index, steps, 0.1, 0.4):
            v = v + 1.0 * (e_c - dit(x, timestep, positive[0][0], pose_latents=neg_pose, **shared))
        return v

    noise = comfy.sample.prepare_noise(latent["samples"], seed)
    start = noise if official_start else grid.sigmas[0] * noise
    with torch.no_grad():
        return fmt.process_out(core_solvers.sample_flow(velocity, start, grid, "unipc"))


def test_official_ksampler_reproduces_core_dc_cfg_unipc(sampling, model, conditionings):
    """Official scheduler + sampler == the core's official loop (integer timesteps, pure-noise start,
    FlowUniPC, DC-CFG in the window) run with the core DiT on the same latents."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    positive, negative, negative_pose, latent = conditionings
    shifted = ModelSamplingSD3().patch(model, 5.0)[0]
    steps, seed = 6, 21
    out = sampling.SteadyDancerKSampler.execute(shifted, seed, steps, 5.0, 1.0, 0.1, 0.4, "steadydancer_unipc",
                                                "steadydancer_official", positive, negative, negative_pose, latent,
                                                1.0, shift="model").result[0]["samples"]
    expected = core_dc_cfg_unipc(model, conditionings, steps, seed, 5.0, official_start=True, integer_timesteps=True)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_sampler_custom_advanced_route_differs_exactly_as_documented(sampling, model, conditionings):
    """Official Schedule + Official Sampler in SamplerCustomAdvanced == the core loop started from sigma_0 * noise
    with the float timesteps 1000 sigma (the README's statement), and not the official loop."""
    import comfy.samplers
    from comfy_extras import nodes_custom_sampler

    positive, negative, negative_pose, latent = conditionings
    steps, seed = 6, 21
    guider = sampling.SteadyDancerDCCFGGuider.execute(model, positive, negative, negative_pose, 5.0, 1.0,
                                                      0.1, 0.4).result[0]
    sigmas = sampling.SteadyDancerOfficialSchedule.execute(steps, 5.0, 1.0).result[0]
    official_sampler = sampling.SteadyDancerOfficialSampler.execute().result[0]
    args = (nodes_custom_sampler.Noise_RandomNoise(seed), guider, official_sampler, sigmas, latent)
    node = nodes_custom_sampler.SamplerCustomAdvanced
    out = (node.execute(*args).result[0] if hasattr(node, "execute") else node().sample(*args)[0])["samples"]
    assert isinstance(official_sampler, comfy.samplers.KSAMPLER)
    described = core_dc_cfg_unipc(model, conditionings, steps, seed, 5.0, official_start=False,
                                  integer_timesteps=False)
    torch.testing.assert_close(out, described, rtol=1e-4, atol=1e-4)
    official = core_dc_cfg_unipc(model, conditionings, steps, seed, 5.0, official_start=True, integer_timesteps=True)
    assert float((out - official).abs().max()) > 1e-3


def comfyui_slices_video_conds() -> bool:
    """ComfyUI >= 0.4 slices 5-D conditionings (c_concat, pose latents) per context window; 0.3.64 does not."""
    import comfyui_version

    return tuple(int(p) for p in comfyui_version.__version__.split(".")[:2]) >= (0, 4)


@pytest.fixture(scope="module")
def windowed_run(model):
    """17-frame conditionings and the model under core WanContextWindowsManual (9-frame windows, overlap 4)."""
    import comfy.clip_vision
    from comfy_extras.nodes_context_windows import WanContextWindowsManualNode

    i2v = harness.pack_module("nodes.image_to_video")
    g = torch.Generator().manual_seed(4)
    clip = comfy.clip_vision.Output()
    clip["penultimate_hidden_states"] = torch.randn(1, 257, 48, generator=g)
    conds = i2v.SteadyDancerImageToVideo.execute(
        positive=[[torch.randn(1, 7, 32, generator=g), {}]], negative=[[torch.randn(1, 7, 32, generator=g), {}]],
        vae=comfy_wan21_vae(), reference_image=torch.rand(1, 32, 16, 3, generator=g),
        pose_images=torch.rand(17, 32, 16, 3, generator=g), clip_vision_reference=clip, clip_vision_first_pose=clip,
        width=16, height=32, length=17, negative_pose_images=torch.rand(17, 32, 16, 3, generator=g)).result
    window_args = (model, 9, 4, "standard_static", 1, False, "pyramid")
    if comfyui_slices_video_conds():
        window_args += (False,)  # freenoise (0.4+)
    return WanContextWindowsManualNode.execute(*window_args).result[0], conds


def test_context_windows_slice_the_pose_latents(sampling, windowed_run):
    """Long videos: core WanContextWindowsManual (0.8.0) runs the DiT on windows; pose latents and the I2V
    concat are sliced with the noise, the single-frame reference tokens are kept in every window."""
    if not comfyui_slices_video_conds():
        pytest.skip("ComfyUI < 0.4 does not slice 5-D conditionings for context windows (Wan I2V fails there)")
    windowed, (positive, negative, negative_pose, latent) = windowed_run
    patched, calls = record_calls(windowed)
    out = sampling.SteadyDancerKSampler.execute(patched, 0, 2, 5.0, 1.0, 0.0, 0.9, "euler", "simple", positive,
                                                negative, negative_pose, latent, 1.0).result[0]["samples"]
    assert out.shape == latent["samples"].shape == (1, 16, 5, 4, 2) and torch.isfinite(out).all()
    assert {out_.shape[2] for _, _, out_ in calls} == {3}  # 9-frame windows = 3 latent frames, never all 5


def test_context_windows_without_slicing_point_to_long_video_segments(sampling, windowed_run):
    """ComfyUI 0.3.64 slices only the noise per window: the model wrapper names the cause and the way out
    (SteadyDancer Long Video) instead of the bare "Sizes of tensors must match" RuntimeError."""
    if comfyui_slices_video_conds():
        reason = "this ComfyUI slices SteadyDancer's conditionings per context window (>= 0.4): nothing to refuse"
        print(reason)
        pytest.skip(reason)
    windowed, (positive, negative, negative_pose, latent) = windowed_run
    with pytest.raises(ValueError, match="cannot slice SteadyDancer's pose and image conditionings per window") as err:
        sampling.SteadyDancerKSampler.execute(windowed, 0, 2, 5.0, 1.0, 0.0, 0.9, "euler", "simple", positive,
                                              negative, negative_pose, latent, 1.0)
    assert "SteadyDancer Long Video" in str(err.value) and "window has 3 latent frames" in str(err.value)


def test_latent_of_another_length_is_refused_with_a_clear_error(sampling, model, conditionings):
    positive, negative, negative_pose, latent = conditionings
    longer = {"samples": torch.zeros(1, 16, 3, *latent["samples"].shape[-2:])}
    with pytest.raises(ValueError, match="the latent has 3 frames but the I2V image condition"):
        sampling.SteadyDancerKSampler.execute(model, 0, 1, 5.0, 1.0, 0.1, 0.4, "euler", "simple", positive,
                                              negative, negative_pose, longer, 1.0)
