"""What a run leaves behind for inference: the ComfyUI LoRA, the pose modules, merged official weights."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from steadydancer_core.atomic_output import atomic_folder
from steadydancer_core.model import DiTConfig
from steadydancer_core.model.checkpoint import save_dit

from .distributed import DTYPES
from .lora import merge_into, save_comfy_lora, split_state_dict
from .model_setup import WRAPPER_PREFIX

LORA_FILE = "lora_comfy.safetensors"
POSE_FILE = "pose_modules.safetensors"
MERGED_DIR = "dit_merged"


def strip_wrapper(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(WRAPPER_PREFIX):] if k.startswith(WRAPPER_PREFIX) else k: v for k, v in state.items()}


def write_exports(target: Path, trained_state: Mapping[str, torch.Tensor], start_weights: Mapping[str, torch.Tensor], *,
                  stage: int, step: int, config: DiTConfig, lora_alpha: float, full_modules: tuple[str, ...],
                  lora_dtype: str, merged_dtype: str, single_file: bool) -> list[Path]:
    """Write a stage's exports from the gathered trainable state of the training wrapper (LoRA and fully
    trained tensors) and the start weights (official names, original precision: frozen weights are merged
    from these, not from their reduced-precision training copy). ``target`` appears complete or not at all:
    a run killed while exporting leaves the earlier folder (or none), never a half-written one."""
    trained_base, lora = split_state_dict(strip_wrapper(trained_state))
    unknown = sorted(set(trained_base) - set(start_weights))
    if unknown:
        raise KeyError(f"trained tensors without a start weight: {unknown[:4]}")
    base = {**start_weights, **trained_base}
    meta = {"stage": str(stage), "step": str(step), "base": "steadydancer" if stage > 1 else "wan2.1-i2v+pose"}
    pose = {k: v.detach().to(torch.float32).contiguous() for k, v in base.items() if k.split(".", 1)[0] in full_modules}
    dtype = DTYPES[merged_dtype]
    merged = {k: v.to(dtype) for k, v in merge_into(base, lora, lora_alpha).items()}
    names: list[str] = []
    with atomic_folder(target) as folder:
        if lora:
            save_comfy_lora(folder / LORA_FILE, lora, lora_alpha, meta, DTYPES[lora_dtype])
            names.append(LORA_FILE)
        if pose:
            save_file(pose, str(folder / POSE_FILE), metadata={"format": "steadydancer-pose-modules", **meta})
            names.append(POSE_FILE)
        save_dit(merged, folder / MERGED_DIR, config=config, sharded=True)
        names.append(MERGED_DIR)
        if single_file:
            names.append(f"steadydancer_stage{stage}.safetensors")
            save_dit(merged, folder / names[-1], config=config)
    return [target / name for name in names]
