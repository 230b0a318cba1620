"""``poses``: reference image + driving video -> positive/negative pose pictures, keypoints and a preview.

    python -m steadydancer_core.pose.cli --ref ref.png --driving dance.mp4 --out poses/

writes ``positive/NNNN.png`` (aligned pose, the condition), ``negative/NNNN.png`` (the perturbed pose for
DC-CFG), ``keypoints.json`` (detections, aligned and negative keypoints, settings) and ``preview.mp4``
(reference | aligned pose | negative pose | driving frame). Every input is checked and the detector built
before anything is written; the outputs are written into a hidden folder and moved into ``--out`` when all
are complete, so a failed run leaves an earlier run's outputs as they were (DESIGN D13).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from ..atomic_output import atomic_folder, check_output_path
from ..conditioning import DEFAULT_MAX_AREA, SIZE_MULTIPLE, output_size
from ..errors import InputError, Problems, report_user_errors
from ..video import FRAME_COUNT_RULES, VideoReadInfo, frame_count_for_rule, read_image, read_video, write_video
from .conditions import PoseConditions, build_pose_conditions
from .detect import BACKENDS, PoseDetector, create_detector, detect_frames
from .detect.dwpose_ops import DetectionThresholds
from .keypoints import CONDITIONS_FORMAT, PoseFrame, frames_to_dict, read_pose_file

DEFAULT_FRAMES = 81
#: What the command writes into --out; --overwrite replaces these and nothing else in the folder.
POSE_OUTPUTS = ("positive", "negative", "keypoints.json", "preview.mp4")


class CliError(InputError):
    """A user-facing problem with the command's arguments or inputs."""


def generation_size(reference_hw: tuple[int, int], max_area: int) -> tuple[int, int]:
    """(width, height): the reference aspect within ``max_area`` pixels (the pipeline's size rule)."""
    try:
        height, width = output_size(reference_hw[0], reference_hw[1], max_area)
    except ValueError as error:
        raise CliError(f"--max-area {max_area}: {error}") from error
    return width, height


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x*×](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 832x480), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width == 0 or height == 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive multiples of {SIZE_MULTIPLE}, got {width}x{height}")
    return width, height


