"""Standalone SteadyDancer inference: reference image + pose frames + prompt -> video frames.

The official ``WanI2VDancer.generate`` flow (model_spec §3–§5) on our DiT and the diffusers/transformers
encoders: umT5 contexts for the prompt and the negative prompt; the VAE latents of the image clip
(reference + zero frames), of the positive and of the negative pose frames; CLIP of the reference and of
the first positive pose frame; seeded CPU noise; DC-CFG over the official flow grid; VAE decode.

Memory: the components are loaded one after the other and released when no longer needed (T5, CLIP,
the DiT), so at most the DiT and the small VAE are resident together.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .conditioning import (
    ConditioningLatents,
    PassInputs,
    call_dit,
    concat_pass_inputs,
    latent_frame_count,
    output_size,
    resize_bicubic,
    to_model_range,
    validate_frame_count,
    validate_size,
)
from .encoders import CLIPVisionEncoder, T5TextEncoder, WanVAE, pad_context
from .guidance import DCCFGConfig, DCCFGGuidance, pose_window_steps
from .model import SteadyDancerDiT
from .schedule import default_shift, official_unipc_schedule
from .solvers import make_solver

log = logging.getLogger(__name__)

#: The official I2V negative prompt (model_spec §3.4): "镜头晃动，" + Wan's shared negative prompt.
DEFAULT_NEGATIVE_PROMPT = (
    "镜头晃动，色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
DEFAULT_FRAMES = 81
DEFAULT_MAX_AREA = 480 * 832
SOLVER_NAMES = ("unipc", "euler")


@dataclass(frozen=True)
class SamplingSettings:
    """Everything that decides the sampled video besides the inputs (defaults = the authors' README)."""

    frames: int = DEFAULT_FRAMES
    max_area: int = DEFAULT_MAX_AREA
    size: tuple[int, int] | None = None  # exact (width, height); overrides max_area
    steps: int = 40
    shift: float | None = None  # None: the official default for the output size (3 at 480p, else 5)
    solver: str = "unipc"
    w_text: float = 5.0
    w_pose: float = 1.0
    pose_window: tuple[float, float] = (0.1, 0.4)
    seed: int = 0
    pose_strength_spatial: float = 1.0
    pose_strength_temporal: float = 1.0
    batch_conditions: bool = True  # evaluate the 2-3 conditionings in one batched DiT call

    def __post_init__(self) -> None:
        validate_frame_count(self.frames)
        if self.size is not None:
            validate_size(self.size[1], self.size[0])
        if self.solver not in SOLVER_NAMES:
            raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {self.solver!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        start, end = self.pose_window
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"pose window must satisfy 0 <= start <= end <= 1, got {self.pose_window}")


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, computable without weights (printed by ``--dry-run``)."""

    width: int
    height: int
    frames: int
    latent_shape: tuple[int, int, int, int]  # (16, T, H/8, W/8)
    steps: int
    shift: float
    solver: str
    pose_steps: tuple[int, ...]  # step indices that add the pose term
    pose_guidance: bool
    model_evaluations: int  # DiT sample-evaluations over the whole run

    def describe(self) -> list[str]:
        window = (f"{len(self.pose_steps)} steps ({self.pose_steps[0]}..{self.pose_steps[-1]})"
                  if self.pose_steps else "no steps")
        return [
            f"output: {self.frames} frames at {self.width}x{self.height} (WxH), 16 fps",
            f"latent: {list(self.latent_shape)}",
            f"sampling: {self.steps} steps, solver {self.solver}, shift {self.shift:g}",
            f"pose guidance: {'on, ' + window if self.pose_guidance else 'off'}",
            f"DiT evaluations: {self.model_evaluations}",
        ]


def make_plan(reference_hw: tuple[int, int], settings: SamplingSettings, pose_guidance: bool) -> RunPlan:
    """Output size, latent shape, schedule and DC-CFG window for a reference of ``(height, width)``."""
    height, width = _output_hw(reference_hw, settings)
    shift = settings.shift if settings.shift is not None else default_shift(width, height)
    guidance = _guidance(settings, pose_guidance)
    pose_steps = pose_window_steps(settings.steps, *settings.pose_window) if guidance.pose_coefficient else ()
    evaluations = sum(guidance.evaluations(i, settings.steps) for i in range(settings.steps))
    return RunPlan(width=width, height=height, frames=settings.frames,
                   latent_shape=(16, latent_frame_count(settings.frames), height // 8, width // 8), steps=settings.steps, shift=shift,
                   solver=settings.solver, pose_steps=pose_steps, pose_guidance=pose_guidance,
                   model_evaluations=evaluations)


def _output_hw(reference_hw: tuple[int, int], settings: SamplingSettings) -> tuple[int, int]:
    if settings.size is not None:
        width, height = settings.size
        return height, width
    return output_size(reference_hw[0], reference_hw[1], settings.max_area)


def _guidance(settings: SamplingSettings, pose_guidance: bool) -> DCCFGConfig:
    return DCCFGConfig(w_text=settings.w_text, w_pose=settings.w_pose if pose_guidance else 0.0,
                       start=settings.pose_window[0], end=settings.pose_window[1])


# ---- image preparation ---------------------------------------------------------------------------

def frames_to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1] (official to_tensor then (v - 0.5) / 0.5)."""
    return to_model_range(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).div(255.0))


