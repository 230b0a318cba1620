"""Building the student / teacher DiTs for each stage: weight checks, new-module initialisation,
LoRA, trainable sets, dtypes, and placement on FSDP2 / DDP / one device.

Every rank builds the module tree on the meta device; rank 0 (FSDP2) or every rank (DDP / single)
reads the weights memory-mapped, and FSDP2 broadcasts rank 0's full state dict into the shards
(``set_model_state_dict(..., broadcast_from_rank0=True)``), so host RAM holds one copy, not one per rank.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from steadydancer_core.model import OFFICIAL_14B, TINY, DiTConfig, SteadyDancerDiT
from steadydancer_core.model.checkpoint import STEADYDANCER_KEY, check_state_dict_shapes, load_state_dict
from steadydancer_core.model.checkpoint_errors import CheckpointError, summarize
from steadydancer_core.model.pose_branch import DYModule, PoseAlignmentUnit, temporal_pose_module

from steadydancer_core.errors import InputError

from .config import ConfigError, LoraConfig, TrainConfig
from .distributed import DistInfo, enable_gradient_checkpointing, shard_fsdp2, wrap_ddp
from .forwards import TrainingDiT
from .lora import inject_lora

#: The SteadyDancer modules absent from Wan2.1-I2V (stage 1 trains them fully).
POSE_MODULES = ("patch_embedding_fuse", "patch_embedding_ref_c", "condition_embedding_spatial",
                "condition_embedding_temporal", "condition_embedding_align")
WRAPPER_PREFIX = "dit."


class NotWanI2VError(CheckpointError):
    """A checkpoint given as the Wan2.1-I2V base/teacher is something else."""


def resolve_arch(arch: str) -> DiTConfig:
    if arch == "official_14b":
        return OFFICIAL_14B
    if arch == "tiny":
        return TINY
    path = Path(arch)
    if not path.is_file():
        raise ConfigError(f"model.arch must be official_14b, tiny or a config.json path; got {arch!r}")
    try:
        return DiTConfig.from_official_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"model.arch {path} is not an official DiT config.json: {error}") from None


def is_pose_key(key: str) -> bool:
    return key.split(".", 1)[0] in POSE_MODULES


def expected_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = SteadyDancerDiT(config, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def read_weights(path: str, key: str) -> dict[str, torch.Tensor]:
    """Prefix-free, memory-mapped state dict (file, sharded folder, index json) of the config setting ``key``."""
    if not path:
        raise ConfigError(f"config {key} is empty; it must name the checkpoint to start from")
    if not Path(path).exists():
        raise InputError(f"{key}: checkpoint not found: {path}")
    return load_state_dict(path)


def check_wan_i2v(state: Mapping[str, torch.Tensor], config: DiTConfig, source: str) -> None:
    """Raise :class:`NotWanI2VError` unless ``state`` is a Wan2.1-I2V DiT of this architecture."""
    keys = set(state)
    if any("lora" in k for k in keys):
        raise NotWanI2VError(f"{source}: this is a LoRA file; the teacher/base must be the Wan2.1-I2V DiT")
    if STEADYDANCER_KEY in keys:
        raise NotWanI2VError(f"{source}: this is a SteadyDancer checkpoint (it has {STEADYDANCER_KEY!r}); the teacher/base "
                             "must be the original Wan2.1-I2V-14B DiT (Wan-AI/Wan2.1-I2V-14B-720P or -480P)")
    if "blocks.0.attn1.to_q.weight" in keys:
        raise NotWanI2VError(f"{source}: this is a Diffusers-format WanTransformer3DModel; use the original Wan2.1 "
                             "layout (Wan-AI/Wan2.1-I2V-14B-720P, keys 'blocks.N.self_attn.q')")
    if "img_emb.proj.0.weight" not in keys or "blocks.0.cross_attn.k_img.weight" not in keys:
        raise NotWanI2VError(f"{source}: no image conditioning ('img_emb', 'cross_attn.k_img'): a text-to-video Wan "
                             "model, not Wan2.1-I2V")
    pe = state.get("patch_embedding.weight")
    if pe is None or pe.ndim != 5 or pe.shape[1] != config.in_dim:
        raise NotWanI2VError(f"{source}: patch_embedding.weight has shape {None if pe is None else list(pe.shape)}, "
                             f"expected [{config.dim}, {config.in_dim}, 1, 2, 2] (Wan2.1-I2V's 36-channel input)")
    wan_shapes = {k: v for k, v in expected_shapes(config).items() if not is_pose_key(k)}
    check_state_dict_shapes(wan_shapes, {k: tuple(v.shape) for k, v in state.items()}, f"{source} (Wan2.1-I2V)")


def check_steadydancer(state: Mapping[str, torch.Tensor], config: DiTConfig, source: str) -> None:
    if STEADYDANCER_KEY not in state:
        raise CheckpointError(f"{source}: not a SteadyDancer DiT (no {STEADYDANCER_KEY!r}); stage 1 with "
                              "model.init=wan starts from Wan2.1-I2V, stages 2/3 need the previous stage's dit_merged/")
    check_state_dict_shapes(expected_shapes(config), {k: tuple(v.shape) for k, v in state.items()}, source)


def init_pose_modules(wan: Mapping[str, torch.Tensor], config: DiTConfig, fuse_pose_init: str, ref_c_init: str,
                      seed: int) -> dict[str, torch.Tensor]:
    """Weights for the modules Wan2.1-I2V lacks (the paper does not say how they were initialised):

    * ``patch_embedding_fuse``: input channels [0, in_dim) copy Wan's ``patch_embedding`` (the video path
      starts as the pretrained I2V embedding); the 32 pose channels are zero (``zero``, ControlNet-style,
      so step 0 reproduces Wan2.1-I2V) or PyTorch's default init (``random``); bias copied.
    * ``patch_embedding_ref_c``: Wan's weights of the 16 noise-latent channels (``copy``: pose latents are
      VAE latents too), zero, or default init; bias copied unless random.
    * the three condition modules: PyTorch default init (seeded).
    """
    out: dict[str, torch.Tensor] = {}
    w_pe, b_pe = wan["patch_embedding.weight"].float(), wan["patch_embedding.bias"].float()
    generator_state = torch.random.fork_rng(devices=[])
    with generator_state:
        torch.manual_seed(seed)
        fuse = nn.Conv3d(config.fuse_in_dim, config.dim, config.patch_size, config.patch_size)
        ref_c = nn.Conv3d(config.in_dim_c, config.dim, config.patch_size, config.patch_size)
        modules = {
            "condition_embedding_spatial": DYModule(config.in_dim_c, nn),
            "condition_embedding_temporal": temporal_pose_module(config.in_dim_c, nn),
            "condition_embedding_align": PoseAlignmentUnit(config.in_dim_c, config.out_dim, config.align_dim,
                                                           config.align_heads, nn),
        }
    fuse_w = fuse.weight.detach().clone()
    fuse_w[:, :config.in_dim] = w_pe
    if fuse_pose_init == "zero":
        fuse_w[:, config.in_dim:] = 0.0
    out["patch_embedding_fuse.weight"] = fuse_w
    out["patch_embedding_fuse.bias"] = b_pe.clone()
    if ref_c_init == "copy":
        out["patch_embedding_ref_c.weight"] = w_pe[:, :config.in_dim_c].clone()
        out["patch_embedding_ref_c.bias"] = b_pe.clone()
    elif ref_c_init == "zero":
        out["patch_embedding_ref_c.weight"] = torch.zeros_like(ref_c.weight)
        out["patch_embedding_ref_c.bias"] = torch.zeros_like(ref_c.bias)
    else:
        out["patch_embedding_ref_c.weight"] = ref_c.weight.detach().clone()
        out["patch_embedding_ref_c.bias"] = ref_c.bias.detach().clone()
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().clone()
    return out


def lora_init_tensors(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Initial LoRA values for a meta-built, LoRA-injected model (peft's own init: kaiming-uniform(a=sqrt 5)
    down = U(-1/sqrt(in), 1/sqrt(in)), zero up), drawn from a seeded generator so every rank and every
    resume agree."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            bound = 1.0 / math.sqrt(param.shape[1])
            out[name] = (torch.rand(tuple(param.shape), generator=generator) * 2 - 1) * bound
        elif ".lora_B." in name:
            out[name] = torch.zeros(tuple(param.shape))
    return out


@dataclass
class StagePlan:
    """What a stage trains and from which weights."""
    lora: bool
    full_modules: tuple[str, ...]  # trained fully next to the LoRA
    train_all: bool


def stage_plan(cfg: TrainConfig) -> StagePlan:
    if cfg.stage == 2:
        return StagePlan(lora=False, full_modules=(), train_all=True)
    modules = cfg.lora.full_modules
    if modules is None:
        modules = list(POSE_MODULES) if cfg.stage == 1 else []
    unknown = [m for m in modules if m not in POSE_MODULES and m != "patch_embedding"]
    if unknown:
        raise ConfigError(f"lora.full_modules may name {list(POSE_MODULES) + ['patch_embedding']}, got {unknown}")
    if cfg.stage == 1 and cfg.model.init == "wan" and set(modules) < set(POSE_MODULES):
        raise ConfigError(f"stage 1 from Wan2.1-I2V must train the new pose modules {list(POSE_MODULES)} "
                         f"(lora.full_modules is {modules}): they start untrained")
    return StagePlan(lora=True, full_modules=tuple(modules), train_all=False)


def mark_trainable(dit: nn.Module, plan: StagePlan) -> None:
    for name, param in dit.named_parameters():
        if plan.train_all:
            param.requires_grad_(True)
        elif ".lora_A." in name or ".lora_B." in name:
            param.requires_grad_(True)
        else:
            param.requires_grad_(name.split(".", 1)[0] in plan.full_modules)


def to_model_keys(model: nn.Module, official: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor],
                  prefix: str) -> dict[str, torch.Tensor]:
    """Official-name weights (+ LoRA init) renamed to the wrapped, peft-injected model's keys."""
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key in model.state_dict().keys():
        inner = key[len(prefix):]
        if inner in extra:
            out[key] = extra[inner]
            continue
        name = inner.replace(".base_layer.", ".")
        if name not in official:
            missing.append(name)
            continue
        out[key] = official[name]
    if missing:
        raise KeyError(f"weights lack {len(missing)} model keys: {summarize(missing)}")
    return out