def _parse_fps(text: str) -> float | None:
    if text == "native":
        return None
    try:
        fps = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'native', got {text!r}") from None
    if fps <= 0:
        raise argparse.ArgumentTypeError(f"fps must be positive, got {text!r}")
    return fps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``poses`` command's options (shared with ``python -m steadydancer_core poses``)."""
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--ref", required=True, type=Path, help="reference image (the person to animate)")
    inputs.add_argument("--driving", type=Path, help="driving video (the motion); optional with --keypoints")
    inputs.add_argument("--keypoints", type=Path,
                        help="driving keypoints JSON instead of detecting them: this package's format, controlnet_aux "
                             "POSE_KEYPOINT, or an earlier run's keypoints.json (its driving keypoints)")
    inputs.add_argument("--ref-keypoints", type=Path,
                        help="reference keypoints JSON (first frame used; of an earlier run's keypoints.json its "
                             "reference) instead of detecting them")
    inputs.add_argument("--out", required=True, type=Path, help="output folder")
    inputs.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run's outputs in --out (positive/, negative/, keypoints.json, "
                             "preview.mp4) once the new ones are complete; other files in --out stay")

    detection = parser.add_argument_group("detection")
    detection.add_argument("--backend", choices=BACKENDS, default="dwpose",
                           help="dwpose: YOLOX-L + DWPose-L ONNX (fidelity, needs the model files); "
                                "mediapipe: offline BlazePose (optional extra)")
    detection.add_argument("--models-dir", type=Path,
                           help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (default: $STEADYDANCER_MODELS_DIR, "
                                "else models/steadydancer_pose of the ComfyUI install this repository is a custom "
                                "node of, else <repo>/models/steadydancer_pose)")
    detection.add_argument("--no-download", action="store_true",
                           help="never fetch missing DWPose files (without it they are fetched from yzd-v/DWPose when "
                                "the hub is reachable; offline the run stops at once naming them)")
    detection.add_argument("--thresholds", choices=("official", "controlnet_aux"), default="official",
                           help="DWPose box/keypoint thresholds of the official pipeline (default) or of controlnet_aux")
    detection.add_argument("--flip-test", action="store_true",
                           help="DWPose: average each crop with its mirror image, as the official mmpose config (2x pose-network time)")
    detection.add_argument("--person", choices=("score", "area"), default="score",
                           help="main person: highest detection score (official) or largest box")

    frames = parser.add_argument_group("frames and size")
    frames.add_argument("--fps", type=_parse_fps, default=16.0, help="resample the driving video to this fps, or 'native' (default 16)")
    frames.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"frame count, 4n+1 (default {DEFAULT_FRAMES}); fewer if the video is shorter")
    frames.add_argument("--frame-rule", choices=FRAME_COUNT_RULES, default="4n+1",
                        help="frame count rule (default 4n+1, as Wan needs; 'any' keeps every frame)")
    size = frames.add_mutually_exclusive_group()
    size.add_argument("--size", type=_parse_size, help="exact output WIDTHxHEIGHT (multiples of 16)")
    size.add_argument("--max-area", type=int,
                      help=f"output pixel budget with the reference's aspect (default {DEFAULT_MAX_AREA} = 1024x576, "
                           "the authors' README run and the official pose preprocessing; 'animate' uses the same)")

    modulation = parser.add_argument_group("alignment, negative pose, rendering")
    modulation.add_argument("--seed", type=int, default=0, help="seed of the per-frame negative-pose draws")
    modulation.add_argument("--no-align", action="store_true", help="draw the driving pose as detected (no retargeting to the reference)")
    modulation.add_argument("--official-align", action="store_true",
                            help="the official bone ratios without visibility checks (default: robust ratios)")
    modulation.add_argument("--align-frame", type=int, default=0, help="driving frame used to estimate the alignment (default 0)")
    modulation.add_argument("--palette", choices=("steadydancer", "openpose"), default="steadydancer",
                            help="steadydancer: the official R/B-swapped colours (default); openpose: standard colours")
    parser.add_argument("--no-preview", action="store_true", help="skip preview.mp4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_arguments(args: argparse.Namespace, problems: Problems) -> None:
    if args.driving is None and args.keypoints is None:
        problems.add("give the driving motion: --driving VIDEO and/or --keypoints FILE")
    if args.frames < 1 or frame_count_for_rule(args.frames, args.frame_rule) != args.frames:
        problems.add(f"--frames {args.frames} breaks the {args.frame_rule} rule; "
                     f"use {max(1, frame_count_for_rule(args.frames, args.frame_rule))} or "
                     f"{frame_count_for_rule(args.frames + 4, args.frame_rule)}")
    if args.max_area is not None and args.max_area < SIZE_MULTIPLE * SIZE_MULTIPLE:
        problems.add(f"--max-area must be at least {SIZE_MULTIPLE * SIZE_MULTIPLE}, got {args.max_area}")
    if args.align_frame < 0:
        problems.add(f"--align-frame must be >= 0, got {args.align_frame}")
    for name in ("ref", "driving", "keypoints", "ref_keypoints"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            problems.add(f"--{name.replace('_', '-')}: file not found: {path}")


def _load_keypoints(path: Path, what: str, part: str) -> list[PoseFrame]:
    """Frames of a keypoint file; of a ``poses`` keypoints.json (format ``CONDITIONS_FORMAT``) its ``part``."""
    try:
        frames, _ = read_pose_file(path, part)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CliError(f"{what} {path}: not a pose JSON file ({exc})") from None
    if not frames:
        raise CliError(f"{what} {path}: holds no frames")
    return frames


def _driving_frames(args: argparse.Namespace) -> tuple[np.ndarray | None, VideoReadInfo | None, list[PoseFrame] | None]:
    """The driving video's frames (if given) and the driving keypoints (if given), with equal counts."""
    video, info, keypoints = None, None, None
    if args.driving is not None:
        video, info = read_video(args.driving, fps=args.fps, max_frames=args.frames, frame_count_rule=args.frame_rule)
    if args.keypoints is not None:
        keypoints = _load_keypoints(args.keypoints, "--keypoints", "driving")
        count = frame_count_for_rule(min(len(keypoints), args.frames), args.frame_rule)
        keypoints = keypoints[:count]
        if video is not None and len(video) != count:
            raise CliError(f"mismatched frame counts: --keypoints gives {count} frames but --driving gives {len(video)} "
                           f"({info.summary()}); the keypoints must hold one frame per driving frame at the chosen fps")
    count = len(video) if video is not None else len(keypoints)
    if args.align_frame >= count:
        raise CliError(f"--align-frame {args.align_frame} is outside the {count} driving frames")
    return video, info, keypoints


def _reference_pose(args: argparse.Namespace, reference: np.ndarray, detector: PoseDetector | None) -> PoseFrame:
    if args.ref_keypoints is not None:
        frame = _load_keypoints(args.ref_keypoints, "--ref-keypoints", "reference")[0]
    else:
        frame = detector.detect(reference)
    if not any(person.body_visible.any() for person in frame.people):
        source = args.ref_keypoints or args.ref
        raise CliError(f"no person found in the reference {source}; the reference must show the person to animate")
    return frame


def _create_detector(args: argparse.Namespace) -> PoseDetector:
    if args.backend == "dwpose":
        return create_detector("dwpose", models_dir=args.models_dir, download=not args.no_download,
                               thresholds=DetectionThresholds.preset(args.thresholds), person_order=args.person,
                               flip_test=args.flip_test)
    return create_detector("mediapipe")


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def preview_frames(reference: np.ndarray, conditions: PoseConditions, driving: np.ndarray | None) -> np.ndarray:
    """Side by side at the output height: reference | aligned pose | negative pose | driving frame."""
    height = conditions.positive_images.shape[1]
    reference_panel = _fit_height(reference, height)
    frames = []
    for index, (positive, negative) in enumerate(zip(conditions.positive_images, conditions.negative_images)):
        panels = [reference_panel, positive, negative]
        if driving is not None:
            panels.append(_fit_height(driving[index], height))
        frames.append(np.concatenate(panels, axis=1))
    return np.stack(frames)


def _keypoints_document(args: argparse.Namespace, reference: PoseFrame, driving: list[PoseFrame],
                        conditions: PoseConditions, size: tuple[int, int], info: VideoReadInfo | None) -> dict[str, Any]:
    return {
        "format": CONDITIONS_FORMAT,
        "version": 1,
        "size": {"width": size[0], "height": size[1]},
        "seed": args.seed,
        "backend": args.backend if args.keypoints is None or args.ref_keypoints is None else "keypoints",
        "video": None if info is None else {
            "path": info.path, "source_fps": info.source_fps, "target_fps": info.target_fps,
            "frames_decoded": info.frames_decoded, "frames": info.output_frames,
            "source_indices": list(info.source_indices),
        },
        "reference": frames_to_dict([reference]),
        "driving": frames_to_dict(driving),
        "aligned": frames_to_dict(conditions.aligned),
        "negative": frames_to_dict(conditions.negative),
        "negative_draws": [asdict(draw) for draw in conditions.negative_draws],
    }


def _write_images(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:04d}.png", compress_level=1)


def _write_outputs(folder: Path, args: argparse.Namespace, reference: np.ndarray, video: np.ndarray | None,
                   conditions: PoseConditions, document: dict[str, Any], fps: float) -> None:
    _write_images(folder / "positive", conditions.positive_images)
    _write_images(folder / "negative", conditions.negative_images)
    (folder / "keypoints.json").write_text(json.dumps(document))
    if not args.no_preview:
        write_video(preview_frames(reference, conditions, video), folder / "preview.mp4", fps=fps)


def run(args: argparse.Namespace) -> int:
    """Run the ``poses`` command; 0 on success, 2 with a one-line message on bad input."""
    return report_user_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    # Every problem that can be found before detection is collected and reported in one message.
    problems = Problems()
    _check_arguments(args, problems)
    with problems.check():
        check_output_path(args.out, "--out", folder=True, existing_ok=args.overwrite, owned=POSE_OUTPUTS)
    reference = video = info = driving = detector = size = None
    if args.ref.is_file():
        with problems.check():
            reference = read_image(args.ref)
            size = args.size or generation_size(reference.shape[:2], args.max_area or DEFAULT_MAX_AREA)
    inputs_exist = all(path is None or path.is_file() for path in (args.driving, args.keypoints))
    frames_ok = args.frames >= 1 and frame_count_for_rule(args.frames, args.frame_rule) == args.frames
    if inputs_exist and (args.driving is not None or args.keypoints is not None) and frames_ok:
        with problems.check():
            video, info, driving = _driving_frames(args)
    if args.ref_keypoints is None or args.keypoints is None:
        with problems.check():
            detector = _create_detector(args)
    problems.raise_if_any()
    if info is not None:
        print(f"driving video: {info.summary()}", file=sys.stderr)
    reference_pose = _reference_pose(args, reference, detector)
    if driving is None:
        driving = detect_frames(detector, video, progress=not args.no_progress, description="driving poses")
    if not any(frame.people for frame in driving):
        raise CliError("no person found in any driving frame")
    conditions = build_pose_conditions(
        reference_pose, driving, size[0], size[1], seed=args.seed, align=not args.no_align,
        robust=not args.official_align, align_frame=args.align_frame, select_by=args.person, palette=args.palette,
    )
    document = _keypoints_document(args, reference_pose, driving, conditions, size, info)
    fps = 16.0 if info is None else (info.target_fps or info.source_fps)
    with atomic_folder(args.out, owned=POSE_OUTPUTS) as staging:
        _write_outputs(staging, args, reference, video, conditions, document, fps)
    print(f"wrote {len(conditions.positive_images)} positive/negative frames at {size[0]}×{size[1]} to {args.out}",
          file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadydancer_core.pose.cli", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
