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
from .errors import InputError, Problems, report_user_errors
from .frame_sources import Frames, ImageFolderFrames, RenderedPoseFrames
from .memory import DIT_DTYPES, DiTPlacement, add_memory_arguments, memory_lines, placement_from_args
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
from .video import IMAGE_SUFFIXES, VideoReadError, VideoWriter, read_image, read_video

if TYPE_CHECKING:
    from .model.config import DiTConfig
    from .pipeline import SteadyDancerPipeline

log = logging.getLogger("steadydancer_core.animate")

OUTPUT_FPS = 16
#: Canvas (pixels) keypoints are checked on when the reference image itself could not be read.
SIZE_CHECK_CANVAS = 64


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--image", required=True, help="reference image (its first frame is kept exactly)")
    io.add_argument("--poses", required=True,
                    help="driving poses: a folder of pose images (natural name order), a pose video (read at "
                         "16 fps) or a keypoint .json: the 'poses' command's keypoints.json (its aligned "
                         "keypoints, and its negative ones unless --negative-poses/--negative-seed) or plain "
                         "keypoints already aligned to the reference; keypoints are rendered here")
    io.add_argument("--negative-poses",
                    help="negative (augmented) pose images for DC-CFG, folder or video, at least as many frames "
                         "as --poses (or --frames). Default: from the keypoints when --poses is a .json, otherwise "
                         "the pose guidance term is off")
    io.add_argument("--negative-seed", type=int, default=None,
                    help="seed of the generated negative-pose augmentation (default: a 'poses' keypoints.json's "
                         "own negatives, drawn there with its --seed; other keypoint files: --seed)")
    io.add_argument("--prompt", required=True, help="text prompt")
    io.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT,
                    help="negative prompt (default: the official Wan I2V one)")
    io.add_argument("--out", required=True, help="output .mp4; frame 0 is also written as <out>_frame0.png")
    io.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (only after a successful run)")

    models = parser.add_argument_group("models")
    models.add_argument("--wan-dir", help="Diffusers-format Wan2.1-I2V folder (vae/, text_encoder/, tokenizer/, "
                                          "image_encoder/, image_processor/); 'download --dir models' puts it in "
                                          "models/Wan2.1-I2V-14B-480P-Diffusers (no default; without it the "
                                          "run stops naming what to download)")
    models.add_argument("--dit", help="SteadyDancer DiT checkpoint: .safetensors file or diffusers folder "
                                      "('download --dir models' puts the official one in models/SteadyDancer-14B; "
                                      "no default)")
    models.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    models.add_argument("--dtype", choices=sorted(DIT_DTYPES), default=None,
                        help="DiT dtype (default: bf16 on GPU, fp32 on CPU); fp8 stores the block linears in "
                             "float8 with per-tensor scales and computes in bf16")
    add_memory_arguments(models)

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--frames", default=None,
                          help=f"output frames: a count (any N >= 1; longer than --segment-frames runs as "
                               f"segments) or 'all' (every pose frame). Default: {DEFAULT_FRAMES}, or the most "
                               "4n+1 frames the poses allow")
    size = sampling.add_mutually_exclusive_group()
    size.add_argument("--size", help="exact output size WxH, multiples of 16 (e.g. 832x480)")
    size.add_argument("--max-area", type=int, default=None,
                      help=f"output pixel budget, aspect from the reference (official rule; default "
                           f"{DEFAULT_MAX_AREA} = 1024x576, the authors' README run, as 'poses' uses)")
    sampling.add_argument("--steps", type=int, default=40, help="sampling steps")
    sampling.add_argument("--seed", type=int, default=0, help="noise seed (later segments derive theirs from it)")
    sampling.add_argument("--shift", type=float, default=None,
                          help="flow shift (default: 3 when the output is 480p-sized or smaller, else 5, as the "
                               "official code)")
    sampling.add_argument("--solver", choices=SOLVER_NAMES, default="unipc",
                          help="unipc = the official flow UniPC (bh2), euler = flow Euler")
    sampling.add_argument("--w-text", type=float, default=5.0, help="text guidance scale")
    sampling.add_argument("--w-pose", type=float, default=1.0,
                          help="pose guidance scale (official convention: 0 disables the pose term)")
    sampling.add_argument("--pose-window", type=float, nargs=2, metavar=("START", "END"), default=(0.1, 0.4),
                          help="fraction of the steps where the pose term applies (strict bounds)")
    sampling.add_argument("--pose-strength-spatial", type=float, default=1.0,
                          help="scale of the pose branch's spatial features (1 = official)")
    sampling.add_argument("--pose-strength-temporal", type=float, default=1.0,
                          help="scale of the pose branch's temporal features (1 = official)")
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
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="check every input and print the plan; load nothing")
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


