"""Linear layers whose weights are stored in float8 with a per-tensor scale and computed in the input's dtype.

The storage convention is the scaled-fp8 one of ``fp8_scaled`` (weight ``float8_e4m3fn``, float32
``scale_weight``, real weight = ``weight.float() * scale``): :func:`fp8_scaled.quantize_per_tensor` makes
it, :func:`fp8_scaled.dequantize` undoes it at every call, so a layer's matmul runs in bf16 on a weight that
exists in bf16 only while that layer runs. The 14B DiT's block linears hold 16.15 of its 16.40 B parameters,
so storing them this way halves the DiT's resident weights against bf16.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fp8_scaled import dequantize, quantize_per_tensor
from .layers import cast_like


class FP8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` kept as fp8 + one float32 scale (keys ``weight``, ``scale_weight``, ``bias``)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.register_buffer("scale_weight", scale.to(torch.float32).reshape(()))
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> "FP8Linear":
        weight, scale = quantize_per_tensor(linear.weight.detach(), fp8_dtype)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(weight, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.weight, self.scale_weight, x.dtype)
        return F.linear(x, weight, None if self.bias is None else cast_like(self.bias, x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight={self.weight.dtype}")


def store_linears_in_fp8(root: nn.Module, fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> int:
    """Replace every ``nn.Linear`` under ``root`` by an :class:`FP8Linear` in place; returns how many.

    Layer by layer, so at most one layer exists twice at a time; the bf16/fp32 weight is released as soon
    as its fp8 copy exists. Parameters stay on the device they were on.
    """
    targets = [(parent, name) for parent in root.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear]
    for parent, name in targets:  # only names are held, so each replaced layer is freed at once
        setattr(parent, name, FP8Linear.from_linear(getattr(parent, name), fp8_dtype))
    return len(targets)
