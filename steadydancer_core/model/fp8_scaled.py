"""Scaled-fp8 checkpoints (ComfyUI / Kijai conventions) folded back into plain weights.

Conventions handled (facts from ComfyUI ``comfy/utils.py:convert_old_quants`` and Kijai's
``WanVideoModelLoader``):

* ``<layer>.weight`` stored as ``float8_e4m3fn`` / ``float8_e5m2`` with a per-tensor scale in
  ``<layer>.scale_weight`` (old ComfyUI / Kijai) or ``<layer>.weight_scale`` (newer ComfyUI);
  real weight = ``weight.float() * scale``.
* optional ``scaled_fp8`` marker tensor (its dtype names the fp8 format; content unused);
* optional ``<layer>.scale_input`` / ``<layer>.input_scale``: activation scales for fp8 matmul
  kernels. Once weights are dequantised to the compute dtype there is no fp8 matmul, so they are
  consumed (not model parameters) without effect;
* newer ComfyUI per-layer configs, as ``<layer>.comfy_quant`` uint8 JSON tensors or the
  ``_quantization_metadata`` safetensors metadata entry: accepted for fp8 formats; other formats
  (nvfp4, mxfp8, int8 ...) cannot be dequantised this way and raise.

fp8 weights without any scale are plain fp8 casts (scale 1).

:func:`quantize_per_tensor` is the inverse of :func:`dequantize` (the same convention), used to store a
model's linear weights in fp8 at run time (``fp8_linear``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from .checkpoint_errors import CheckpointError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")
QUANT_CONF_SUFFIX = ".comfy_quant"
MARKER_KEY = "scaled_fp8"
QUANT_METADATA_KEY = "_quantization_metadata"
DEQUANTIZABLE_FORMATS = frozenset({"float8_e4m3fn", "float8_e5m2"})


@dataclass
class QuantizationPlan:
    """How to turn the stored tensors of a checkpoint into model parameters."""

    weight_scales: dict[str, str] = field(default_factory=dict)  # weight key -> its scale key
    auxiliary_keys: set[str] = field(default_factory=set)        # bookkeeping keys, not parameters

    @property
    def is_scaled(self) -> bool:
        return bool(self.weight_scales)


def _layer_of(key: str, suffixes: Sequence[str]) -> str | None:
    for suffix in suffixes:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def _check_format(layer: str, conf: object, source: str) -> None:
    fmt = conf.get("format") if isinstance(conf, dict) else conf
    if fmt not in DEQUANTIZABLE_FORMATS:
        raise CheckpointError(
            f"{source}: layer {layer!r} is quantised as {fmt!r}; only scaled fp8 "
            f"({', '.join(sorted(DEQUANTIZABLE_FORMATS))}) can be loaded by the SteadyDancer core loader — "
            "load this file through ComfyUI's own loader (with comfy-kitchen) or use a bf16/fp16/fp8-scaled file")


def plan_dequantization(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str],
                        read_tensor: Callable[[str], torch.Tensor], source: str) -> QuantizationPlan:
    """Find scale/marker keys among ``shapes`` (canonical key -> shape) and validate them.

    ``read_tensor`` loads a small tensor by canonical key (used for ``.comfy_quant`` configs only).
    Raises :class:`CheckpointError` for a scale without its weight, a non-scalar scale, or a
    quantisation format other than fp8.
    """
    plan = QuantizationPlan()
    for key, shape in shapes.items():
        if key == MARKER_KEY:
            plan.auxiliary_keys.add(key)
            continue
        layer = _layer_of(key, WEIGHT_SCALE_SUFFIXES + INPUT_SCALE_SUFFIXES + (QUANT_CONF_SUFFIX,))
        if layer is None:
            continue
        weight_key = f"{layer}.weight"
        if weight_key not in shapes:  # bookkeeping for a layer that is not there: never drop silently
            raise CheckpointError(f"{source}: quantisation entry {key!r} has no weight {weight_key!r} to apply to")
        if _layer_of(key, WEIGHT_SCALE_SUFFIXES) is not None:
            if weight_key in plan.weight_scales:
                raise CheckpointError(f"{source}: {weight_key!r} has two scales "
                                      f"({plan.weight_scales[weight_key]!r} and {key!r})")
            if math.prod(shape) != 1:
                raise CheckpointError(f"{source}: {key!r} has shape {list(shape)}; a per-tensor scale "
                                      "(one value) is expected")
            plan.weight_scales[weight_key] = key
        elif key.endswith(QUANT_CONF_SUFFIX):
            raw = read_tensor(key)
            try:
                conf = json.loads(bytes(raw.to(torch.uint8).flatten().tolist()).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"{source}: {key!r} is not a JSON quantisation config ({err})") from err
            _check_format(layer, conf, source)
        plan.auxiliary_keys.add(key)

    if QUANT_METADATA_KEY in metadata:
        try:
            layers = json.loads(metadata[QUANT_METADATA_KEY]).get("layers", {})
        except (json.JSONDecodeError, AttributeError) as err:
            raise CheckpointError(f"{source}: metadata {QUANT_METADATA_KEY!r} is not valid JSON ({err})") from err
        for layer, conf in layers.items():
            _check_format(layer, conf, source)
    return plan


def dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``weight.float() * scale`` cast to ``dtype``.

    The product is formed in float32 (exact for fp8 x fp32-scalar up to one rounding) and rounded to
    ``dtype`` once, so a bf16 load equals ``(fp8.float() * scale).to(bf16)`` bit for bit.
    """
    value = weight.to(torch.float32, copy=True)  # own memory: ``weight`` may be a reused read buffer
    if scale is not None:
        value.mul_(scale.float().reshape(()))
    return value.to(dtype)


def quantize_per_tensor(weight: torch.Tensor, fp8_dtype: torch.dtype = torch.float8_e4m3fn
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fp8 weight, float32 scale)`` with ``dequantize(fp8, scale, dtype) ~ weight`` (this module's convention).

    One scale per tensor, ``max|weight| / finfo(fp8).max``, so the largest magnitude maps to the largest
    finite fp8 value and nothing saturates; the division is done in float32 and rounded to fp8 once
    (round to nearest even). An all-zero weight gets scale 1.
    """
    if fp8_dtype not in FP8_DTYPES:
        raise ValueError(f"fp8_dtype must be one of {FP8_DTYPES}; got {fp8_dtype}")
    value = weight.to(torch.float32)
    amax = value.abs().max()
    scale = torch.where(amax > 0, amax / torch.finfo(fp8_dtype).max, torch.ones_like(amax)).reshape(())
    limit = torch.finfo(fp8_dtype).max
    return (value / scale).clamp_(-limit, limit).to(fp8_dtype), scale
