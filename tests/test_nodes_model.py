"""SteadyDancer inside real ComfyUI: registration, loading through core loaders, the model adapter.

Needs ``COMFYUI_PATH`` (a ComfyUI 0.3.64 or 0.8.0 folder) and its requirements; skips otherwise.
The expected outputs come from the core DiT called directly (an independent path) and from
ComfyUI's documented flow formulas (denoised = x - sigma * v, timestep = 1000 * sigma).
"""
from __future__ import annotations

import pytest
import torch

from tests.comfyui import harness
from tests.comfyui.tiny_models import core_dit, scaled_fp8_state_dict, tiny_dit_state_dict

from steadydancer_core.model import TINY

#: ComfyUI cannot read ``text_len`` from a state dict; the loaded model pads text to the released 512.
TINY_AS_LOADED = TINY.replace(text_len=512)


@pytest.fixture(scope="module", autouse=True)
def registration():
    """Loads the pack through ComfyUI (skips without COMFYUI_PATH) for every test here."""
    return harness.pack_module("nodes.model_registration")


@pytest.fixture(scope="module")
def dit_sd() -> dict[str, torch.Tensor]:
    return tiny_dit_state_dict()


def _inputs(batch: int = 1, frames: int = 3, h: int = 4, w: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "x": r(batch, 16, frames, h, w), "c_concat": r(batch, 20, frames, h, w),
        "context": r(batch, 7, TINY.text_dim), "clip_fea": r(batch, 257, TINY.clip_dim),
        "clip_fea_c": r(batch, 257, TINY.clip_dim), "pose_latents": r(batch, 16, frames, h, w),
        "ref_x": r(batch, 16, 1, h, w), "ref_c": r(batch, 16, 1, h, w),
    }


def _comfy_and_core(patcher, dit_sd, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ComfyUI ``apply_model`` denoised, the core DiT's velocity, the noisy input) for the same inputs."""
    inputs = _inputs()
    sigma_t = torch.tensor([sigma])
    with torch.no_grad():
        denoised = patcher.model.apply_model(
            inputs["x"], sigma_t, c_concat=inputs["c_concat"], c_crossattn=inputs["context"],
            clip_fea=inputs["clip_fea"], clip_fea_c=inputs["clip_fea_c"], pose_latents=inputs["pose_latents"],
            ref_x=inputs["ref_x"], ref_c=inputs["ref_c"])
        velocity = core_dit(dit_sd, TINY_AS_LOADED)(
            torch.cat([inputs["x"], inputs["c_concat"]], 1), sigma_t * 1000, inputs["context"],
            inputs["clip_fea"], inputs["clip_fea_c"], inputs["pose_latents"], inputs["ref_x"], inputs["ref_c"])
    return denoised, velocity, inputs["x"]


def test_registered_once_at_front(registration):
    import comfy.supported_models

    registration.register()
    registration.register()
    names = [cfg.__name__ for cfg in comfy.supported_models.models]
    assert names[0] == "SteadyDancerConfig"
    assert names.count("SteadyDancerConfig") == 1


def test_core_loader_builds_steadydancer_with_exact_weights(registration, dit_sd):
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(dict(dit_sd))
    assert isinstance(patcher.model, registration.SteadyDancerModel)
    dit = patcher.model.diffusion_model
    # Fields ComfyUI's Wan detection does not read come from the state dict.
    assert (dit.config.freq_dim, dit.config.text_dim, dit.config.clip_dim, dit.config.num_heads) == (
        TINY.freq_dim, TINY.text_dim, TINY.clip_dim, TINY.num_heads)
    loaded = dit.state_dict()
    assert set(loaded) == set(dit_sd)
    for key, value in dit_sd.items():
        torch.testing.assert_close(loaded[key].float(), value.float(), rtol=0, atol=0, msg=key)


def test_apply_model_equals_core_dit_flow_prediction(dit_sd):
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(dict(dit_sd))
    denoised, velocity, x = _comfy_and_core(patcher, dit_sd, 0.7)
    torch.testing.assert_close(denoised, x - 0.7 * velocity, rtol=1e-4, atol=1e-5)


def test_extra_conds_normalise_latents_and_route_clip(dit_sd):
    import comfy.clip_vision
    import comfy.sd

    cond_keys = harness.pack_module("nodes.cond_keys")
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(dit_sd))
    model = patcher.model
    raw_pose = torch.randn(1, 16, 3, 4, 6)
    raw_ref = torch.randn(1, 16, 1, 4, 6)
    pose_clip = comfy.clip_vision.Output()
    pose_clip["penultimate_hidden_states"] = torch.randn(1, 257, TINY.clip_dim)
    out = model.extra_conds(noise=torch.zeros(1, 16, 3, 4, 6), device=torch.device("cpu"),
                            **{cond_keys.POSE_LATENT: raw_pose, cond_keys.REF_IMAGE_LATENT: raw_ref,
                               cond_keys.REF_POSE_LATENT: raw_ref, cond_keys.POSE_CLIP_VISION_OUTPUT: pose_clip,
                               cond_keys.POSE_STRENGTH_SPATIAL: 0.5})
    # Wan21 latent format: (z - mean) * scale / std, per channel (ComfyUI's process_in).
    fmt = model.latent_format
    expected_pose = (raw_pose - fmt.latents_mean) * fmt.scale_factor / fmt.latents_std
    torch.testing.assert_close(out["pose_latents"].cond, expected_pose)
    assert out["clip_fea_c"].cond is pose_clip.penultimate_hidden_states
    assert out["pose_strength_spatial"].cond == 0.5


