"""Architecture configuration of the SteadyDancer DiT (Wan2.1-I2V + pose branch).

Field names follow the official ``WanModel`` constructor / ``config.json`` so a released
``config.json`` maps onto :class:`DiTConfig` one to one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of the SteadyDancer DiT.

    ``in_dim`` is the I2V input width (16 noise + 4 mask + 16 image latent); ``in_dim_c`` the pose
    latent width. The fused patch embedding therefore sees ``in_dim + 2 * in_dim_c`` channels.
    """

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 36
    in_dim_c: int = 16
    out_dim: int = 16
    clip_dim: int = 1280
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    # Pose-branch internal widths (fixed by the released weights).
    align_dim: int = 128
    align_heads: int = 8

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        head_dim = self.dim // self.num_heads
        if head_dim % 2:
            raise ValueError(f"head dim ({head_dim}) must be even for RoPE")
        if self.align_dim % self.align_heads:
            raise ValueError(
                f"align_dim ({self.align_dim}) must be divisible by align_heads ({self.align_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def fuse_in_dim(self) -> int:
        """Channels of ``patch_embedding_fuse``: I2V input + fused pose + aligned pose."""
        return self.in_dim + 2 * self.in_dim_c

    # ---- official config.json ------------------------------------------------------------
    # Keys the official WanModel reads from config.json (the rest are ``ignore_for_config``).
    _JSON_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_len",
                    "in_dim", "in_dim_c", "out_dim", "eps")

    def to_official_json(self) -> dict[str, Any]:
        """The ``config.json`` the official ``WanModel.from_pretrained`` expects."""
        out: dict[str, Any] = {"_class_name": "WanModel", "model_type": "i2v"}
        out.update({name: getattr(self, name) for name in self._JSON_FIELDS})
        out["patch_size"] = list(self.patch_size)
        # Not read by the official loader (ignore_for_config), stored so our loader can rebuild
        # non-standard (e.g. tiny test) configs exactly.
        out["text_dim"] = self.text_dim
        out["clip_dim"] = self.clip_dim
        return out

    @classmethod
    def from_official_json(cls, data: Mapping[str, Any]) -> "DiTConfig":
        """Build from an official/diffusers ``config.json`` dict; unknown keys are an error."""
        known = set(cls._JSON_FIELDS) | {"text_dim", "clip_dim", "patch_size"}
        ignored = {"model_type", "window_size", "qk_norm", "cross_attn_norm"}
        # Keys starting with "_" are diffusers bookkeeping (_class_name, _diffusers_version, _name_or_path).
        unknown = sorted(k for k in set(data) - known - ignored if not k.startswith("_"))
        if unknown:
            raise ValueError(f"unknown keys in SteadyDancer config.json: {unknown}")
        if data.get("model_type", "i2v") != "i2v":
            raise ValueError(f"SteadyDancer is an i2v model; config.json says model_type={data['model_type']!r}")
        kwargs = {k: data[k] for k in known if k in data}
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(kwargs["patch_size"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "DiTConfig":
        return dataclasses.replace(self, **changes)


#: The released SteadyDancer-14B architecture (16,396,718,736 parameters, 1,345 keys).
OFFICIAL_14B = DiTConfig()

#: A tiny architecture for tests: same structure, small widths (runs in milliseconds on CPU).
#: Head dim stays 128 as in the release, so ``num_heads = dim // 128`` (ComfyUI's and our
#: shape-based config detection rule) holds for it too.
TINY = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, freq_dim=32, text_dim=32,
                 text_len=16, clip_dim=48)