def load_pose_keypoints(source: str, reference_hw: tuple[int, int], seed: int, max_frames: int | None,
                        with_negative: bool, use_stored_negative: bool = True) -> tuple[Frames, Frames | None]:
    """Keypoint poses rendered on the reference canvas when a segment needs them and, if asked, their
    negative. From a ``poses`` keypoints.json: its aligned keypoints and (``use_stored_negative``) its own
    negative keypoints, the ones its negative/ pictures show; otherwise the official augmentation seeded
    by ``seed``, drawn for all frames at once so a segment's draws do not depend on where it starts."""
    from .pose.keypoints import read_pose_file
    from .pose.negative import negative_poses

    if not Path(source).is_file():
        raise InputError(f"--poses not found: {source} (expected a 'poses' keypoints.json or a keypoint file)")
    try:
        frames, part = read_pose_file(source, "aligned")
        stored_negative = (read_pose_file(source, "negative")[0]
                           if part and use_stored_negative and with_negative else None)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"--poses {source}: not a readable pose keypoint JSON ({err})") from err
    frames = frames[:max_frames]
    if not frames:
        raise InputError(f"--poses {source} holds no frames")
    if part:
        log.info("--poses %s: the 'poses' command's file; using its aligned keypoints%s", source,
                 "" if not with_negative else " and its negative keypoints" if stored_negative is not None
                 else f" and negatives drawn with seed {seed}")
    height, width = reference_hw
    positive = RenderedPoseFrames(frames, width, height)
    negative = None
    if with_negative:
        negative_frames = (stored_negative[:max_frames] if stored_negative is not None
                           else negative_poses(frames, seed)[0])
        negative = RenderedPoseFrames(negative_frames, width, height)
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
    placement: DiTPlacement


def check_negative_count(poses: int, negatives: int, requested: int | str | None) -> None:
    """Fewer negative poses than poses is an error naming both counts, unless ``--frames`` asks for at most
    as many frames as there are negatives."""
    if negatives >= poses or (isinstance(requested, int) and requested <= negatives):
        return
    raise InputError(f"--negative-poses has {negatives} frames but --poses has {poses}; give one negative pose "
                     f"per pose frame, or pass --frames N with N <= {negatives} to use the shorter length")


