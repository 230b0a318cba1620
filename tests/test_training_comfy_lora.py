"""A trained stage-1 export inside real ComfyUI: the base model (start weights + exported pose modules)
loads through ComfyUI's loader, ``lora_comfy.safetensors`` applies through ComfyUI's own LoRA code with
every key consumed, and the patched weights equal our merged ``dit_merged/`` export.

Needs ``COMFYUI_PATH`` (see tests/comfyui/README.md); skips otherwise.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from steadydancer_core.model import TINY  # noqa: E402
from steadydancer_core.model.checkpoint import load_state_dict  # noqa: E402
from tests.comfyui import harness  # noqa: E402


def test_stage1_lora_export_applies_in_comfyui(tmp_path):
    harness.pack_module("nodes.model_registration")  # skips without COMFYUI_PATH
    import comfy.sd

    from steadydancer_train.config import config_from_dict
    from steadydancer_train.synthetic import write_arch_json, write_random_cache, write_random_wan_i2v
    from steadydancer_train.trainer import run_stage

    # TINY keeps head dim 128, which ComfyUI's shape-based config detection assumes.
    write_arch_json(tmp_path / "arch.json", TINY)
    write_random_wan_i2v(tmp_path / "wan.safetensors", TINY, seed=0)
    write_random_cache(tmp_path / "cache", TINY, 1, latent_frames=2, height=4, width=4)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_stage(config_from_dict({
            "stage": 1, "data": {"cache_dir": str(tmp_path / "cache")},
            "model": {"arch": str(tmp_path / "arch.json"), "wan_checkpoint": str(tmp_path / "wan.safetensors")},
            "lora": {"rank": 4, "alpha": 2.0}, "optim": {"steps": 2, "lr": 1e-2, "warmup_steps": 0},
            "run": {"output_dir": str(tmp_path / "out"), "lora_dtype": "fp32", "merged_dtype": "fp32"},
            "compute": {"device": "cpu", "dtype": "fp32", "strategy": "none"}}))
    finally:
        torch.set_num_threads(previous)
    final = tmp_path / "out" / "final"
    base = {**load_file(str(tmp_path / "wan.safetensors")), **load_file(str(final / "pose_modules.safetensors"))}
    merged = load_state_dict(final / "dit_merged")
    lora = load_file(str(final / "lora_comfy.safetensors"))

    patcher = comfy.sd.load_diffusion_model_state_dict(dict(base))
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0)
    modules = {k.rsplit(".", 2)[0] for k in lora if k.endswith(".lora_up.weight")}
    assert len(patched.patches) == len(modules) == 12 * TINY.num_layers  # every LoRA key was recognised
    patched.patch_model()
    try:
        state = patched.model.diffusion_model.state_dict()
        for key, value in merged.items():
            torch.testing.assert_close(state[key].float(), value, rtol=1e-5, atol=1e-6, msg=key)
    finally:
        patched.unpatch_model()
