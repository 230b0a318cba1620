"""Teach ComfyUI's own loaders to recognise SteadyDancer checkpoints (DESIGN D2).

Registers :class:`SteadyDancerConfig` at the front of ``comfy.supported_models.models`` so core
``Load Diffusion Model`` (and GGUF / fp8-scaled loading, LoRA loaders, ModelSampling nodes, every
sampler) builds :class:`SteadyDancerModel`, whose ``diffusion_model`` is the core DiT. Plain Wan
checkpoints lack ``patch_embedding_fuse.weight`` and keep loading as core ``WAN21_I2V``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

import comfy.conds
import comfy.model_base
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models
from comfy.ldm.modules.attention import optimized_attention

from ..steadydancer_core import schedule
from ..steadydancer_core.model import SteadyDancerDiT
from ..steadydancer_core.model.config import DiTConfig
from . import cond_keys

#: The one key that tells a SteadyDancer DiT from a plain Wan2.1 I2V DiT.
STEADYDANCER_MARKER_KEY = "patch_embedding_fuse.weight"


def dit_config_from_unet_config(unet_config: dict[str, Any]) -> DiTConfig:
    """Translate ComfyUI's detected ``unet_config`` (plus our extra shape fields) into a DiTConfig.

    ComfyUI's Wan detection fixes ``freq_dim`` at 256 and never reads ``text_dim``; the exact
    values are filled in by :meth:`SteadyDancerConfig.get_model` from the state dict.
    """
    fields = {name: unet_config[name] for name in
              ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim", "in_dim",
               "in_dim_c", "out_dim", "clip_dim", "eps", "align_dim")
              if name in unet_config}
    if "patch_size" in unet_config:
        fields["patch_size"] = tuple(unet_config["patch_size"])
    return DiTConfig(**fields)


def _shape(state_dict: dict[str, Any], key: str) -> tuple[int, ...]:
    tensor = state_dict[key]
    # GGUF tensors (city96's loader) keep their logical shape in ``tensor_shape``.
    return tuple(getattr(tensor, "tensor_shape", tensor.shape))


class SteadyDancerComfyDiT(SteadyDancerDiT):
    """The core DiT, built from ComfyUI's ``unet_config`` and called the way ComfyUI calls Wan.

    ComfyUI passes ``x`` with the I2V mask and image latent already concatenated (36 channels),
    the CLIP feature of the reference as ``clip_fea`` and every other extra condition under the
    name :meth:`SteadyDancerModel.extra_conds` gave it.
    """

    def __init__(self, device: torch.device | None = None, dtype: torch.dtype | None = None,
                 operations: Any = None, **unet_config: Any) -> None:
        super().__init__(dit_config_from_unet_config(unet_config), operations=operations,
                         attention=self._comfy_attention, dtype=dtype, device=device)
        self._transformer_options: dict[str, Any] = {}

    def _comfy_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        # transformer_options carries ComfyUI's attention overrides (optimized_attention_override).
        return optimized_attention(q, k, v, heads=heads, transformer_options=self._transformer_options)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                clip_fea: torch.Tensor | None = None, time_dim_concat: torch.Tensor | None = None,
                transformer_options: dict[str, Any] = {}, **kwargs: Any) -> torch.Tensor:
        # As core WanModel.forward: through the DIFFUSION_MODEL wrappers (EasyCache and other packs hook here).
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)

    def _forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                 clip_fea: torch.Tensor | None = None, time_dim_concat: torch.Tensor | None = None,
                 transformer_options: dict[str, Any] = {}, **kwargs: Any) -> torch.Tensor:
        if time_dim_concat is not None:
            raise ValueError("SteadyDancer takes no time_dim_concat latent (its reference frames arrive as "
                             "ref_x/ref_c from 'SteadyDancer Image To Video')")
        return self.forward_orig(x, timestep, context, clip_fea=clip_fea, transformer_options=transformer_options,
                                 **kwargs)

    def forward_orig(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                     clip_fea: torch.Tensor | None = None, freqs: torch.Tensor | None = None,
                     transformer_options: dict[str, Any] = {}, **kwargs: Any) -> torch.Tensor:
        """Core Wan's ``forward_orig`` signature; the pose inputs arrive in ``kwargs``.

        ``freqs`` must be None: the DiT builds its RoPE itself, over the video plus the two reference
        token frames, which a Wan RoPE table for the video alone cannot describe.
        """
        if freqs is not None:
            raise ValueError("SteadyDancer computes its own RoPE (video + ref_x + ref_c token frames); "
                             "forward_orig must be called with freqs=None")
        missing = [name for name in ("pose_latents", "ref_x", "ref_c", "clip_fea_c") if kwargs.get(name) is None]
        if clip_fea is None:
            missing.insert(0, "clip_fea")
        if missing:
            raise ValueError(
                "SteadyDancer model called without its conditioning "
                f"({', '.join(missing)} missing): build the conditionings with the "
                "'SteadyDancer Image To Video' node (plain Wan I2V conditioning lacks the pose inputs)")
        self._transformer_options = transformer_options
        try:
            return SteadyDancerDiT.forward(
                self, x, t, context, clip_fea_x=clip_fea, clip_fea_c=kwargs["clip_fea_c"],
                pose_latents=kwargs["pose_latents"], ref_x=kwargs["ref_x"], ref_c=kwargs["ref_c"],
                pose_strength_spatial=kwargs.get("pose_strength_spatial", 1.0),
                pose_strength_temporal=kwargs.get("pose_strength_temporal", 1.0),
                block_replacements=comfy_block_replacements(transformer_options))
        finally:
            self._transformer_options = {}


def comfy_block_replacements(transformer_options: dict[str, Any]) -> dict[int, Any]:
    """``patches_replace["dit"][("double_block", i)]`` as the core DiT's block replacements.

    Core Wan hands a block patch ``{"img", "txt", "vec", "pe", "transformer_options"}`` and
    ``{"original_block"}``; the core DiT's args carry the same entries (``pe`` = its RoPE tables, plus
    ``context_img_len``), so only ``transformer_options`` is added here.
    """
    patches = transformer_options.get("patches_replace", {}).get("dit", {})

    def adapt(patch: Any) -> Any:
        return lambda args, extra: patch({**args, "transformer_options": transformer_options}, extra)

    return {index: adapt(patch) for (kind, index), patch in patches.items() if kind == "double_block"}


def check_condition_frames(frames: int, image_condition: torch.Tensor | None, pose_latents: torch.Tensor | None,
                           in_context_window: bool) -> None:
    """Refuse conditionings whose latent frame count differs from the sample's, naming the cause.

    In a core context window this is a ComfyUI that slices only the noise per window: before 0.4 its
    ``get_resized_cond`` slices no 5-D conditioning (Wan I2V's ``c_concat``, our pose latents), so every
    window would get the whole video's conditions.
    """
    for name, condition in (("I2V image condition", image_condition), ("pose latent", pose_latents)):
        if condition is None or condition.shape[2] == frames:
            continue
        if in_context_window:
            raise ValueError(
                f"SteadyDancer under context windows: the window has {frames} latent frames but the {name} "
                f"has {condition.shape[2]}. This ComfyUI version cannot slice SteadyDancer's pose and image "
                "conditionings per window (ComfyUI before 0.4 slices only the noise). Use 'SteadyDancer Long "
                "Video' (segments that keep the reference), or ComfyUI 0.4 or later, where context windows run "
                "but only the first window keeps the reference frame.")
        raise ValueError(
            f"SteadyDancer: the latent has {frames} frames but the {name} has {condition.shape[2]}: the latent "
            "and the conditionings must come from the same 'SteadyDancer Image To Video' (same length)")


class SteadyDancerModel(comfy.model_base.WAN21):
    """ComfyUI model wrapper: Wan2.1 I2V handling of mask/image latent plus the pose inputs."""

    def __init__(self, model_config: Any, model_type: comfy.model_base.ModelType = comfy.model_base.ModelType.FLOW,
                 device: torch.device | None = None) -> None:
        # Skip WAN21.__init__ (it hard-codes the core WanModel) and build our DiT instead.
        comfy.model_base.BaseModel.__init__(self, model_config, model_type, device=device,
                                            unet_model=SteadyDancerComfyDiT)
        # ComfyUI 0.3.64 leaves the DiT in training mode (0.8.0 calls eval()); the alignment unit
        # has training-only dropout, so inference must be in eval mode on every version.
        self.diffusion_model.eval()
        self.image_to_video = True

    def load_model_weights(self, sd: dict[str, Any], unet_prefix: str = "") -> "SteadyDancerModel":
        unpack_gguf_tensors_without_layer(self.diffusion_model, sd, unet_prefix)
        return super().load_model_weights(sd, unet_prefix)

    def _apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat: torch.Tensor | None = None,
                     c_crossattn: torch.Tensor | None = None, control: Any = None,
                     transformer_options: dict[str, Any] = {}, **kwargs: Any) -> torch.Tensor:
        # Before BaseModel concatenates c_concat onto x, where a frame mismatch is a bare "Sizes of tensors
        # must match" RuntimeError.
        check_condition_frames(x.shape[2], c_concat, kwargs.get("pose_latents"),
                               transformer_options.get("context_window") is not None)
        return super()._apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def extra_conds(self, **kwargs: Any) -> dict[str, Any]:
        # Before WAN21.concat_cond, which pads the mask to the noise's length and fails on the image latent.
        check_condition_frames(kwargs["noise"].shape[2], kwargs.get("concat_latent_image"),
                               kwargs.get(cond_keys.POSE_LATENT), in_context_window=False)
        out = super().extra_conds(**kwargs)
        for cond_key, model_key in ((cond_keys.POSE_LATENT, "pose_latents"),
                                    (cond_keys.REF_IMAGE_LATENT, "ref_x"),
                                    (cond_keys.REF_POSE_LATENT, "ref_c")):
            latent = kwargs.get(cond_key)
            if latent is not None:
                out[model_key] = comfy.conds.CONDRegular(self.process_latent_in(latent))
        pose_clip = kwargs.get(cond_keys.POSE_CLIP_VISION_OUTPUT)
        if pose_clip is not None:
            out["clip_fea_c"] = comfy.conds.CONDRegular(pose_clip.penultimate_hidden_states)
        for cond_key, model_key in ((cond_keys.POSE_STRENGTH_SPATIAL, "pose_strength_spatial"),
                                    (cond_keys.POSE_STRENGTH_TEMPORAL, "pose_strength_temporal")):
            if kwargs.get(cond_key) is not None:
                out[model_key] = comfy.conds.CONDConstant(float(kwargs[cond_key]))
        return out


def _dequantises_at_use(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a layer of custom operations (ComfyUI-GGUF's GGMLOps) that unpacks its weights.

    Plain ``comfy.ops`` cast layers only change dtype/device: ComfyUI-GGUF's ops have no Conv3d and fall back
    to ``manual_cast.Conv3d``, and a bare parameter has no layer at all.
    """
    if not hasattr(module, "comfy_cast_weights"):
        return False
    return type(module) is not getattr(comfy.ops.manual_cast, type(module).__name__, None)


def unpack_gguf_tensors_without_layer(dit: torch.nn.Module, state_dict: dict[str, Any], prefix: str = "") -> None:
    """Make a GGUF state dict loadable where ComfyUI-GGUF's layers do not reach (in place).

    A quantised (packed) tensor's storage shape differs from its logical ``shape``. Inside ComfyUI-GGUF's
    layers it is dequantised at use. A bare parameter (the alignment unit's packed in-projection, LayerNorm2D,
    modulations, norm weights) would receive the packed bytes, so it is dequantised here, once, with the
    ``gguf`` library (these tensors are small: 49,152 elements for the in-projection). A Conv3d weight
    cannot be: ComfyUI-GGUF's ops have no Conv3d and its fallback only casts, so such a file is refused by name.
    """
    modules = dict(dit.named_modules())
    for stored_key, tensor in list(state_dict.items()):
        if not stored_key.startswith(prefix) or not isinstance(tensor, torch.Tensor):
            continue
        if tuple(torch.Tensor.size(tensor)) == tuple(tensor.shape):
            continue  # a plain tensor
        key = stored_key[len(prefix):]
        owner = modules.get(key.rpartition(".")[0])
        if owner is not None and _dequantises_at_use(owner):
            continue
        qtype = getattr(tensor, "tensor_type", None)
        if owner is not None and hasattr(owner, "comfy_cast_weights"):
            raise ValueError(
                f"SteadyDancer GGUF: {key} is stored as {getattr(qtype, 'name', 'a packed type')}, but it is used by "
                f"a {type(owner).__name__} layer, which ComfyUI-GGUF does not dequantise. Such tensors must be F32 "
                "or F16 in the file; convert the model with 'python -m steadydancer_core convert --to gguf'.")
        import gguf  # ComfyUI-GGUF's own dependency: present whenever its tensors are

        raw = torch.Tensor.numpy(torch.Tensor.detach(tensor).cpu())
        values = gguf.quants.dequantize(raw, qtype)
        state_dict[stored_key] = torch.from_numpy(values.astype("float32")).reshape(tuple(tensor.shape))


def check_fp8_scales_understood(state_dict: dict[str, Any], scaled_fp8: Any) -> None:
    """Refuse old-style scaled-fp8 files whose ``scaled_fp8`` marker is missing.

    ComfyUI applies ``<layer>.scale_weight`` only when the marker tensor is present (0.3.64 then
    sets ``scaled_fp8`` on the config, 0.8.0 converts the scales to its quant format); without it
    the fp8 weights would be used unscaled, a silently wrong model.
    """
    unscaled = [key for key in state_dict if key.endswith(".scale_weight")]
    if unscaled and scaled_fp8 is None:
        raise ValueError(
            f"this SteadyDancer file stores fp8 weights with per-layer scales ({unscaled[0]}, ...) but has no "
            "'scaled_fp8' marker tensor, so ComfyUI would ignore the scales. Use the file as published "
            "(Kijai's *_fp8_e4m3fn_scaled_KJ.safetensors carries the marker) or a bf16/fp16 file.")


class SteadyDancerConfig(comfy.supported_models.WAN21_I2V):
    """Supported-model entry: a Wan2.1 I2V state dict that also has the fused pose patch embedding."""

    required_keys = {STEADYDANCER_MARKER_KEY}
    # The authors' default flow shift (their README runs 1024x576 at shift 5), not Wan2.1's generic 8.0 that
    # WAN21_I2V inherits from WAN21_T2V: a graph without ModelSamplingSD3 then samples as the official code.
    sampling_settings = {"shift": schedule.DEFAULT_SHIFT}

    def get_model(self, state_dict: dict[str, Any], prefix: str = "", device: torch.device | None = None) -> SteadyDancerModel:
        check_fp8_scales_understood(state_dict, vars(self).get("scaled_fp8"))
        # Fields ComfyUI's Wan detection does not read (or fixes to the 14B value).
        self.unet_config["freq_dim"] = _shape(state_dict, f"{prefix}time_embedding.0.weight")[1]
        self.unet_config["text_dim"] = _shape(state_dict, f"{prefix}text_embedding.0.weight")[1]
        self.unet_config["clip_dim"] = _shape(state_dict, f"{prefix}img_emb.proj.0.weight")[0]
        self.unet_config["in_dim_c"] = _shape(state_dict, f"{prefix}patch_embedding_ref_c.weight")[1]
        self.unet_config["align_dim"] = _shape(state_dict, f"{prefix}condition_embedding_align.proj_p.weight")[0]
        return SteadyDancerModel(self, device=device)


def is_steadydancer_model(model_patcher: Any) -> bool:
    """True when a MODEL socket value holds a SteadyDancer DiT (not plain Wan or anything else)."""
    return isinstance(getattr(model_patcher, "model", None), SteadyDancerModel)


def require_steadydancer_model(model_patcher: Any, node_name: str) -> None:
    """Raise a clear error when a SteadyDancer node is given some other model."""
    if not is_steadydancer_model(model_patcher):
        inner = getattr(model_patcher, "model", model_patcher)
        raise ValueError(
            f"{node_name} needs a SteadyDancer model, got {type(inner).__name__}. Load the SteadyDancer DiT "
            "file with 'Load Diffusion Model'; a plain Wan2.1 I2V file has no pose branch "
            f"({STEADYDANCER_MARKER_KEY} is missing from its keys).")


def register() -> None:
    """Put :class:`SteadyDancerConfig` first in ComfyUI's model registry (idempotent).

    ComfyUI may import the pack more than once (reloads, tests), each time with fresh class
    objects, so earlier registrations are recognised by name and replaced.
    """
    registry = comfy.supported_models.models
    registry[:] = [cfg for cfg in registry if cfg.__name__ != SteadyDancerConfig.__name__]
    registry.insert(0, SteadyDancerConfig)
    logging.debug("SteadyDancer model config registered with ComfyUI")
