"""Tiny random models in the released key layouts, built in-process (tests never download)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from steadydancer_core.model import TINY, DiTConfig, SteadyDancerDiT


def tiny_dit_state_dict(config: DiTConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict of a randomly initialised SteadyDancer DiT (official key names)."""
    torch.manual_seed(seed)
    model = SteadyDancerDiT(config)
    # Zero-initialised layers (e.g. the head) would make every output identical; randomise all.
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.05)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def core_dit(state_dict: dict[str, torch.Tensor], config: DiTConfig = TINY) -> SteadyDancerDiT:
    """The core DiT with the given weights (plain torch.nn, SDPA): the independent reference."""
    model = SteadyDancerDiT(config)
    model.load_state_dict(state_dict)
    return model.eval()


def scaled_fp8_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kijai/old-ComfyUI scaled fp8: block Linear weights as e4m3fn + per-tensor ``scale_weight``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("blocks.") and key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / 448.0
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def random_wan21_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full-architecture Wan2.1 VAE (ComfyUI's layout, detected by its keys) with random weights.

    ComfyUI fixes the VAE width at the released 96, so it cannot be shrunk; it is still fast at the
    tiny frame sizes of the tests. Needs ComfyUI importable.
    """
    import comfy.ldm.wan.vae

    vae = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        if key.endswith("gamma"):  # RMS-norm gains: keep activations in range
            state[key] = torch.ones_like(value)
        else:
            fan_in = max(value[0].numel(), 1) if value.ndim > 1 else 1
            state[key] = torch.randn(value.shape, generator=g) * (0.5 / fan_in ** 0.5 if value.ndim > 1 else 0.01)
    return state


_VAE_CACHE: dict[int, object] = {}


def comfy_wan21_vae(seed: int = 0):
    """ComfyUI's own ``comfy.sd.VAE`` around :func:`random_wan21_vae_state_dict` (built once per process)."""
    if seed not in _VAE_CACHE:
        import comfy.sd

        _VAE_CACHE[seed] = comfy.sd.VAE(sd=random_wan21_vae_state_dict(seed))
    return _VAE_CACHE[seed]


CLIP_DIM = 1024  # ViT-L/14: ComfyUI's smallest CLIP vision with 257 tokens


def random_clip_vision_vitl() -> dict[str, torch.Tensor]:
    """Random weights in ComfyUI's ViT-L/14 layout (what ``comfy.clip_vision`` detects as ViT-L)."""
    import comfy.clip_model
    import comfy.ops

    config = json.loads((Path(comfy.clip_model.__file__).parent / "clip_vision_config_vitl.json").read_text())
    with torch.device("meta"):
        model = comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.manual_cast)
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        if "layer_norm" in key or "layrnorm" in key:
            state[key] = (torch.ones if key.endswith("weight") else torch.zeros)(value.shape, dtype=torch.float16)
        else:
            state[key] = (torch.randn(value.shape, generator=g) * 0.02).to(torch.float16)
    return state


#: A tiny CLIP vision tower in the released layout (pre-norm ViT, 257 tokens at 32 px with 2 px patches).
TINY_CLIP_VISION = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
                    "image_size": 32, "patch_size": 2, "projection_dim": 16, "hidden_act": "gelu",
                    "num_channels": 3, "layer_norm_eps": 1e-5, "model_type": "clip_vision_model"}


def tiny_clip_vision_pair(folder: Path, seed: int = 0):
    """The same random tiny CLIP vision weights as ComfyUI's ``ClipVisionModel`` and as the core's standalone
    ``CLIPVisionEncoder`` (transformers), so their features can be compared.

    The weights are rounded to float16 (ComfyUI stores a CLIP tower in fp16 on the CPU and computes in fp32), so
    both compute in float32 on the same values. Needs ComfyUI importable.
    """
    import comfy.clip_vision
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from steadydancer_core.encoders import CLIPVisionEncoder
    from steadydancer_core.official_inputs import CLIP_MEAN, CLIP_STD

    folder = Path(folder)
    torch.manual_seed(seed)
    network = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION)).eval()
    with torch.no_grad():
        for param in network.parameters():
            param.copy_((param + torch.randn_like(param) * 0.02).half().float())
    network.save_pretrained(str(folder / "image_encoder"))
    (folder / "image_processor").mkdir(parents=True, exist_ok=True)
    (folder / "image_processor" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}))
    config_path = folder / "comfy_clip_vision_config.json"
    config_path.write_text(json.dumps(TINY_CLIP_VISION))
    comfy_model = comfy.clip_vision.ClipVisionModel(str(config_path))
    missing, unexpected = comfy_model.load_sd(network.state_dict())
    if missing or unexpected:
        raise AssertionError(f"tiny CLIP layouts differ: missing {missing}, unexpected {unexpected}")
    return comfy_model, CLIPVisionEncoder.from_pretrained(folder)


def tiny_i2v_conditionings(with_negative_pose: bool = False, seed: int = 0) -> tuple:
    """SteadyDancer Image To Video's outputs for the tiny DiT (16x32, 5 frames, random VAE and CLIP features):
    (positive, negative, negative_pose, latent), or (positive, negative, latent) without a negative pose."""
    import comfy.clip_vision

    from tests.comfyui import harness

    i2v = harness.pack_module("nodes.image_to_video")
    g = torch.Generator().manual_seed(seed)

    def clip_out():
        out = comfy.clip_vision.Output()
        out["penultimate_hidden_states"] = torch.randn(1, 257, TINY.clip_dim, generator=g)
        return out

    inputs = dict(
        # Same token count as ComfyUI's T5 gives (always padded to 512), so the passes batch.
        positive=[[torch.randn(1, 7, TINY.text_dim, generator=g), {}]],
        negative=[[torch.randn(1, 7, TINY.text_dim, generator=g), {}]],
        vae=comfy_wan21_vae(), reference_image=torch.rand(1, 32, 16, 3, generator=g),
        pose_images=torch.rand(5, 32, 16, 3, generator=g), clip_vision_reference=clip_out(),
        clip_vision_first_pose=clip_out(), width=16, height=32, length=5)
    if with_negative_pose:
        inputs["negative_pose_images"] = torch.rand(5, 32, 16, 3, generator=g)
    positive, negative, negative_pose, latent = i2v.SteadyDancerImageToVideo.execute(**inputs).result
    return (positive, negative, negative_pose, latent) if with_negative_pose else (positive, negative, latent)
