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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .conditioning import DEFAULT_MAX_AREA
from .conditioning import (
    ConditioningLatents,
    PassInputs,
    call_dit,
    concat_pass_inputs,
    latent_frame_count,
    output_size,
    resize_bicubic,
    validate_frame_count,
    validate_size,
)
from .encoders import CLIPVisionEncoder, T5TextEncoder, WanVAE, pad_context
from .frame_sources import Frames
from .official_inputs import clip_images, frames_to_model_range, poses_at_reference_size
from .guidance import DCCFGConfig, DCCFGGuidance, pose_window_steps
from .memory import DiTPlacement, load_placed_dit
from .model import SteadyDancerDiT
from .schedule import default_shift, official_unipc_schedule
from .segments import (
    DEFAULT_ANCHOR,
    DEFAULT_CARRY_FRAMES,
    DEFAULT_COLOR_MATCH,
    DEFAULT_SEGMENT_FRAMES,
    SegmentPlan,
    SegmentRequest,
    check_chain_options,
    generate_long_video,
    plan_segments,
)
from .solvers import make_solver

log = logging.getLogger(__name__)

#: The official I2V negative prompt (model_spec §3.4): "镜头晃动，" + Wan's shared negative prompt.
DEFAULT_NEGATIVE_PROMPT = (
    "镜头晃动，色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
DEFAULT_FRAMES = 81
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


@dataclass(frozen=True)
class LongVideoOptions:
    """How a video longer than one segment is chained (``segments``; defaults there)."""

    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    carry_frames: int = DEFAULT_CARRY_FRAMES
    anchor: str = DEFAULT_ANCHOR
    color_match: str = DEFAULT_COLOR_MATCH

    def __post_init__(self) -> None:
        check_chain_options(self.anchor, self.color_match)


@dataclass(frozen=True)
class LongRunPlan:
    """The segments of a run and the sampling plan of each (they differ only in length and seed)."""

    segments: SegmentPlan
    runs: tuple[RunPlan, ...]

    @property
    def model_evaluations(self) -> int:
        return sum(run.model_evaluations for run in self.runs)

    def describe(self) -> list[str]:
        first = self.runs[0]
        evaluations = {seg.length: run.model_evaluations for seg, run in zip(self.segments.segments, self.runs)}
        lines = [f"output: {self.segments.total_frames} frames at {first.width}x{first.height} (WxH), 16 fps"]
        lines += self.segments.describe(evaluations.__getitem__)
        lines += [line for line in first.describe() if not line.startswith(("output:", "DiT evaluations"))]
        lines.append(f"DiT evaluations: {self.model_evaluations}")
        return lines


def make_long_plan(reference_hw: tuple[int, int], settings: SamplingSettings, total_frames: int,
                   options: LongVideoOptions, pose_guidance: bool) -> LongRunPlan:
    """The segment chain for ``total_frames`` output frames; ``settings.frames`` is replaced by each segment's
    length and ``settings.seed`` by each segment's seed."""
    segments = plan_segments(total_frames, options.segment_frames, options.carry_frames, settings.seed)
    runs = tuple(make_plan(reference_hw, replace(settings, frames=seg.length, seed=seg.seed), pose_guidance)
                 for seg in segments.segments)
    return LongRunPlan(segments, runs)


def _output_hw(reference_hw: tuple[int, int], settings: SamplingSettings) -> tuple[int, int]:
    if settings.size is not None:
        width, height = settings.size
        return height, width
    return output_size(reference_hw[0], reference_hw[1], settings.max_area)


def _guidance(settings: SamplingSettings, pose_guidance: bool) -> DCCFGConfig:
    return DCCFGConfig(w_text=settings.w_text, w_pose=settings.w_pose if pose_guidance else 0.0,
                       start=settings.pose_window[0], end=settings.pose_window[1])


# ---- image preparation ---------------------------------------------------------------------------

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
                 clip_dtype: torch.dtype | None = None, dit_placement: DiTPlacement = DiTPlacement()) -> None:
        self.wan_dir = Path(wan_dir)
        self.dit_path = Path(dit_path)
        self.device = torch.device(device)
        self.dit_dtype = dit_dtype  # the DiT's compute dtype (its storage may be fp8, see ``dit_placement``)
        self.dit_placement = dit_placement
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
        return load_placed_dit(self.dit_path, self.dit_placement, self.dit_dtype, self.device)

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

    def encode_latents(self, kept: torch.Tensor, pose_native: torch.Tensor, negative_native: torch.Tensor | None,
                       plan: RunPlan, ref_x: torch.Tensor | None = None,
                       ref_c: torch.Tensor | None = None) -> ConditioningLatents:
        """VAE latents of one run: the image clip (``kept`` [C, 3, h, w] at the output size, then frames of
        zeros, i.e. mid-grey), the pose and the negative-pose frames ([F, 3, H, W] at any size).

        The whole image clip is encoded because later latent frames see the kept frames through the causal
        VAE cache; for the same reason the clip's latent frame 0 is the kept frame 0's own latent.
        """
        vae = self._vae()
        h, w = plan.height, plan.width
        clip = torch.zeros(1, 3, plan.frames, h, w)
        clip[0, :, :len(kept)] = kept.transpose(0, 1)
        image_latent = vae.encode(clip.to(self.device))
        pose_latent = vae.encode(self._as_clip(pose_native, h, w))
        negative_latent = None if negative_native is None else vae.encode(self._as_clip(negative_native, h, w))
        return ConditioningLatents.from_latents(image_latent, pose_latent, negative_latent, kept_frames=len(kept),
                                                ref_x=ref_x, ref_c=ref_c)

    def _as_clip(self, frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[F, 3, H, W] in [-1, 1] -> the VAE's [1, 3, F, height, width] on the pipeline device."""
        return resize_bicubic(frames, height, width).transpose(0, 1)[None].to(self.device)

    # -- sampling ---------------------------------------------------------------------------------

    def sample(self, dit: torch.nn.Module, cond: Conditioning, plan: RunPlan, settings: SamplingSettings,
               progress: bool = True, on_step: Callable[[], object] | None = None) -> torch.Tensor:
        """DC-CFG over the official flow grid; returns the final latent [1, 16, T, h, w] float32.

        ``on_step`` is called after every step (a caller's own progress bar over several runs).
        """
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
            if on_step is not None:
                on_step()
        return sample

    # -- everything -------------------------------------------------------------------------------

    def __call__(self, reference: np.ndarray, poses: np.ndarray, prompt: str, *,
                 negative_poses: np.ndarray | None = None, negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
                 settings: SamplingSettings = SamplingSettings(), exact_first_frame: bool = True,
                 progress: bool = True) -> np.ndarray:
        """Generate ``settings.frames`` RGB uint8 frames [F, H, W, 3] in one run (the official ``generate``).

        ``reference`` uint8 [H, W, 3]; ``poses`` / ``negative_poses`` uint8 [N >= frames, h, w, 3] (any size:
        resized to the reference as the official code does). Without negative poses the pose term of
        DC-CFG is off (text CFG only). ``exact_first_frame`` writes the resized reference over the decoded
        frame 0 (the decode is only approximately the reference).
        """
        frames: list[np.ndarray] = []
        self.generate(reference, poses, prompt, total_frames=settings.frames, emit=frames.append,
                      negative_poses=negative_poses, negative_prompt=negative_prompt, settings=settings,
                      options=LongVideoOptions(segment_frames=settings.frames),
                      exact_first_frame=exact_first_frame, progress=progress)
        return frames[0]

    def generate(self, reference: np.ndarray, poses: Frames, prompt: str, *, total_frames: int,
                 emit: Callable[[np.ndarray], object], negative_poses: Frames | None = None,
                 negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, settings: SamplingSettings = SamplingSettings(),
                 options: LongVideoOptions = LongVideoOptions(), exact_first_frame: bool = True,
                 progress: bool = True) -> LongRunPlan:
        """Generate ``total_frames`` frames as a chain of segments (``segments``), handing each segment's new
        uint8 frames [n, H, W, 3] to ``emit`` as it finishes; a video within one segment is the plain run.

        The umT5 contexts and the reference's CLIP features are computed once; the DiT and the VAE stay
        loaded over the chain (and the CLIP tower too with ``anchor="segment"``, which encodes every
        segment's own first frame and pose). Pose frames are read per segment.
        """
        check_frames(reference, poses, negative_poses, total_frames)
        plan = make_long_plan(reference.shape[:2], settings, total_frames, options, negative_poses is not None)
        if negative_poses is None:
            log.warning("no negative pose frames: the DC-CFG pose term is off (text CFG only)")
        from .model.checkpoint import read_checkpoint_config

        text_len = read_checkpoint_config(self.dit_path).text_len
        context, negative_context = self.encode_prompts(prompt, negative_prompt, text_len)
        reference_hw = reference.shape[:2]
        first = plan.runs[0]

        def native_poses(source: Frames | None, indices: np.ndarray) -> torch.Tensor | None:
            if source is None:
                return None
            return poses_at_reference_size(source[indices], reference_hw)

        ref_native = frames_to_model_range(reference[None])
        ref_resized = resize_bicubic(ref_native, first.height, first.width)
        reference_frame = to_uint8_frames(ref_resized.transpose(0, 1))[0]
        per_segment_clip = options.anchor == "segment" and len(plan.runs) > 1
        clip_encoder = CLIPVisionEncoder.from_pretrained(self.wan_dir, self.clip_dtype, self.device)
        reference_clip = clip_encoder.encode(clip_images(ref_native, poses[np.array([0])][0]).to(self.device)).float()
        if not per_segment_clip:
            del clip_encoder
            self._free_memory()

        dit = self.load_dit()
        reference_anchor: dict[str, torch.Tensor] = {}
        bar = tqdm(total=sum(run.steps for run in plan.runs), desc="sampling", disable=not progress)

        def render(request: SegmentRequest) -> np.ndarray:
            seg, run = request.segment, plan.runs[request.segment.index]
            bar.set_postfix_str(f"segment {seg.index + 1}/{len(plan.runs)}")
            # Segment 0 keeps the float resized reference (bit for bit the plain run); later ones their carry.
            kept = ref_resized if seg.index == 0 else frames_to_model_range(request.kept_frames)
            pose_native = native_poses(poses, request.pose_indices)
            anchor = {} if seg.index == 0 or not request.anchor_is_reference else reference_anchor
            latents = self.encode_latents(kept, pose_native, native_poses(negative_poses, request.pose_indices),
                                          run, **anchor)
            if seg.index == 0:
                reference_anchor.update(ref_x=latents.ref_x, ref_c=latents.ref_c)
            clip_features = reference_clip
            if not request.anchor_is_reference:
                # The segment's own first frame (output size) and first pose (reference size): two sizes, two calls.
                anchor_image = frames_to_model_range(request.anchor_frame[None])
                clip_features = torch.cat([clip_encoder.encode(image.to(self.device)).float()
                                           for image in (anchor_image, pose_native[:1])])
            cond = Conditioning(latents=latents, context=context, negative_context=negative_context,
                                clip_x=clip_features[:1], clip_c=clip_features[1:], reference_frame=reference_frame)
            latent = self.sample(dit, cond, run, replace(settings, frames=seg.length, seed=seg.seed),
                                 progress=False, on_step=bar.update)
            frames = to_uint8_frames(self._vae().decode(latent)[0])
            if seg.index == 0 and exact_first_frame:
                frames[0] = reference_frame
            return frames

        try:
            generate_long_video(plan.segments, reference_frame, render, emit, anchor=options.anchor,
                                color_match=options.color_match)
        finally:
            bar.close()
            dit = None  # drop the last reference so _free_memory can return the DiT's memory
            self._free_memory()
        return plan


def check_frames(reference: np.ndarray, poses: Frames, negative_poses: Frames | None, frames: int) -> None:
    """Shapes and counts of the pixel inputs, checked before anything is loaded (a lazy pose sequence is
    checked on its first frame)."""
    if reference.ndim != 3 or reference.shape[-1] != 3 or reference.dtype != np.uint8:
        raise ValueError(f"reference must be uint8 RGB [H, W, 3]; got {reference.dtype} {tuple(reference.shape)}")
    for name, source in (("pose", poses), ("negative pose", negative_poses)):
        if source is None:
            continue
        if len(source) < frames:
            raise ValueError(f"{frames} frames requested but only {len(source)} {name} frames given")
        sample = source if isinstance(source, np.ndarray) else source[np.array([0])]
        if sample.ndim != 4 or sample.shape[-1] != 3 or sample.dtype != np.uint8:
            raise ValueError(f"{name}s must be uint8 RGB [N, H, W, 3]; got {sample.dtype} {tuple(sample.shape)}")
