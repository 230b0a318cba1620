"""Convert a SteadyDancer DiT checkpoint: GGUF for city96's ComfyUI-GGUF loader, or one merged safetensors file.

GGUF layout (what city96's ``loader.py`` reads and ``tools/convert.py`` + ``fix_5d_tensors.py`` write for Wan):
architecture ``wan``, bare official key names, and per tensor

* the nine 5-D Conv3d weights (``patch_embedding*``, ``condition_embedding_temporal.*``) reshaped to 4-D (GGML has
  at most 4 dims; llama.cpp's quantizer with city96's patch leaves non-2-D tensors alone) with their shape in
  ``comfy.gguf.orig_shape.<key>``, stored F32 (F16 when the source is F16): ComfyUI-GGUF has no Conv3d of its
  own, and the plain cast layer it falls back to reads only F32/F16;
* parameters outside a Linear/Conv2d/LayerNorm/GroupNorm (modulations, RMSNorm and LayerNorm2D weights), 1-D
  tensors and tensors of at most 1024 elements: F32 (F16 when the source is F16), as city96's converter keeps them;
* everything else in the requested type. ``Q8_0`` quantises the 2-D weights except the embeddings and the head
  (city96's llama.cpp rules for ``wan``) and rows that are not a multiple of 32; those stay BF16 (BF16 source)
  or F16.

K-quants (Q4_K, Q5_K, ...) are llama.cpp's job: quantise a BF16/F16 file written here with city96's patched
``llama-quantize`` (``tools/README.md`` of ComfyUI-GGUF); the 5-D weights survive it because they are 4-D here.

Both conversions stream one tensor at a time and write to a temporary sibling that replaces ``dst`` only once
complete (DESIGN D13).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..atomic_output import atomic_path
from ..errors import InputError
from .checkpoint import (METADATA_CONFIG_KEY, _config_of, _OpenCheckpoint, check_is_steadydancer,
                         check_state_dict_shapes)
from .dit import SteadyDancerDiT
from .fp8_scaled import FP8_DTYPES
from .safetensors_io import write_safetensors

GGUF_QUANTS = ("F16", "BF16", "Q8_0")
#: city96's converter keeps tensors with at most this many elements in F32.
SMALL_TENSOR_ELEMENTS = 1024
#: Tensors city96's llama.cpp patch never quantises for ``wan`` (name substrings).
WAN_UNQUANTISED = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.",
                   "img_emb.", "head.")
#: Layers whose weights ComfyUI-GGUF dequantises at use (its GGMLOps); Conv3d and bare parameters are not among them.
DEQUANTISED_LAYERS = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm)
GGUF_ARCHITECTURE = "wan"
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape.{}"


@dataclass(frozen=True)
class GGUFTensorPlan:
    """How one tensor is written: GGML type name, the shape stored in the file, the logical shape if reshaped."""

    key: str
    qtype: str
    stored_shape: tuple[int, ...]
    orig_shape: tuple[int, ...] | None


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as err:
        raise InputError("writing GGUF needs the 'gguf' package (pip install gguf)") from err
    return gguf


def layer_held_keys(model: nn.Module) -> set[str]:
    """State-dict keys whose parameter sits in a layer ComfyUI-GGUF dequantises at use."""
    owners = {id(p): m for m in model.modules() for p in m._parameters.values() if p is not None}
    return {key for key, p in model.state_dict(keep_vars=True).items()
            if isinstance(owners.get(id(p)), DEQUANTISED_LAYERS)}


def plan_gguf(shapes: dict[str, tuple[int, ...]], source_dtypes: dict[str, torch.dtype], layer_held: set[str],
              quant: str) -> list[GGUFTensorPlan]:
    """The GGML type and stored shape of every tensor (module docstring)."""
    if quant not in GGUF_QUANTS:
        raise InputError(f"--quant must be one of {', '.join(GGUF_QUANTS)}; got {quant!r}")
    plans = []
    for key, shape in shapes.items():
        full = "F16" if source_dtypes[key] == torch.float16 else "F32"
        orig_shape = None
        stored = tuple(shape)
        if len(shape) == 5:
            orig_shape, stored = stored, (*shape[:3], shape[3] * shape[4])
            qtype = full
        elif key not in layer_held or len(shape) == 1 or math.prod(shape) <= SMALL_TENSOR_ELEMENTS:
            qtype = full
        elif quant != "Q8_0":
            qtype = quant
        elif len(shape) == 2 and shape[-1] % 32 == 0 and not any(s in key for s in WAN_UNQUANTISED):
            qtype = "Q8_0"
        else:
            qtype = "BF16" if source_dtypes[key] == torch.bfloat16 else "F16"
        plans.append(GGUFTensorPlan(key, qtype, stored, orig_shape))
    return plans


def _encode(gguf: Any, tensor: torch.Tensor, plan: GGUFTensorPlan) -> np.ndarray:
    """The bytes (or F32/F16 array) written for ``tensor`` under ``plan``."""
    if plan.qtype == "F16" and tensor.dtype == torch.float16:
        data = tensor.contiguous().numpy()
    else:
        data = tensor.to(torch.float32).contiguous().numpy()
    data = data.reshape(plan.stored_shape)
    if plan.qtype == "F32":
        return data
    if plan.qtype == "F16":
        return data.astype(np.float16)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[plan.qtype])


def convert_to_gguf(src: str | Path, dst: str | Path, quant: str,
                    progress: Callable[[int, int, GGUFTensorPlan], None] | None = None) -> list[GGUFTensorPlan]:
    """Write the DiT at ``src`` (any layout :func:`load_dit` reads) as a city96-style GGUF file ``dst``.

    Returns the per-tensor plan. Raises :class:`InputError` (bad quant, not SteadyDancer) before writing.
    """
    gguf = _gguf()
    dst = Path(dst)
    if dst.suffix.lower() != ".gguf":
        raise InputError(f"the GGUF output must end in .gguf; got {dst}")
    with _OpenCheckpoint(src) as ckpt:
        shapes = ckpt.parameter_shapes
        check_is_steadydancer(shapes.keys(), str(ckpt.path))
        model = SteadyDancerDiT(_config_of(ckpt), device="meta")
        check_state_dict_shapes({k: t.shape for k, t in model.state_dict().items()}, shapes, str(ckpt.path))
        plans = plan_gguf(shapes, {k: ckpt.entries[k].info.dtype for k in shapes}, layer_held_keys(model), quant)

        writer = gguf.GGUFWriter(path=None, arch=GGUF_ARCHITECTURE)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type({"F16": gguf.LlamaFileType.MOSTLY_F16, "BF16": gguf.LlamaFileType.MOSTLY_BF16,
                              "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
        for plan in plans:
            if plan.orig_shape is not None:
                writer.add_array(ORIG_SHAPE_KEY.format(plan.key), list(plan.orig_shape))
            qtype = gguf.GGMLQuantizationType[plan.qtype]
            if plan.qtype in ("F32", "F16"):
                np_dtype = np.float32 if plan.qtype == "F32" else np.float16
                writer.add_tensor_info(plan.key, plan.stored_shape, np.dtype(np_dtype),
                                       math.prod(plan.stored_shape) * np.dtype(np_dtype).itemsize)
            else:
                byte_shape = gguf.quants.quant_shape_to_byte_shape(plan.stored_shape, qtype)
                writer.add_tensor_info(plan.key, byte_shape, np.dtype(np.uint8), math.prod(byte_shape),
                                       raw_dtype=qtype)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as temporary:
            writer.write_header_to_file(path=temporary)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            cpu = torch.device("cpu")
            for number, plan in enumerate(plans, start=1):
                writer.write_tensor_data(_encode(gguf, ckpt.tensor(plan.key, None, cpu), plan))
                if progress is not None:
                    progress(number, len(plans), plan)
            writer.close()
    return plans


def merge_to_safetensors(src: str | Path, dst: str | Path) -> Path:
    """Merge a sharded DiT (diffusers folder or its index json; any layout :func:`load_dit` reads) into one file.

    Tensors keep their stored dtypes and are streamed from the memory-mapped shards; the config goes into the
    metadata, as :func:`save_dit` writes it. fp8 sources are refused: Kijai's fp8 files are single files already.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise InputError(f"the merged output must end in .safetensors; got {dst}")
    with _OpenCheckpoint(src) as ckpt:
        shapes = ckpt.parameter_shapes
        check_is_steadydancer(shapes.keys(), str(ckpt.path))
        fp8 = [k for k in shapes if ckpt.entries[k].info.dtype in FP8_DTYPES]
        if fp8:
            raise InputError(f"{ckpt.path}: holds fp8 weights ({fp8[0]}, ...); fp8 SteadyDancer files are single "
                             "files that 'Load Diffusion Model' reads as they are, so there is nothing to merge")
        config_json = json.dumps(_config_of(ckpt).to_official_json(), indent=2)
        cpu = torch.device("cpu")
        # Zero-copy memory-mapped tensors: the writer streams them, no copy is held in memory.
        tensors = [(key, ckpt.tensor(key, None, cpu)) for key in shapes]
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as temporary:
            write_safetensors(temporary, tensors, {METADATA_CONFIG_KEY: config_json, "format": "pt"})
    return dst
