"""Tiny random models saved in the released layouts, for tests that must not download anything.

``build_tiny_wan_dir(path)`` writes a Diffusers-format Wan2.1-I2V folder (``vae/``, ``text_encoder/``,
``tokenizer/``, ``image_encoder/``, ``image_processor/``) whose widths match ``TINY`` (text_dim 32,
clip_dim 48, 257 CLIP tokens, z_dim 16). ``build_tiny_dit_checkpoint(path)`` writes a tiny SteadyDancer
DiT checkpoint in the released key layout. All weights are seeded, so two builds are identical.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from steadydancer_core.encoders import CLIP_MEAN, CLIP_STD
from steadydancer_core.model.config import TINY, DiTConfig

#: Words known to the tiny tokenizer; anything else maps to <unk> (the test prompts use these).
TINY_VOCAB_WORDS = ("a", "person", "dances", "in", "the", "park", "red", "dress", "jumps", "walks", "blurry")
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2  # umT5's ids for <pad>, </s>, <unk>


def build_tiny_tokenizer(folder: Path):
    """A WordLevel tokenizer with umT5's special-token ids and EOS appended, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "</s>": EOS_ID, "<unk>": UNK_ID}
    for word in TINY_VOCAB_WORDS:
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_tiny_wan_dir(root: Path, config: DiTConfig = TINY, seed: int = 0) -> Path:
    """Write tiny random VAE / umT5 / CLIP-vision components in the Diffusers Wan2.1-I2V layout."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    root = Path(root)
    torch.manual_seed(seed)
    # base_dim 8 keeps the 3-D causal VAE in the milliseconds; strides (4, 8, 8) and z_dim 16 are the real ones.
    AutoencoderKLWan(base_dim=8, z_dim=16, num_res_blocks=1).save_pretrained(str(root / "vae"))

    tokenizer = build_tiny_tokenizer(root / "tokenizer")
    t5_config = UMT5Config(vocab_size=len(tokenizer), d_model=config.text_dim, d_kv=8, d_ff=64, num_layers=2,
                           num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                           pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
    UMT5EncoderModel(t5_config).save_pretrained(str(root / "text_encoder"))

    # 32 px with 2 px patches gives the real token count: 16 x 16 patches + class token = 257.
    clip_config = CLIPVisionConfig(hidden_size=config.clip_dim, intermediate_size=96, num_hidden_layers=3,
                                   num_attention_heads=4, image_size=32, patch_size=2, projection_dim=16)
    CLIPVisionModel(clip_config).save_pretrained(str(root / "image_encoder"))
    # Written directly (as the real repo's file) rather than via CLIPImageProcessor, which wants torchvision.
    (root / "image_processor").mkdir(parents=True, exist_ok=True)
    (root / "image_processor" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 32},
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "do_normalize": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "resample": 3}, indent=2))
    return root


def build_tiny_dit_checkpoint(path: Path, config: DiTConfig = TINY, seed: int = 0, sharded: bool = False) -> Path:
    """A seeded random tiny SteadyDancer DiT saved in the released key layout (file or diffusers shards).

    The default initialisation leaves no branch at zero (only norm weights/biases start at 1/0), so the
    pose modulation, the reference tokens and both CLIP features all influence the output.
    """
    from steadydancer_core.model import SteadyDancerDiT
    from steadydancer_core.model.checkpoint import save_dit

    torch.manual_seed(seed)
    model = SteadyDancerDiT(config)
    return save_dit(model, path, sharded=sharded)
