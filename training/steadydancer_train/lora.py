"""peft LoRA on the Wan blocks, merging, and the ComfyUI-loadable export.

peft names the adapter of ``blocks.0.self_attn.q`` as ``blocks.0.self_attn.q.lora_A.default.weight``
(down, [r, in]) and ``...lora_B.default.weight`` (up, [out, r]) and moves the frozen weight to
``...q.base_layer.weight``; its scaling is ``alpha / r``. ComfyUI applies a file entry
``diffusion_model.<module>.lora_down.weight / .lora_up.weight / .alpha`` as
``W + strength * (alpha / r) * up @ down`` (``comfy/lora.py`` + ``weight_adapter/lora.py``), so exporting
peft's A/B with ``alpha = lora_alpha`` reproduces peft's merged weight exactly.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from safetensors.torch import load_file, save_file

from .config import ConfigError, LoraConfig

ADAPTER = "default"
COMFY_PREFIX = "diffusion_model."
COMFY_KEY = re.compile(
    r"^diffusion_model\.(blocks\.\d+\.(?:self_attn\.[qkvo]|cross_attn\.(?:[qkvo]|k_img|v_img)|ffn\.[02]))"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)$")


def target_regex(targets: list[str]) -> str:
    """peft full-match regex for the chosen Linear suffixes inside every block."""
    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"blocks\.\d+\.(?:{alternatives})"


def inject_lora(model: torch.nn.Module, cfg: LoraConfig) -> list[str]:
    """Add LoRA adapters (kaiming-uniform down, zero up: the model output is unchanged) and return
    the adapted module paths. Only the adapters are left trainable."""
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    unmatched = [t for t in cfg.targets if not any(re.fullmatch(target_regex([t]), n) for n in linears)]
    if unmatched or not cfg.targets:
        # A misspelt target would otherwise just train fewer modules than asked for.
        raise ConfigError(f"lora.targets {unmatched or cfg.targets} match no Linear module in the blocks "
                          "(names like self_attn.q, cross_attn.k_img, ffn.0)")
    pattern = re.compile(target_regex(cfg.targets))
    names = [n for n in linears if pattern.fullmatch(n)]
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=target_regex(cfg.targets), init_lora_weights=True, bias="none")
    inject_adapter_in_model(peft_cfg, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return names


def official_name(peft_name: str) -> str:
    """State-dict key of a LoRA-injected model -> the official key of the base weight."""
    return peft_name.replace(".base_layer.", ".")


def is_lora_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name or ".lora_magnitude" in name


def split_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Split a (full) state dict of a LoRA-injected model into official-name base weights and
    ``{module: (down, up)}``."""
    base: dict[str, torch.Tensor] = {}
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if f".lora_A.{ADAPTER}.weight" in name:
            downs[name.split(".lora_A.")[0]] = value
        elif f".lora_B.{ADAPTER}.weight" in name:
            ups[name.split(".lora_B.")[0]] = value
        elif not is_lora_key(name):
            base[official_name(name)] = value
    if set(downs) != set(ups):
        raise ValueError(f"unpaired LoRA tensors: {sorted(set(downs) ^ set(ups))[:4]}")
    return base, {k: (downs[k], ups[k]) for k in sorted(downs)}


def merge_into(base: Mapping[str, torch.Tensor], lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
               alpha: float, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """``W + strength (alpha / r) up @ down`` in fp32, result in W's dtype."""
    merged = dict(base)
    for module, (down, up) in lora.items():
        key = f"{module}.weight"
        if key not in merged:
            raise KeyError(f"LoRA module {module} has no base weight {key}")
        weight = merged[key]
        delta = (up.float() @ down.float()) * (strength * alpha / down.shape[0])
        merged[key] = (weight.float() + delta).to(weight.dtype)
    return merged


def comfy_lora_tensors(lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], alpha: float,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for module, (down, up) in lora.items():
        base = COMFY_PREFIX + module
        out[f"{base}.lora_down.weight"] = down.detach().to(dtype).contiguous()
        out[f"{base}.lora_up.weight"] = up.detach().to(dtype).contiguous()
        out[f"{base}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out


def save_comfy_lora(path: str | Path, lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], alpha: float,
                    metadata: Mapping[str, str], dtype: torch.dtype = torch.float32) -> None:
    tensors = comfy_lora_tensors(lora, alpha, dtype)
    for key in tensors:
        if not COMFY_KEY.match(key):
            raise ValueError(f"LoRA export key {key!r} is not in the ComfyUI diffusion_model.* format")
    rank = next(iter(lora.values()))[0].shape[0] if lora else 0
    meta = {"format": "comfyui-lora", "rank": str(rank), "alpha": str(alpha), **{k: str(v) for k, v in metadata.items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_comfy_lora(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Read a ``diffusion_model.*.lora_down/lora_up/alpha`` file into ``{module: (down, up, alpha)}``."""
    tensors = load_file(str(path))
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    modules = sorted({COMFY_KEY.match(k).group(1) for k in tensors if COMFY_KEY.match(k)})
    unknown = [k for k in tensors if not COMFY_KEY.match(k)]
    if unknown:
        raise ValueError(f"{path}: keys outside the ComfyUI LoRA format: {unknown[:4]}")
    for module in modules:
        base = COMFY_PREFIX + module
        down, up = tensors[f"{base}.lora_down.weight"], tensors[f"{base}.lora_up.weight"]
        alpha_t = tensors.get(f"{base}.alpha")
        # ComfyUI: no alpha key means scale 1, i.e. alpha = rank.
        alpha = float(alpha_t) if alpha_t is not None else float(down.shape[0])
        out[module] = (down, up, alpha)
    return out
