"""SteadyDancer's pose branch: temporal module, spatial DYModule and the alignment unit.

Module and parameter names follow the official ``small_archs.py`` / ``mobilenetv2_dcd.py`` so the
released weights load unchanged (``condition_embedding_temporal.0.spatial.weight``,
``condition_embedding_spatial.fc.1.fc.0.weight``, ``condition_embedding_align.cross_attn.in_proj_weight`` ...).
Bare parameters (LayerNorm2D affine, the attention's packed in-projection) are cast at use.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Operations, cast_like, new_parameter


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The DYModule's hard sigmoid ``relu6(x + 3) / 3`` — range [0, 2] (divides by 3, not 6, as released)."""
    return F.relu6(x + 3.0) / 3.0


# ---- Temporal Motion Coherence Module -------------------------------------------------------

class FactorConv3d(nn.Module):
    """(2+1)-D factorised conv: depthwise 1x3x3 (no bias) -> SiLU -> 3x1x1 full conv (bias); zero padding."""

    def __init__(self, channels: int, operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        self.spatial = operations.Conv3d(channels, channels, kernel_size=(1, 3, 3), padding=(0, 1, 1),
                                         groups=channels, bias=False, device=device, dtype=dtype)
        self.temporal = operations.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0),
                                          bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(F.silu(self.spatial(x)))


def temporal_pose_module(channels: int, operations: Operations, device=None, dtype=None) -> nn.Sequential:
    """3 x (FactorConv3d, SiLU) — a Sequential so the keys are ``0.*``, ``2.*``, ``4.*`` as released."""
    layers: list[nn.Module] = []
    for _ in range(3):
        layers += [FactorConv3d(channels, operations, device=device, dtype=dtype), nn.SiLU()]
    return nn.Sequential(*layers)


# ---- Spatial Structure Adaptive Extractor (dynamic convolution, DCD) ------------------------