def build_dit_module(config: DiTConfig, lora_cfg: LoraConfig | None, plan: StagePlan, compute_dtype: torch.dtype,
                     gradient_checkpointing: bool, pose_dropout: bool) -> TrainingDiT:
    """Meta-device module tree with LoRA, trainable flags and storage dtypes (trainable fp32, frozen compute)."""
    dit = SteadyDancerDiT(config, device="meta")
    if lora_cfg is not None:
        inject_lora(dit, lora_cfg)
    mark_trainable(dit, plan)
    for param in dit.parameters():
        param.data = param.data.to(torch.float32 if param.requires_grad else compute_dtype)
    if not pose_dropout:
        dit.condition_embedding_align.cross_attn.dropout = 0.0
    if gradient_checkpointing:
        enable_gradient_checkpointing(dit.blocks)
    return TrainingDiT(dit)


def place(wrapper: TrainingDiT, weights: Mapping[str, torch.Tensor] | None, info: DistInfo, strategy: str,
          compute_dtype: torch.dtype, trainable: bool) -> nn.Module:
    """Materialise a meta-built wrapper on the device with ``weights`` (model keys; rank 0 only under FSDP2)."""
    if strategy == "fsdp2":
        shard_fsdp2(wrapper, wrapper.dit.blocks, info, compute_dtype)
        wrapper.to_empty(device=info.device)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
        set_model_state_dict(wrapper, dict(weights) if info.is_main else {}, options=options)
        return wrapper
    wrapper.to_empty(device=info.device)
    if weights is None:
        raise ValueError("weights are required on every rank without FSDP2")
    wrapper.load_state_dict(dict(weights), strict=True)
    if strategy == "ddp" and trainable:
        return wrap_ddp(wrapper, info)
    return wrapper


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