def test_plain_wan_conditioning_gives_clear_error(dit_sd):
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(dict(dit_sd))
    inputs = _inputs()
    with pytest.raises(ValueError, match="SteadyDancer Image To Video"):
        patcher.model.apply_model(inputs["x"], torch.tensor([0.5]), c_concat=inputs["c_concat"],
                                  c_crossattn=inputs["context"], clip_fea=inputs["clip_fea"])


def test_plain_wan_i2v_still_loads_as_core_wan_and_is_refused(registration):
    import comfy.ldm.wan.model
    import comfy.model_base
    import comfy.sd

    torch.manual_seed(0)
    wan = comfy.ldm.wan.model.WanModel(model_type="i2v", in_dim=36, dim=256, ffn_dim=512, num_heads=2,
                                       num_layers=1, text_dim=4096, out_dim=16, operations=comfy.ops.disable_weight_init)
    sd = {k: torch.randn_like(v) * 0.02 for k, v in wan.state_dict().items()}
    patcher = comfy.sd.load_diffusion_model_state_dict(sd)
    assert type(patcher.model) is comfy.model_base.WAN21
    assert not registration.is_steadydancer_model(patcher)
    with pytest.raises(ValueError, match="needs a SteadyDancer model, got WAN21"):
        registration.require_steadydancer_model(patcher, "SteadyDancer KSampler")


def test_wan_lora_keys_apply_to_steadydancer(dit_sd):
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(dict(dit_sd))
    g = torch.Generator().manual_seed(3)
    up, down = torch.randn(TINY.dim, 4, generator=g), torch.randn(4, TINY.dim, generator=g)
    # Wan2.1 I2V LoRA layout (diffusion_model.<official key>.lora_up/lora_down + alpha).
    lora = {"diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
            "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0)}
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 0.75, 0)
    patched.patch_model()
    try:
        weight = patched.model.diffusion_model.blocks[0].self_attn.q.weight
        expected = dit_sd["blocks.0.self_attn.q.weight"] + 0.75 * (2.0 / 4) * (up @ down)
        torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-5)
    finally:
        patched.unpatch_model()


def test_scaled_fp8_file_loads_as_steadydancer(registration, dit_sd, tmp_path):
    import comfy.sd
    import comfy.utils
    from safetensors.torch import save_file

    path = tmp_path / "steadydancer_fp8_e4m3fn_scaled.safetensors"
    save_file(scaled_fp8_state_dict(dit_sd), str(path))
    patcher = comfy.sd.load_diffusion_model(str(path))
    assert isinstance(patcher.model, registration.SteadyDancerModel)
    denoised, reference, x = _comfy_and_core(patcher, dit_sd, 0.4)
    expected = x - 0.4 * reference
    # e4m3 keeps ~3 mantissa bits: close to the full-precision model, not equal.
    rel = (denoised - expected).norm() / (expected - x).norm()
    assert rel < 0.1, f"fp8 output deviates by {rel:.3f} relative to the fp32 model"
    assert not torch.equal(denoised, expected)


def test_scaled_fp8_without_marker_is_refused(dit_sd, tmp_path):
    import comfy.sd
    from safetensors.torch import save_file

    tensors = scaled_fp8_state_dict(dit_sd)
    del tensors["scaled_fp8"]
    path = tmp_path / "steadydancer_fp8_no_marker.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match="no 'scaled_fp8' marker"):
        comfy.sd.load_diffusion_model(str(path))