def dynamic_conv_sizes(channels: int, fc_squeeze: int = 8) -> tuple[int, int]:
    """(latent dim, squeeze width) of the official ``DYModule(inp=channels, oup=channels)``.

    With inp == oup the released rule is: reduction 2, doubled while dim^2 > 2*channels, dim >= 4;
    squeeze = max(channels, dim^2) // fc_squeeze, at least 4. For 16 channels: (4, 4).
    """
    reduction = 2
    dim = channels // reduction
    while dim**2 > channels * 2:
        reduction *= 2
        dim = channels // reduction
    dim = max(dim, 4)
    squeeze = max(max(channels, dim**2) // fc_squeeze, 4)
    return dim, squeeze


class SqueezeExcite(nn.Module):
    """``SEModule_small``: x * hsig(W x) (key ``fc.0.weight``)."""

    def __init__(self, channels: int, operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        self.fc = nn.Sequential(operations.Linear(channels, channels, bias=False, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * hard_sigmoid(self.fc(x))


class DYModule(nn.Module):
    """Dynamic convolution on single frames ``[N, C, H, W]`` (official ``DYModule`` with inp == oup).

    out = conv_p(bn2(Phi @ u) + u) + alpha * conv(x), u = bn1(conv_q(x)), where Phi (dim x dim) and
    alpha (per channel) are predicted from the frame's global average through ``fc``.
    """

    def __init__(self, channels: int, operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        self.dim, squeeze = dynamic_conv_sizes(channels)
        self.conv = operations.Conv2d(channels, channels, 1, bias=False, device=device, dtype=dtype)
        self.conv_q = operations.Conv2d(channels, self.dim, 1, bias=False, device=device, dtype=dtype)
        self.fc = nn.Sequential(
            operations.Linear(channels, squeeze, bias=False, device=device, dtype=dtype),
            SqueezeExcite(squeeze, operations, device=device, dtype=dtype),
        )
        self.fc_phi = operations.Linear(squeeze, self.dim**2, bias=False, device=device, dtype=dtype)
        self.fc_scale = operations.Linear(squeeze, channels, bias=False, device=device, dtype=dtype)
        self.conv_p = operations.Conv2d(self.dim, channels, 1, bias=False, device=device, dtype=dtype)
        # Released as GroupNorm(4 groups, 4 channels) = per-channel instance norm with affine.
        self.bn1 = operations.GroupNorm(4, self.dim, device=device, dtype=dtype)
        self.bn2 = operations.GroupNorm(4, self.dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        residual = self.conv(x)
        squeezed = self.fc(x.mean(dim=(2, 3)))
        phi = self.fc_phi(squeezed).view(n, self.dim, self.dim)
        scale = hard_sigmoid(self.fc_scale(squeezed)).view(n, -1, 1, 1)
        u = self.bn1(self.conv_q(x)).view(n, self.dim, h * w)
        u = self.bn2(torch.matmul(phi, u)) + u
        return self.conv_p(u.view(n, self.dim, h, w)) + scale * residual


# ---- Frame-wise Attention Alignment Unit ----------------------------------------------------

class LayerNorm2D(nn.Module):
    """LayerNorm over the channel dim of ``[N, C, H, W]`` (biased variance), affine ``[1, C, 1, 1]``."""

    def __init__(self, channels: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = new_parameter((1, channels, 1, 1), torch.ones, device, dtype)
        self.bias = new_parameter((1, channels, 1, 1), torch.zeros, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * cast_like(self.weight, x) + cast_like(self.bias, x)


class TemporalCrossAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout, over short sequences.

    Implemented here because ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly and so
    bypasses ComfyUI's cast/offload layers. Keys: ``in_proj_weight`` (rows q, k, v),
    ``in_proj_bias``, ``out_proj.{weight,bias}``. Attention dropout 0.1 as released (training only).
    """

    # Sequences per SDPA call: CUDA attention kernels put the batch on a grid axis limited to 65535.
    MAX_SEQUENCES_PER_CALL = 16384

    def __init__(self, dim: int, num_heads: int, operations: Operations, dropout: float = 0.1,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        bound = (6.0 / (dim + 3 * dim)) ** 0.5  # xavier-uniform over the packed [3*dim, dim] matrix
        self.in_proj_weight = new_parameter((3 * dim, dim), lambda s: torch.empty(s).uniform_(-bound, bound),
                                            device, dtype)
        self.in_proj_bias = new_parameter((3 * dim,), torch.zeros, device, dtype)
        self.out_proj = operations.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        """``query``/``key_value`` ``[N, S, dim]``: N independent sequences of length S."""
        n, seq, dim = query.shape
        w_q, w_k, w_v = cast_like(self.in_proj_weight, query).chunk(3, dim=0)
        b_q, b_k, b_v = cast_like(self.in_proj_bias, query).chunk(3, dim=0)
        head_dim = dim // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, seq, self.num_heads, head_dim).transpose(1, 2)

        q = heads(F.linear(query, w_q, b_q))
        k = heads(F.linear(key_value, w_k, b_k))
        v = heads(F.linear(key_value, w_v, b_v))
        dropout = self.dropout if self.training else 0.0
        out = torch.cat([
            F.scaled_dot_product_attention(q[i:i + self.MAX_SEQUENCES_PER_CALL], k[i:i + self.MAX_SEQUENCES_PER_CALL],
                                           v[i:i + self.MAX_SEQUENCES_PER_CALL], dropout_p=dropout)
            for i in range(0, n, self.MAX_SEQUENCES_PER_CALL)
        ])
        return self.out_proj(out.transpose(1, 2).reshape(n, seq, dim))


class PoseAlignmentUnit(nn.Module):
    """Official ``PoseRefNetNoBNV3``: per latent pixel, the noisy latent attends over the pose ACROSS TIME.

    The released weights were trained with ``nn.MultiheadAttention(batch_first=False)`` fed
    ``[B*T, H*W, C]``, i.e. time is the sequence and pixels are the batch. Here each (sample, pixel)
    is its own sequence of length T, which is identical for B = 1 and keeps samples independent for
    B > 1 (ComfyUI batches conditionings into one call).
    """

    def __init__(self, pose_channels: int, latent_channels: int, hidden_dim: int, num_heads: int,
                 operations: Operations, device=None, dtype=None) -> None:
        super().__init__()
        self.proj_p = operations.Conv2d(pose_channels, hidden_dim, 1, device=device, dtype=dtype)
        self.proj_r = operations.Conv2d(latent_channels, hidden_dim, 1, device=device, dtype=dtype)
        self.proj_p_back = operations.Conv2d(hidden_dim, pose_channels, 1, device=device, dtype=dtype)
        self.cross_attn = TemporalCrossAttention(hidden_dim, num_heads, operations, device=device, dtype=dtype)
        self.ffn_pose = nn.Sequential(
            operations.Conv2d(hidden_dim, hidden_dim, 1, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Conv2d(hidden_dim, hidden_dim, 1, device=device, dtype=dtype),
        )
        self.norm1 = LayerNorm2D(hidden_dim, device=device, dtype=dtype)
        self.norm2 = LayerNorm2D(hidden_dim, device=device, dtype=dtype)

    def forward(self, pose: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """``pose`` [B, Cp, T, H, W] (keys/values), ``latent`` [B, Cx, T, H, W] (queries) -> [B, Cp, T, H, W]."""
        b, _, t, h, w = pose.shape

        def per_pixel_sequences(features: torch.Tensor) -> torch.Tensor:
            # [B*T, C, H, W] -> [B*H*W, T, C]
            c = features.shape[1]
            return features.view(b, t, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, t, c)

        def frames(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(b * t, -1, h, w)

        keys = per_pixel_sequences(self.proj_p(frames(pose)))
        queries = per_pixel_sequences(self.proj_r(frames(latent)))
        attended = self.cross_attn(queries, keys)
        hidden = attended.shape[-1]
        out = attended.view(b, h * w, t, hidden).permute(0, 2, 3, 1).reshape(b * t, hidden, h, w)
        out = self.norm1(out)
        out = self.norm2(out + self.ffn_pose(out))
        out = self.proj_p_back(out)
        return out.view(b, t, -1, h, w).transpose(1, 2)