def resize_poses_to_reference(poses: np.ndarray, reference_hw: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of every pose frame to the reference's native size (official, before the torch resize)."""
    height, width = reference_hw
    if poses.shape[1:3] == (height, width):
        return poses
    return np.stack([np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BICUBIC))
                     for p in poses])


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] (rounded, as the usual video writers do)."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


# ---- the pipeline --------------------------------------------------------------------------------

@dataclass
class Conditioning:
    """All model inputs that stay fixed during sampling (batch 1 each)."""

    latents: ConditioningLatents  # mask | image latent, pose / negative pose latents, ref_x, ref_c
    context: torch.Tensor  # [1, text_len, text_dim]
    negative_context: torch.Tensor
    clip_x: torch.Tensor  # [1, tokens, clip_dim] CLIP of the reference
    clip_c: torch.Tensor  # CLIP of the first positive pose frame
    reference_frame: np.ndarray = field(repr=False)  # uint8 [H, W, 3], the exact first output frame


class SteadyDancerPipeline:
    """Loads the components from disk on demand and runs the whole generation."""

    def __init__(self, wan_dir: str | Path, dit_path: str | Path, device: torch.device | str = "cpu",
                 dit_dtype: torch.dtype = torch.float32, text_dtype: torch.dtype | None = None,
                 clip_dtype: torch.dtype | None = None) -> None:
        self.wan_dir = Path(wan_dir)
        self.dit_path = Path(dit_path)
        self.device = torch.device(device)
        self.dit_dtype = dit_dtype
        # Official dtypes: T5 bf16, CLIP fp16, VAE fp32; by default the text/CLIP towers follow the DiT.
        self.text_dtype = text_dtype or dit_dtype
        self.clip_dtype = clip_dtype or dit_dtype
        self.vae: WanVAE | None = None

    # -- components -------------------------------------------------------------------------------

    def _vae(self) -> WanVAE:
        if self.vae is None:
            self.vae = WanVAE.from_pretrained(self.wan_dir / "vae", torch.float32, self.device)
        return self.vae

    def load_dit(self) -> SteadyDancerDiT:
        from .model.checkpoint import load_dit

        return load_dit(self.dit_path, dtype=self.dit_dtype, device=self.device)

    def _free_memory(self) -> None:
        """Return the memory of components the caller has just dropped (the next one may need it)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- conditioning -----------------------------------------------------------------------------

    def encode_prompts(self, prompt: str, negative_prompt: str, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = T5TextEncoder.from_pretrained(self.wan_dir, self.text_dtype, self.device)
        positive, negative = encoder.encode([prompt, negative_prompt], max_length=text_len)
        del encoder
        self._free_memory()
        return pad_context(positive, text_len)[None].float(), pad_context(negative, text_len)[None].float()

    def encode_clip(self, reference: torch.Tensor, first_pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP of the reference and of the first positive pose frame, both at the reference's native size."""
        encoder = CLIPVisionEncoder.from_pretrained(self.wan_dir, self.clip_dtype, self.device)
        features = encoder.encode(torch.cat([reference, first_pose]).to(self.device)).float()
        del encoder
        self._free_memory()
        return features[:1], features[1:]

    def build_conditioning(self, reference: np.ndarray, poses: np.ndarray, negative_poses: np.ndarray | None,
                           prompt: str, negative_prompt: str, plan: RunPlan, text_len: int) -> Conditioning:
        reference_hw = reference.shape[:2]
        h, w = plan.height, plan.width
        ref_native = frames_to_model_range(reference[None])
        pose_native = frames_to_model_range(resize_poses_to_reference(poses[:plan.frames], reference_hw))

        context, negative_context = self.encode_prompts(prompt, negative_prompt, text_len)
        clip_x, clip_c = self.encode_clip(ref_native, pose_native[:1])

        vae = self._vae()
        ref_resized = resize_bicubic(ref_native, h, w)  # [1, 3, h, w]
        # Image clip: the reference, then frames of zeros (mid-grey); the whole clip is encoded because
        # later latent frames see frame 0 through the causal VAE cache.
        clip = torch.zeros(1, 3, plan.frames, h, w)
        clip[:, :, 0] = ref_resized[0]
        image_latent = vae.encode(clip.to(self.device))
        pose_latent = vae.encode(self._as_clip(pose_native, h, w))
        negative_latent = None
        if negative_poses is not None:
            negative = resize_poses_to_reference(negative_poses[:plan.frames], reference_hw)
            negative_latent = vae.encode(self._as_clip(frames_to_model_range(negative), h, w))
        return Conditioning(
            latents=ConditioningLatents.from_latents(image_latent, pose_latent, negative_latent),
            context=context, negative_context=negative_context, clip_x=clip_x, clip_c=clip_c,
            reference_frame=to_uint8_frames(ref_resized.transpose(0, 1))[0],
        )

    def _as_clip(self, frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[F, 3, H, W] in [-1, 1] -> the VAE's [1, 3, F, height, width] on the pipeline device."""
        return resize_bicubic(frames, height, width).transpose(0, 1)[None].to(self.device)

    # -- sampling ---------------------------------------------------------------------------------

    def sample(self, dit: torch.nn.Module, cond: Conditioning, plan: RunPlan, settings: SamplingSettings,
               progress: bool = True) -> torch.Tensor:
        """DC-CFG over the official flow grid; returns the final latent [1, 16, T, h, w] float32."""
        schedule = official_unipc_schedule(plan.steps, plan.shift)
        solver = make_solver(plan.solver, schedule.sigmas)
        passes = cond.latents.dc_cfg_passes(
            cond.context, cond.negative_context, cond.clip_x, cond.clip_c,
            pose_strength_spatial=settings.pose_strength_spatial,
            pose_strength_temporal=settings.pose_strength_temporal)

        # The passes never change during sampling: stack each combination once, not at every step.
        stacked: dict[tuple[int, ...], PassInputs] = {}

        def model_fn(x: torch.Tensor, timestep: torch.Tensor, conditions: Sequence[PassInputs]) -> torch.Tensor:
            key = tuple(id(c) for c in conditions)
            if key not in stacked:
                stacked[key] = concat_pass_inputs(conditions)
            with torch.no_grad():
                return call_dit(dit, x.repeat(len(conditions), 1, 1, 1, 1), timestep, [stacked[key]])

        guidance = DCCFGGuidance(model_fn, *passes, config=_guidance(settings, plan.pose_guidance),
                                 batched=settings.batch_conditions)
        # Noise from a CPU generator: the same seed gives the same video on any device.
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        sample = torch.randn((1, *plan.latent_shape), generator=generator, dtype=torch.float32).to(self.device)
        for index in tqdm(range(plan.steps), desc="sampling", disable=not progress):
            timestep = schedule.timesteps[index].to(self.device)
            velocity = guidance(sample.to(self.dit_dtype), timestep, index, plan.steps)
            sample = solver.step(velocity.float(), sample)
        return sample

    # -- everything -------------------------------------------------------------------------------

    def __call__(self, reference: np.ndarray, poses: np.ndarray, prompt: str, *,
                 negative_poses: np.ndarray | None = None, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                 settings: SamplingSettings = SamplingSettings(), exact_first_frame: bool = True,
                 progress: bool = True) -> np.ndarray:
        """Generate ``settings.frames`` RGB uint8 frames [F, H, W, 3].

        ``reference`` uint8 [H, W, 3]; ``poses`` / ``negative_poses`` uint8 [N >= frames, h, w, 3] (any size:
        resized to the reference as the official code does). Without negative poses the pose term of
        DC-CFG is off (text CFG only). ``exact_first_frame`` writes the resized reference over the decoded
        frame 0 (the decode is only approximately the reference).
        """
        check_frames(reference, poses, negative_poses, settings.frames)
        plan = make_plan(reference.shape[:2], settings, negative_poses is not None)
        if negative_poses is None:
            log.warning("no negative pose frames: the DC-CFG pose term is off (text CFG only)")
        from .model.checkpoint import read_checkpoint_config

        text_len = read_checkpoint_config(self.dit_path).text_len
        cond = self.build_conditioning(reference, poses, negative_poses, prompt, negative_prompt, plan, text_len)
        dit = self.load_dit()
        latent = self.sample(dit, cond, plan, settings, progress)
        del dit
        self._free_memory()
        video = self._vae().decode(latent)[0]
        frames = to_uint8_frames(video)
        if exact_first_frame:
            frames[0] = cond.reference_frame
        return frames


def check_frames(reference: np.ndarray, poses: np.ndarray, negative_poses: np.ndarray | None, frames: int) -> None:
    """Shapes and counts of the pixel inputs, checked before anything is loaded."""
    for name, array, ndim in (("reference", reference, 3), ("poses", poses, 4), ("negative poses", negative_poses, 4)):
        if array is None:
            continue
        if array.ndim != ndim or array.shape[-1] != 3 or array.dtype != np.uint8:
            expected = "[H, W, 3]" if ndim == 3 else "[N, H, W, 3]"
            raise ValueError(f"{name} must be uint8 RGB {expected}; got {array.dtype} {tuple(array.shape)}")
    for name, array in (("pose", poses), ("negative pose", negative_poses)):
        if array is not None and array.shape[0] < frames:
            raise ValueError(f"{frames} frames requested but only {array.shape[0]} {name} frames given")
