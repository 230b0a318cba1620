"""``animate``: reference image + pose frames + prompt -> mp4, without ComfyUI.

    python -m steadydancer_core.cli_animate --image ref.png --poses poses/ --prompt "a person dances" \\
        --wan-dir models/Wan2.1-I2V-14B-480P-Diffusers --dit models/SteadyDancer-14B --out out.mp4

Every input is checked before a weight is loaded (DESIGN D10); ``--dry-run`` stops after the checks and
prints the plan. A video longer than ``--segment-frames`` is generated as a chain of segments
(``segments``), its frames written as each segment finishes. The outputs are written to temporary
siblings and moved into place only when the run succeeded, so a failed run leaves earlier files as they
were (D13). Exit codes: 0 done, 2 bad input or missing weights, 1 failure while running.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from .atomic_output import atomic_path, check_output_path
from .encoders import missing_wan_components, missing_weights_message
from .errors import InputError, report_user_errors
from .frame_sources import Frames, ImageFolderFrames, RenderedPoseFrames
from .parallel.cli import add_parallel_arguments, run_parallel
from .pipeline import (
    DEFAULT_FRAMES,
    DEFAULT_MAX_AREA,
    DEFAULT_NEGATIVE_PROMPT,
    SOLVER_NAMES,
    LongRunPlan,
    LongVideoOptions,
    SamplingSettings,
    make_long_plan,
)
from .segments import ANCHORS, COLOR_MATCH_MODES, DEFAULT_ANCHOR, DEFAULT_CARRY_FRAMES, DEFAULT_COLOR_MATCH
from .segments import DEFAULT_SEGMENT_FRAMES, shortest_valid_length
from .video import VideoReadError, VideoWriter, read_image, read_video

if TYPE_CHECKING:
    from .model.config import DiTConfig
    from .pipeline import SteadyDancerPipeline

log = logging.getLogger("steadydancer_core.animate")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OUTPUT_FPS = 16
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: Nominal parameter counts of the Wan2.1-I2V auxiliaries, used for the memory estimate when their
#: files are not on disk yet (computed from the architectures: umT5-XXL encoder incl. its 256k x 4096
#: embedding, open-clip ViT-H/14 vision tower, Wan2.1 VAE).
NOMINAL_PARAMETERS = {"text_encoder": 5_680_000_000, "image_encoder": 632_000_000, "vae": 127_000_000}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--image", required=True, help="reference image (its first frame is kept exactly)")
    io.add_argument("--poses", required=True,
                    help="driving poses: a folder of pose images (natural name order), a pose video (read at "
                         "16 fps) or a keypoint .json (aligned to the reference; rendered here)")
    io.add_argument("--negative-poses",
                    help="negative (augmented) pose images for DC-CFG, folder or video. Default: generated from "
                         "the keypoints when --poses is a .json, otherwise the pose guidance term is off")
    io.add_argument("--negative-seed", type=int, default=None,
                    help="seed of the generated negative-pose augmentation (default: --seed)")
    io.add_argument("--prompt", required=True, help="text prompt")
    io.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT,
                    help="negative prompt (default: the official Wan I2V one)")
    io.add_argument("--out", required=True, help="output .mp4; frame 0 is also written as <out>_frame0.png")
    io.add_argument("--overwrite", action="store_true", help="replace existing output files")

    models = parser.add_argument_group("models")
    models.add_argument("--wan-dir", help="Diffusers-format Wan2.1-I2V folder (vae/, text_encoder/, tokenizer/, "
                                          "image_encoder/, image_processor/)")
    models.add_argument("--dit", help="SteadyDancer DiT checkpoint: .safetensors file or diffusers folder")
    models.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    models.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="DiT dtype (default: bf16 on GPU, fp32 on CPU)")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--frames", default=None,
                          help=f"output frames: a count (any N >= 1; longer than --segment-frames runs as "
                               f"segments) or 'all' (every pose frame). Default: {DEFAULT_FRAMES}, or the most "
                               "4n+1 frames the poses allow")
    size = sampling.add_mutually_exclusive_group()
    size.add_argument("--size", help="exact output size WxH, multiples of 16 (e.g. 832x480)")
    size.add_argument("--max-area", type=int, default=None,
                      help=f"output pixel budget, aspect from the reference (official rule; default {DEFAULT_MAX_AREA})")
    sampling.add_argument("--steps", type=int, default=40)
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--shift", type=float, default=None, help="flow shift (default: 3 at 480p, else 5)")
    sampling.add_argument("--solver", choices=SOLVER_NAMES, default="unipc")
    sampling.add_argument("--w-text", type=float, default=5.0, help="text guidance scale")
    sampling.add_argument("--w-pose", type=float, default=1.0,
                          help="pose guidance scale (official convention: 0 disables the pose term)")
    sampling.add_argument("--pose-window", type=float, nargs=2, metavar=("START", "END"), default=(0.1, 0.4),
                          help="fraction of the steps where the pose term applies (strict bounds)")
    sampling.add_argument("--pose-strength-spatial", type=float, default=1.0)
    sampling.add_argument("--pose-strength-temporal", type=float, default=1.0)
    sampling.add_argument("--sequential-conditions", action="store_true",
                          help="evaluate the conditionings one by one instead of in one batch (less memory)")
    sampling.add_argument("--decoded-first-frame", action="store_true",
                          help="keep the VAE-decoded frame 0 instead of the exact resized reference")

    long = parser.add_argument_group("long videos (segments)")
    long.add_argument("--segment-frames", type=int, default=DEFAULT_SEGMENT_FRAMES,
                      help="frames per segment, 4n+1 (81 = the official clip length)")
    long.add_argument("--carry-frames", type=int, default=DEFAULT_CARRY_FRAMES,
                      help="last output frames of a segment kept as the next segment's first frames")
    long.add_argument("--anchor", choices=ANCHORS, default=DEFAULT_ANCHOR,
                      help="identity anchor of later segments: reference = ref tokens and CLIP of the reference "
                           "in every segment; segment = each segment's own first frame and pose")
    long.add_argument("--color-match", choices=COLOR_MATCH_MODES, default=DEFAULT_COLOR_MATCH,
                      help="histogram-match each later segment to the reference or the previous segment")

    add_parallel_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="check every input and print the plan; load nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# ---- inputs ---------------------------------------------------------------------------------------

def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def load_frames(source: str, what: str, max_frames: int | None = None) -> Frames:
    """Frames uint8 [N, H, W, 3] from a folder of images (natural order, one size; read when a segment needs
    them) or a video at 16 fps (decoded now, at most ``max_frames``)."""
    path = Path(source)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        if not files:
            raise InputError(f"{what} folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return ImageFolderFrames(files[:max_frames], f"{what} {path}")
    if not path.exists():
        raise InputError(f"{what} not found: {path} (expected a folder of images or a video file)")
    frames, info = read_video(path, fps=OUTPUT_FPS, frame_count_rule="any")
    log.info("%s: %s", what, info.summary())
    return frames[:max_frames]


def load_pose_keypoints(source: str, reference_hw: tuple[int, int], seed: int,
                        max_frames: int | None, with_negative: bool) -> tuple[Frames, Frames | None]:
    """Keypoint poses rendered on the reference canvas when a segment needs them and, if asked, their seeded
    negative (official augmentation, drawn for all frames at once so a segment's draws do not depend on
    where it starts)."""
    from .pose.keypoints import load_pose_json
    from .pose.negative import negative_poses

    try:
        frames = load_pose_json(source)[:max_frames]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"--poses {source}: not a readable pose keypoint JSON ({err})") from err
    if not frames:
        raise InputError(f"--poses {source} holds no frames")
    height, width = reference_hw
    positive = RenderedPoseFrames(frames, width, height)
    negative = RenderedPoseFrames(negative_poses(frames, seed)[0], width, height) if with_negative else None
    return positive, negative


def parse_frames(text: str | None) -> int | str | None:
    """``--frames``: None (default), ``"all"`` or a positive count."""
    if text is None or text == "all":
        return text
    try:
        count = int(text)
    except ValueError:
        raise InputError(f"--frames must be a frame count or 'all'; got {text!r}") from None
    if count < 1:
        raise InputError(f"--frames must be a positive frame count or 'all'; got {count}")
    return count


def choose_frames(requested: int | str | None, available: int) -> int:
    """The output frame count: the requested count, every pose frame (``all``), or by default the most 4n+1
    frames the poses allow, at most 81 (one plain run, as the official code)."""
    if available < 1:
        raise InputError("no pose frames given")
    if requested == "all":
        return available
    if requested is not None:
        if available < requested:
            raise InputError(f"--frames {requested} needs {requested} pose frames but only {available} are given")
        return requested
    return (min(available, DEFAULT_FRAMES) - 1) // 4 * 4 + 1


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[x*X]\s*(\d+)\s*", text)
    if not match:
        raise InputError(f"--size must be WIDTHxHEIGHT (e.g. 832x480); got {text!r}")
    return int(match.group(1)), int(match.group(2))


def output_paths(out: str) -> tuple[Path, Path]:
    video = Path(out)
    if video.suffix.lower() != ".mp4":
        raise InputError(f"--out must end in .mp4; got {video}")
    return video, video.with_name(video.stem + "_frame0.png")


@dataclass
class Job:
    """Validated inputs of one run."""

    reference: np.ndarray
    poses: Frames
    negative_poses: Frames | None
    settings: SamplingSettings
    options: LongVideoOptions
    plan: LongRunPlan
    video_path: Path
    frame0_path: Path
    device: torch.device
    dtype: torch.dtype


def prepare(args: argparse.Namespace) -> Job:
    """All checks that need no weights; raises :class:`InputError` with what was expected."""
    video_path, frame0_path = output_paths(args.out)
    for path in (video_path, frame0_path):
        check_output_path(path, "--out", folder=False, existing_ok=args.overwrite,
                          remedy="pass --overwrite to replace it (only after a successful run)")
    device = parse_device(args.device)
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1; got {args.steps}")
    start, end = args.pose_window
    if not 0.0 <= start <= end <= 1.0:
        raise InputError(f"--pose-window must satisfy 0 <= START <= END <= 1; got {start} {end}")
    if args.max_area is not None and args.max_area < 256:
        raise InputError(f"--max-area must be at least 256 pixels; got {args.max_area}")

    try:
        reference = read_image(args.image)
    except VideoReadError as err:
        raise InputError(f"--image: {err}") from err
    requested = parse_frames(args.frames)
    # Never decode more frames than the run can use (a long driving video would otherwise be read whole).
    limit = None if requested == "all" else requested or DEFAULT_FRAMES
    try:
        negative = load_frames(args.negative_poses, "--negative-poses", limit) if args.negative_poses else None
        if Path(args.poses).suffix.lower() == ".json":
            seed = args.seed if args.negative_seed is None else args.negative_seed
            poses, generated = load_pose_keypoints(args.poses, reference.shape[:2], seed, limit, negative is None)
            negative = generated if negative is None else negative
        else:
            poses = load_frames(args.poses, "--poses", limit)
    except VideoReadError as err:
        raise InputError(str(err)) from err
    available = len(poses) if negative is None else min(len(poses), len(negative))
    if negative is not None and len(negative) < len(poses) and requested in (None, "all"):
        log.info("using %d frames: the negative poses are shorter than the poses", len(negative))
    frames = choose_frames(requested, available)

    try:
        options = LongVideoOptions(segment_frames=args.segment_frames, carry_frames=args.carry_frames,
                                   anchor=args.anchor, color_match=args.color_match)
        settings = SamplingSettings(
            frames=shortest_valid_length(min(frames, args.segment_frames)), max_area=args.max_area or DEFAULT_MAX_AREA,
            size=parse_size(args.size) if args.size else None, steps=args.steps, shift=args.shift,
            solver=args.solver, w_text=args.w_text, w_pose=args.w_pose, pose_window=(start, end), seed=args.seed,
            pose_strength_spatial=args.pose_strength_spatial, pose_strength_temporal=args.pose_strength_temporal,
            batch_conditions=not args.sequential_conditions)
        plan = make_long_plan(reference.shape[:2], settings, frames, options, pose_guidance=negative is not None)
    except ValueError as err:
        raise InputError(str(err)) from err

    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return Job(reference, poses, negative, settings, options, plan, video_path, frame0_path, device, dtype)


def parse_device(text: str | None) -> torch.device:
    """``--device``: a device torch knows and this machine has (cuda when no GPU is said plainly)."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"--device {text!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {text}: CUDA is not available on this machine (no GPU or a CPU-only "
                             "torch build); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise InputError(f"--device {text}: only cpu and cuda are supported")
    return device


def missing_weights(args: argparse.Namespace) -> str | None:
    """The one message listing every missing model file, or None."""
    wan_problems = missing_wan_components(args.wan_dir)
    dit_problem = None
    if not args.dit:
        dit_problem = "no --dit given"
    elif not Path(args.dit).exists():
        dit_problem = f"{args.dit} does not exist"
    if wan_problems or dit_problem:
        return missing_weights_message(wan_problems, dit_problem)
    return None


def check_dit_header(args: argparse.Namespace) -> "DiTConfig | None":
    """The --dit checkpoint's config from its header (None when there is no --dit file yet)."""
    from .model.checkpoint import read_checkpoint_config
    from .model.checkpoint_errors import CheckpointError

    if not args.dit or not Path(args.dit).exists():
        return None
    try:
        return read_checkpoint_config(args.dit)
    except CheckpointError as err:
        raise InputError(f"--dit: {err}") from err


def check_compatible(args: argparse.Namespace) -> None:
    """The DiT checkpoint is SteadyDancer and its widths fit the VAE, T5 and CLIP (headers/configs only)."""
    import json

    config = check_dit_header(args)
    root = Path(args.wan_dir)
    widths = (("text_encoder", "d_model", config.text_dim, "text_dim"),
              ("image_encoder", "hidden_size", config.clip_dim, "clip_dim"),
              ("vae", "z_dim", config.in_dim_c, "pose latent channels"))
    for folder, key, expected, what in widths:
        found = json.loads((root / folder / "config.json").read_text()).get(key)
        if found != expected:
            raise InputError(f"{root / folder} has {key}={found} but the DiT expects {what}={expected}; "
                             "are --wan-dir and --dit from the same model family?")


# ---- memory estimate ------------------------------------------------------------------------------

def _safetensors_parameters(folder: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:  # reads the header only
            for key in handle.keys():
                total += int(np.prod(handle.get_slice(key).get_shape(), dtype=np.int64))
    return total


def _dit_parameters(dit: str | None) -> tuple[int, str]:
    from .model import OFFICIAL_14B, SteadyDancerDiT
    from .model.checkpoint import read_checkpoint_config

    config, origin = OFFICIAL_14B, "nominal 14B"
    if dit and Path(dit).exists():  # its header was checked by check_dit_header
        config, origin = read_checkpoint_config(dit), "from checkpoint header"
    model = SteadyDancerDiT(config, device="meta")  # shapes only, no memory
    return sum(p.numel() for p in model.parameters()), origin


def memory_lines(args: argparse.Namespace, job: Job) -> list[str]:
    """Weight memory per component in the dtypes the run will use."""
    on_gpu = job.device.type == "cuda"
    dtypes = {"DiT": job.dtype, "text_encoder": torch.bfloat16 if on_gpu else torch.float32,
              "image_encoder": torch.float16 if on_gpu else torch.float32, "vae": torch.float32}
    dit_count, dit_origin = _dit_parameters(args.dit)
    counts = {"DiT": (dit_count, dit_origin)}
    for name in ("text_encoder", "image_encoder", "vae"):
        found = _safetensors_parameters(Path(args.wan_dir) / name) if args.wan_dir else None
        counts[name] = (found, "from files") if found is not None else (NOMINAL_PARAMETERS[name], "nominal")
    lines = []
    total = 0.0
    for name, (count, origin) in counts.items():
        gib = count * torch.empty((), dtype=dtypes[name]).element_size() / 1024**3
        total += gib
        lines.append(f"  {name}: {count / 1e6:,.1f} M params ({origin}), {str(dtypes[name])[6:]} -> {gib:.2f} GiB")
    # Components are loaded one after the other; the peak holds the DiT and the VAE.
    peak = sum(c * torch.empty((), dtype=dtypes[n]).element_size() for n, (c, _) in counts.items()
               if n in ("DiT", "vae")) / 1024**3
    lines.append(f"  all weights {total:.2f} GiB; resident at once (DiT + VAE): {peak:.2f} GiB")
    return lines


# ---- run ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return report_user_errors(lambda: run_parallel(args, _run))  # plain _run unless under torchrun


def _run(args: argparse.Namespace, pipeline_class: "Callable[..., SteadyDancerPipeline] | None" = None) -> int:
    job = prepare(args)
    missing = missing_weights(args)
    if missing:
        check_dit_header(args)  # a wrong --dit is said even while other weights are missing
    else:
        check_compatible(args)

    if args.dry_run:
        print("plan (dry run, no weights loaded):")
        print(f"  reference: {args.image} ({job.reference.shape[1]}x{job.reference.shape[0]})")
        print(f"  poses: {len(job.poses)} frames" + ("" if job.negative_poses is None
                                                      else f", negative poses: {len(job.negative_poses)} frames"))
        for line in job.plan.describe():
            print(f"  {line}")
        print(f"  device {job.device}, DiT dtype {str(job.dtype)[6:]}")
        print("weight memory:")
        for line in memory_lines(args, job):
            print(line)
        print(f"output: {job.video_path} and {job.frame0_path}")
        if missing:
            print(missing, file=sys.stderr)
            return 2
        return 0

    if missing:
        print(missing, file=sys.stderr)
        return 2
    for line in job.plan.describe():
        log.info(line)

    from PIL import Image

    from .pipeline import SteadyDancerPipeline

    make_pipeline = pipeline_class or SteadyDancerPipeline  # parallel.cli passes its DistributedPipeline
    pipeline = make_pipeline(args.wan_dir, args.dit, device=job.device, dit_dtype=job.dtype,
                             text_dtype=torch.bfloat16 if job.device.type == "cuda" else torch.float32,
                             clip_dtype=torch.float16 if job.device.type == "cuda" else torch.float32)
    # Both files appear together, and only when the whole video was generated.
    with atomic_path(job.video_path) as video_tmp, atomic_path(job.frame0_path) as frame0_tmp:
        with VideoWriter(video_tmp, fps=OUTPUT_FPS) as writer:
            def emit(frames: np.ndarray) -> None:
                if writer.frames_written == 0:
                    Image.fromarray(frames[0]).save(frame0_tmp, format="PNG")
                writer.write(frames)

            pipeline.generate(job.reference, job.poses, args.prompt, total_frames=job.plan.segments.total_frames,
                              emit=emit, negative_poses=job.negative_poses, negative_prompt=args.negative_prompt,
                              settings=job.settings, options=job.options,
                              exact_first_frame=not args.decoded_first_frame, progress=not args.no_progress)
    log.info("wrote %s (%d frames) and %s", job.video_path, writer.frames_written, job.frame0_path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadydancer_core.cli_animate",
                                     description="SteadyDancer: animate a reference image with a pose sequence.")
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
