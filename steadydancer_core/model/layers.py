"""Wan2.1 I2V transformer layers in ComfyUI's idiom.

Every Linear/Conv/LayerNorm comes from the injected ``operations`` namespace (``torch.nn`` or a
``comfy.ops`` class). The few bare parameters (modulations, RMSNorm weights) are cast to the
activation's dtype/device where they are used, so ComfyUI can keep them offloaded or in another
storage dtype. Parameter names are the official ones (``self_attn.q``, ``norm3``, ``ffn.0`` ...).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from .attention import AttentionFn
from .rope import apply_rope, float64_device

# ``torch.nn`` or a comfy.ops class: anything with Linear, Conv2d, Conv3d, LayerNorm, GroupNorm.
Operations = Any


def cast_like(param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``param`` on ``like``'s device and in its dtype (a no-op when they already agree)."""
    return param.to(device=like.device, dtype=like.dtype)


def new_parameter(
    shape: tuple[int, ...],
    init: Callable[[tuple[int, ...]], torch.Tensor],
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> nn.Parameter:
    """A parameter initialised in float32 and stored in ``dtype``.

    Initialising in float32 first keeps construction valid for storage dtypes that have no random or
    fill kernels (float8). On the meta device (checkpoint loading) the init is skipped: arithmetic on
    meta tensors pulls in torch._dynamo, which costs seconds and ~90 MB on the first load.
    """
    if torch.device(device if device is not None else "cpu").type == "meta":
        return nn.Parameter(torch.empty(shape, device="meta", dtype=dtype or torch.float32))
    with torch.device(device if device is not None else "cpu"):
        value = init(shape)
    return nn.Parameter(value.to(dtype) if dtype is not None else value)


def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Official Wan timestep sinusoid ``[B, dim]`` in float64: ``[cos(t*f_j), sin(t*f_j)]``, f_j = 10000^(-j/(dim/2)).

    Computed on :func:`float64_device` of the timestep's device; the caller moves/casts the result.
    """
    half = dim // 2
    position = timestep.to(device=float64_device(timestep.device), dtype=torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class RMSNorm(nn.Module):
    """Wan RMSNorm over the last dim; statistics in float32 as the official ``WanRMSNorm``."""

    def __init__(self, dim: int, eps: float, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = new_parameter((dim,), torch.ones, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * cast_like(self.weight, x)


class SelfAttention(nn.Module):
    """Full bidirectional self-attention with qk RMSNorm and 3-D RoPE."""

    def __init__(self, dim: int, num_heads: int, eps: float, attention: AttentionFn,
                 operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention = attention
        self.q = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.k = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.v = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.o = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.norm_q = RMSNorm(dim, eps, device=device, dtype=dtype)
        self.norm_k = RMSNorm(dim, eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        q = apply_rope(self.norm_q(self.q(x)), rope_cos, rope_sin, self.num_heads)
        k = apply_rope(self.norm_k(self.k(x)), rope_cos, rope_sin, self.num_heads)
        out = self.attention(q, k, self.v(x), heads=self.num_heads)
        return self.o(out)


class I2VCrossAttention(SelfAttention):
    """Wan I2V cross-attention: text and CLIP-image branches share the query; outputs are summed.

    Same q/k/v/o projections and norms as :class:`SelfAttention` (official key names), plus the
    image branch ``k_img``/``v_img``/``norm_k_img``; no RoPE.
    """

    def __init__(self, dim: int, num_heads: int, eps: float, attention: AttentionFn,
                 operations: Operations, device=None, dtype=None) -> None:
        super().__init__(dim, num_heads, eps, attention, operations, device=device, dtype=dtype)
        self.k_img = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.v_img = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.norm_k_img = RMSNorm(dim, eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, context: torch.Tensor, image_tokens: int) -> torch.Tensor:
        """``context`` = CLIP tokens (the first ``image_tokens``) followed by text tokens."""
        context_img, context_txt = context[:, :image_tokens], context[:, image_tokens:]
        q = self.norm_q(self.q(x))
        out_txt = self.attention(q, self.norm_k(self.k(context_txt)), self.v(context_txt), heads=self.num_heads)
        out_img = self.attention(q, self.norm_k_img(self.k_img(context_img)), self.v_img(context_img),
                                 heads=self.num_heads)
        return self.o(out_txt + out_img)


class AttentionBlock(nn.Module):
    """One Wan2.1 I2V block (cross_attn_norm=True: affine ``norm3`` before the cross-attention)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, attention: AttentionFn,
                 operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        self.norm1 = operations.LayerNorm(dim, eps, elementwise_affine=False, device=device, dtype=dtype)
        self.self_attn = SelfAttention(dim, num_heads, eps, attention, operations, device=device, dtype=dtype)
        self.norm3 = operations.LayerNorm(dim, eps, elementwise_affine=True, device=device, dtype=dtype)
        self.cross_attn = I2VCrossAttention(dim, num_heads, eps, attention, operations, device=device, dtype=dtype)
        self.norm2 = operations.LayerNorm(dim, eps, elementwise_affine=False, device=device, dtype=dtype)
        self.ffn = nn.Sequential(
            operations.Linear(dim, ffn_dim, device=device, dtype=dtype),
            nn.GELU(approximate="tanh"),
            operations.Linear(ffn_dim, dim, device=device, dtype=dtype),
        )
        self.modulation = new_parameter((1, 6, dim), lambda s: torch.randn(s) / dim**0.5, device, dtype)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor, image_tokens: int,
                rope_cos: torch.Tensor, rope_sin: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, dim]; ``e0`` [B, 6, dim] projected time embedding."""
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (cast_like(self.modulation, x) + e0).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x) * (1 + scale_sa) + shift_sa, rope_cos, rope_sin)
        x = x + y * gate_sa
        x = x + self.cross_attn(self.norm3(x), context, image_tokens)
        y = self.ffn(self.norm2(x) * (1 + scale_ff) + shift_ff)
        return x + y * gate_ff


class Head(nn.Module):
    """Output head: modulated LayerNorm then Linear to ``prod(patch) * out_dim`` per token."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float,
                 operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        patch_volume = patch_size[0] * patch_size[1] * patch_size[2]
        self.norm = operations.LayerNorm(dim, eps, elementwise_affine=False, device=device, dtype=dtype)
        self.head = operations.Linear(dim, patch_volume * out_dim, device=device, dtype=dtype)
        self.modulation = new_parameter((1, 2, dim), lambda s: torch.randn(s) / dim**0.5, device, dtype)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``e`` [B, dim] is the time embedding before ``time_projection`` (official: ``e``, not ``e0``)."""
        shift, scale = (cast_like(self.modulation, x) + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


class MLPProj(nn.Module):
    """CLIP-vision token projection ``img_emb``: LN, Linear, GELU(erf), Linear, LN (keys proj.0/1/3/4)."""

    def __init__(self, in_dim: int, out_dim: int, operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            operations.LayerNorm(in_dim, device=device, dtype=dtype),
            operations.Linear(in_dim, in_dim, device=device, dtype=dtype),
            nn.GELU(),
            operations.Linear(in_dim, out_dim, device=device, dtype=dtype),
            operations.LayerNorm(out_dim, device=device, dtype=dtype),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(image_embeds)
