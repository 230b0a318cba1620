"""The attention function the DiT calls, and the default one (PyTorch SDPA).

The DiT never hard-codes an attention kernel: it receives a callable with the signature of
ComfyUI's ``comfy.ldm.modules.attention.optimized_attention`` so ComfyUI can inject its own
(xformers, sage, flash, split ...) while the core stays plain PyTorch.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class AttentionFn(Protocol):
    """``attention(q, k, v, heads=n) -> out``; q ``[B, Lq, n*d]``, k/v ``[B, Lk, n*d]``, out ``[B, Lq, n*d]``."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor: ...


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Unmasked multi-head attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Scale ``1/sqrt(head_dim)``, no mask, no dropout (the DiT runs none).
    """
    batch, len_q, inner = q.shape
    head_dim = inner // heads
    q, k, v = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, len_q, inner)