def prepare(args: argparse.Namespace, problems: Problems | None = None) -> Job | None:
    """All checks that need no weights. Every problem found goes into ``problems`` (each check that does not
    depend on a failed one still runs); None is returned when there were any. Without ``problems`` the
    collected problems are raised as one :class:`InputError`."""
    own = problems is None
    problems = Problems() if own else problems
    before = len(problems.messages)
    paths = device = reference = requested = None
    with problems.check():
        paths = output_paths(args.out)
        for path in paths:
            check_output_path(path, "--out", folder=False, existing_ok=args.overwrite,
                              remedy="pass --overwrite to replace it (only after a successful run)")
    with problems.check():
        device = parse_device(args.device)
    if args.steps < 1:
        problems.add(f"--steps must be >= 1; got {args.steps}")
    start, end = args.pose_window
    if not 0.0 <= start <= end <= 1.0:
        problems.add(f"--pose-window must satisfy 0 <= START <= END <= 1; got {start} {end}")
    if args.max_area is not None and args.max_area < 256:
        problems.add(f"--max-area must be at least 256 pixels; got {args.max_area}")
    size = None
    with problems.check():
        size = parse_size(args.size) if args.size else None
    with problems.check():
        try:
            reference = read_image(args.image)
        except VideoReadError as err:
            raise InputError(f"--image: {err}") from err
    with problems.check():
        requested = parse_frames(args.frames)
    # Never decode more frames than the run can use (a long driving video would otherwise be read whole).
    limit = None if requested == "all" else requested or DEFAULT_FRAMES
    poses = negative = None
    with problems.check():
        negative = load_frames(args.negative_poses, "--negative-poses", limit) if args.negative_poses else None
    with problems.check():
        if Path(args.poses).suffix.lower() == ".json":
            # Keypoints are drawn on the reference's canvas; without a readable reference the file is still checked.
            seed = args.seed if args.negative_seed is None else args.negative_seed
            canvas = reference.shape[:2] if reference is not None else (SIZE_CHECK_CANVAS, SIZE_CHECK_CANVAS)
            keypoint_poses, generated = load_pose_keypoints(args.poses, canvas, seed, limit, not args.negative_poses,
                                                            use_stored_negative=args.negative_seed is None)
            if reference is not None:
                poses = keypoint_poses
                negative = generated if not args.negative_poses else negative
        else:
            poses = load_frames(args.poses, "--poses", limit)
    frames = None
    if poses is not None and (negative is not None or not args.negative_poses):
        with problems.check():
            if negative is not None:
                check_negative_count(len(poses), len(negative), requested)
            frames = choose_frames(requested, len(poses) if negative is None else min(len(poses), len(negative)))

    plan = settings = options = None
    if reference is not None and frames is not None:
        try:
            options = LongVideoOptions(segment_frames=args.segment_frames, carry_frames=args.carry_frames,
                                       anchor=args.anchor, color_match=args.color_match)
            settings = SamplingSettings(
                frames=shortest_valid_length(min(frames, args.segment_frames)),
                max_area=args.max_area or DEFAULT_MAX_AREA, size=size, steps=args.steps, shift=args.shift,
                solver=args.solver, w_text=args.w_text, w_pose=args.w_pose, pose_window=(start, end),
                seed=args.seed, pose_strength_spatial=args.pose_strength_spatial,
                pose_strength_temporal=args.pose_strength_temporal, batch_conditions=not args.sequential_conditions)
            plan = make_long_plan(reference.shape[:2], settings, frames, options, pose_guidance=negative is not None)
        except ValueError as err:
            problems.add(str(err))
    dtype = placement = None
    if device is not None:
        with problems.check():
            dtype, placement = placement_from_args(args, device)
    if own:
        problems.raise_if_any()
    if len(problems.messages) > before or plan is None:
        return None
    return Job(reference, poses, negative, settings, options, plan, paths[0], paths[1], device, dtype, placement)


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


# ---- run ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return report_user_errors(lambda: run_parallel(args, _run))  # plain _run unless under torchrun


def _run(args: argparse.Namespace, pipeline_class: "Callable[..., SteadyDancerPipeline] | None" = None) -> int:
    problems = Problems()
    job = prepare(args, problems)
    missing = missing_weights(args)
    with problems.check():
        if missing:
            check_dit_header(args)  # a wrong --dit is said even while other weights are missing
        else:
            check_compatible(args)
    if problems:  # every input problem, and the missing weights with them, in one message
        if missing:
            problems.add(missing)
        problems.raise_if_any()

    if args.dry_run:
        print("plan (dry run, no weights loaded):")
        print(f"  reference: {args.image} ({job.reference.shape[1]}x{job.reference.shape[0]})")
        print(f"  poses: {len(job.poses)} frames" + ("" if job.negative_poses is None
                                                      else f", negative poses: {len(job.negative_poses)} frames"))
        for line in job.plan.describe():
            print(f"  {line}")
        print(f"  device {job.device}, DiT dtype {str(job.dtype)[6:]}")
        print("weight memory:")
        for line in memory_lines(args.dit, args.wan_dir, job.device, job.dtype, job.placement):
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
                             clip_dtype=torch.float16 if job.device.type == "cuda" else torch.float32,
                             dit_placement=job.placement)
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
