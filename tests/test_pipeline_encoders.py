"""The diffusers/transformers encoder wrappers reproduce the official pre/post-processing (model_spec §6)."""
from __future__ import annotations

import shutil

import pytest
import torch

from steadydancer_core.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPVisionEncoder,
    T5TextEncoder,
    WanVAE,
    clean_prompt,
    missing_wan_components,
    missing_weights_message,
    pad_context,
)
from tiny_models import EOS_ID, PAD_ID, build_tiny_wan_dir


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return build_tiny_wan_dir(tmp_path_factory.mktemp("wan"))


def test_vae_latents_are_normalised_mode_and_causal(wan_dir):
    from diffusers import AutoencoderKLWan

    vae = WanVAE.from_pretrained(wan_dir / "vae")
    torch.manual_seed(1)
    clip = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    latents = vae.encode(clip)
    assert latents.shape == (1, 16, 3, 4, 6)  # 1 + (9-1)//4 frames, /8 spatially

    raw = AutoencoderKLWan.from_pretrained(str(wan_dir / "vae"))
    mean = torch.tensor(raw.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(raw.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        mu = raw.encode(clip).latent_dist.mean  # the distribution's mode, never a sample
    torch.testing.assert_close(latents, (mu - mean) / std)

    # The first frame is encoded alone with an empty cache, so it equals encoding that frame by
    # itself: the pipeline relies on this to take ref_x / ref_c from the clip latents (§8.11).
    torch.testing.assert_close(vae.encode(clip[:, :, :1]), latents[:, :, :1], rtol=1e-5, atol=1e-5)


def test_vae_decode_inverts_normalisation_and_clamps(wan_dir):
    from diffusers import AutoencoderKLWan

    vae = WanVAE.from_pretrained(wan_dir / "vae")
    torch.manual_seed(2)
    latents = torch.randn(1, 16, 2, 4, 6) * 3
    video = vae.decode(latents)
    assert video.shape == (1, 3, 5, 32, 48)
    assert video.min() >= -1 and video.max() <= 1
    raw = AutoencoderKLWan.from_pretrained(str(wan_dir / "vae"))
    mean = torch.tensor(raw.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(raw.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        expected = raw.decode(latents * std + mean).sample.clamp(-1, 1)
    torch.testing.assert_close(video, expected)


def test_clean_prompt_unescapes_twice_and_collapses_whitespace():
    assert clean_prompt("  a\n\tperson  &amp;amp; park ") == "a person & park"


def test_clean_prompt_repairs_mojibake_like_the_official_ftfy_step():
    # "café" encoded as UTF-8 and decoded as Latin-1 reads "cafÃ©"; ftfy.fix_text restores it.
    assert clean_prompt("a cafÃ© dancer") == "a café dancer"


def test_t5_output_is_trimmed_to_real_tokens_and_independent_of_padding(wan_dir):
    encoder = T5TextEncoder.from_pretrained(wan_dir)
    long_pad = encoder.encode(["a person dances in the park"], max_length=16)[0]
    # 6 words + EOS; the encoder ran with the attention mask, so padding to 16 or to exactly 7 agrees.
    assert long_pad.shape == (7, 32)
    short_pad = encoder.encode(["a person dances in the park"], max_length=7)[0]
    torch.testing.assert_close(long_pad, short_pad, rtol=1e-5, atol=1e-6)
    ids = encoder.tokenizer("a person", padding="max_length", max_length=5).input_ids
    assert ids[2:] == [EOS_ID, PAD_ID, PAD_ID]
    # Truncation keeps max_length tokens (EOS included).
    assert encoder.encode(["a " * 40], max_length=16)[0].shape == (16, 32)


def test_pad_context_appends_zeros_and_rejects_overlong():
    context = torch.randn(3, 4)
    padded = pad_context(context, 6)
    assert padded.shape == (6, 4)
    torch.testing.assert_close(padded[:3], context)
    assert padded[3:].abs().sum() == 0
    with pytest.raises(ValueError, match="text_len 2"):
        pad_context(context, 2)


def test_clip_preprocess_is_squash_resize_and_clip_normalisation(wan_dir):
    encoder = CLIPVisionEncoder.from_pretrained(wan_dir)
    # A constant image stays constant under any resize: the expected value is hand-computable.
    image = torch.full((1, 3, 20, 70), 0.2)  # non-square: squashed, not cropped
    pixels = encoder.preprocess(image)
    assert pixels.shape == (1, 3, 32, 32)
    for c in range(3):
        expected = (0.2 * 0.5 + 0.5 - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(pixels[0, c], torch.full((32, 32), expected), rtol=1e-5, atol=1e-5)


def test_clip_features_are_penultimate_block_without_post_norm(wan_dir):
    from transformers import CLIPVisionModel

    encoder = CLIPVisionEncoder.from_pretrained(wan_dir)
    torch.manual_seed(3)
    image = torch.rand(1, 3, 40, 24) * 2 - 1
    features = encoder.encode(image)
    assert features.shape == (1, 257, 48)
    # Independent: the same weights with the last block removed; its last_hidden_state is the output
    # of block N-1 (CLIP's post-layernorm only touches the pooled output).
    truncated = CLIPVisionModel.from_pretrained(str(wan_dir / "image_encoder"), num_hidden_layers=2).eval()
    with torch.no_grad():
        expected = truncated(pixel_values=encoder.preprocess(image)).last_hidden_state
    torch.testing.assert_close(features, expected)


def test_missing_components_are_listed_with_download_instructions(wan_dir, tmp_path):
    assert missing_wan_components(wan_dir) == []
    broken = tmp_path / "wan"
    shutil.copytree(wan_dir, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer")
    problems = missing_wan_components(broken)
    assert len(problems) == 2
    assert any("vae" in p and "weights" in p for p in problems)
    assert any("tokenizer_config.json" in p for p in problems)
    message = missing_weights_message(problems, "no --dit given")
    for needed in ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "MCG-NJU/SteadyDancer-14B", "--wan-dir", "--dit",
                   "tokenizer_config.json"):
        assert needed in message
