"""VAE, T5 and CLIP-vision encoders for standalone inference, from diffusers/transformers (D8).

The components are the Diffusers-format Wan2.1-I2V ones (``Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`` or
``-720P-Diffusers``: subfolders ``vae/``, ``text_encoder/``, ``tokenizer/``, ``image_encoder/``,
``image_processor/``). The wrappers only add what the official SteadyDancer pipeline does around the
networks (model_spec §6): latent normalisation, prompt cleaning and trimming, the official CLIP input
transform (``official_inputs.ClipPreprocess``).
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Sequence

import torch

from .errors import UserError
from .official_inputs import CLIP_MEAN, CLIP_STD, ClipPreprocess

#: Subfolder -> what must be in it: a config file and (for networks) at least one weight file.
WAN_COMPONENTS: dict[str, tuple[str, bool]] = {
    "vae": ("config.json", True),
    "text_encoder": ("config.json", True),
    "tokenizer": ("tokenizer_config.json", False),
    "image_encoder": ("config.json", True),
    "image_processor": ("preprocessor_config.json", False),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class MissingWeightsError(UserError, FileNotFoundError):
    """Model files needed for inference are not on disk; the message says what to download and where."""


def missing_wan_components(wan_dir: str | Path | None) -> list[str]:
    """Human-readable problems with a Diffusers-format Wan2.1-I2V folder ([] when complete)."""
    if wan_dir is None:
        return ["no --wan-dir given"]
    root = Path(wan_dir)
    if not root.is_dir():
        return [f"{root} is not a folder"]
    problems = []
    for sub, (config_name, needs_weights) in WAN_COMPONENTS.items():
        folder = root / sub
        if not (folder / config_name).is_file():
            problems.append(f"{folder}/{config_name} is missing")
        elif needs_weights and not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir()):
            problems.append(f"{folder} has no *.safetensors weights")
    return problems


def missing_weights_message(wan_problems: Sequence[str], dit_problem: str | None) -> str:
    """One message listing everything that is missing, where each file comes from (``downloads.FILES``)
    and the one command that fetches them all into the standalone layout."""
    from . import downloads

    lines = ["Model weights are missing; nothing was run."]
    if wan_problems:
        lines.append("Wan2.1-I2V components (VAE, umT5 text encoder + tokenizer, CLIP vision; Diffusers format, "
                     "not transformer/):")
        lines += [f"  - {p}" for p in wan_problems]
        lines.append(downloads.missing_files_message(downloads.STANDALONE_WAN_KEYS, "standalone", None, command=False))
        lines.append(f"  pass models/{downloads.WAN_DIFFUSERS_FOLDER} as --wan-dir")
    if dit_problem:
        lines.append(f"SteadyDancer DiT: {dit_problem}; one of")
        lines.append(downloads.missing_files_message(downloads.DIT_KEYS["official"][1:] + downloads.DIT_KEYS["fp8"]
                                                     + downloads.DIT_KEYS["fp16"], "standalone", None, command=False))
        lines.append(f"  pass models/{downloads.OFFICIAL_DIT_FOLDER} (or the single file) as --dit")
    lines.append(f"fetch them (files already there are skipped): {downloads.download_command('standalone')}"
                 " (run where models/ should be; --dit fp8|fp16 for a single-file DiT)")
    return "\n".join(lines)


# ---- text cleaning (official tokenizers.py / diffusers prompt_clean) ---------------------------

def clean_prompt(text: str) -> str:
    """ftfy mojibake repair, double HTML unescape, whitespace collapse — as the official T5 path."""
    import ftfy  # imported here: checking inputs (animate --dry-run) needs no text tooling

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# ---- VAE ---------------------------------------------------------------------------------------

class WanVAE:
    """diffusers ``AutoencoderKLWan`` with the Wan latent normalisation applied on both sides.

    Latents are ``(mu - latents_mean) / latents_std`` per channel (the distribution mode, never a
    sample), exactly what the official ``WanVAE.encode`` returns; ``decode`` inverts it and clamps.
    """

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        self.z_dim = int(config.z_dim)
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        # Temporal stride 4 (two temporal downsamples) and spatial stride 8 (three downsamples) for Wan2.1.
        self.temporal_stride = 2 ** sum(bool(d) for d in config.temperal_downsample)
        self.spatial_stride = 2 ** (len(config.dim_mult) - 1)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> "WanVAE":
        from diffusers import AutoencoderKLWan

        return cls(AutoencoderKLWan.from_pretrained(str(folder), torch_dtype=dtype).to(device))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.temporal_stride

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, 16, 1 + (F-1)//4, H/8, W/8] float32."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"VAE input must be [B, 3, F, H, W], got {tuple(video.shape)}")
        dist = self.vae.encode(video.to(self.device, self.dtype)).latent_dist
        mu = dist.mode().float()
        return (mu - self._mean.to(mu.device)) / self._std.to(mu.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, 16, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w] float32 in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"VAE latents must be [B, {self.z_dim}, T, h, w], got {tuple(latents.shape)}")
        z = latents.float() * self._std.to(latents.device) + self._mean.to(latents.device)
        video = self.vae.decode(z.to(self.device, self.dtype)).sample
        return video.float().clamp(-1.0, 1.0)


# ---- T5 ----------------------------------------------------------------------------------------

class T5TextEncoder:
    """transformers ``UMT5EncoderModel`` + tokenizer, called as the official ``T5EncoderModel``.

    Prompts are cleaned, tokenised to ``max_length`` (padding, truncation, EOS appended), encoded with
    the attention mask, and each output is trimmed to its real token count ([L_i, d_model]).
    """

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, wan_dir: str | Path, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> "T5TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(wan_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
        model = UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), torch_dtype=dtype).to(device)
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], max_length: int = 512) -> list[torch.Tensor]:
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", max_length=max_length,
            truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(input_ids=tokens.input_ids.to(self.device), attention_mask=mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [h[:n] for h, n in zip(hidden, lengths)]


def pad_context(context: torch.Tensor, length: int) -> torch.Tensor:
    """[L, D] trimmed T5 output -> [length, D], zeros appended (what the official DiT does itself)."""
    if context.shape[0] > length:
        raise ValueError(f"text context has {context.shape[0]} tokens, more than the DiT's text_len {length}")
    return torch.cat([context, context.new_zeros(length - context.shape[0], context.shape[1])])


# ---- CLIP vision ------------------------------------------------------------------------------

class CLIPVisionEncoder:
    """transformers ``CLIPVisionModel``; returns the penultimate hidden states (official ``use_31_block``).

    For ViT-H/14 at 224 px that is [B, 257, 1280]: the output of block 31 of 32, before any post-norm.
    """

    def __init__(self, model: torch.nn.Module, preprocess: ClipPreprocess) -> None:
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess

    @classmethod
    def from_pretrained(cls, wan_dir: str | Path, dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> "CLIPVisionEncoder":
        from transformers import CLIPVisionModel

        root = Path(wan_dir)
        model = CLIPVisionModel.from_pretrained(str(root / "image_encoder"), torch_dtype=dtype).to(device)
        # Only the normalisation constants come from the processor config: its shortest-side resize and
        # centre crop are not the official transform, and the network's own image_size is the target.
        processor = json.loads((root / "image_processor" / "preprocessor_config.json").read_text())
        preprocess = ClipPreprocess(size=int(model.config.image_size),
                                    mean=tuple(processor.get("image_mean", CLIP_MEAN)),
                                    std=tuple(processor.get("image_std", CLIP_STD)))
        return cls(model, preprocess)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        parameter = next(self.model.parameters())
        pixels = self.preprocess(images).to(parameter.device, parameter.dtype)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2]
