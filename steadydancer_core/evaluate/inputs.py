"""What is evaluated: generated/reference clips (a video file or a folder of frames), paired by name, checked
for equal frame counts and sizes before any metric runs.

A *clip* is a video file (``VIDEO_SUFFIXES``) or a folder whose files are images (read in sorted name order).
``--generated`` and ``--reference`` are either one clip each, or two folders of clips paired by name (file stem
or folder name); every name must be on both sides. The optional first-frame image (``--image``) and driving
keypoints (``--keypoints``) follow the same rule: one file for one pair, or a folder with one per name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..errors import InputError
from ..pose.keypoints import PoseFrame, frames_from_dict
from ..video import IMAGE_SUFFIXES, read_image, read_video

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")
KEYPOINT_SUFFIXES = (".json",)


@dataclass(frozen=True)
class Pair:
    """One generated clip, its reference clip and the optional first-frame image and driving keypoints."""

    name: str
    generated: Path
    reference: Path
    image: Path | None = None
    keypoints: Path | None = None


@dataclass(frozen=True)
class FramePolicy:
    """How frames are read and made comparable.

    ``fps``: resample videos to this rate (None keeps every frame; frame folders are never resampled).
    ``frames``: compare only the first N frames (both clips must have at least N). ``size``: None = the
    two clips must have one size; ``"generated"`` = reference frames (and the first-frame image) are resized to
    the generated size; ``(W, H)`` = every frame is resized to W×H (cv2 INTER_AREA).
    """

    fps: float | None = None
    frames: int | None = None
    size: None | str | tuple[int, int] = None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_clip(path: Path) -> bool:
    """A video file, or a folder holding image files (and no clips of its own)."""
    if path.is_file():
        return path.suffix.lower() in VIDEO_SUFFIXES
    return path.is_dir() and bool(_image_files(path))


def _clips_in(folder: Path, option: str) -> dict[str, Path]:
    clips = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if is_clip(path):
            if path.stem in clips:
                raise InputError(f"{option} {folder}: two clips are named {path.stem!r} ({clips[path.stem].name}, "
                                 f"{path.name}); expected one clip per name")
            clips[path.stem] = path
    if not clips:
        raise InputError(f"{option} {folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) or frame folders found")
    return clips


def _by_name(path: Path | None, names: Sequence[str], option: str, suffixes: tuple[str, ...],
             also: str | None = None) -> dict[str, Path | None]:
    """One file per pair name from a folder (``<name><suffix>``, or ``<name>/<also>``), or the single file."""
    if path is None:
        return {name: None for name in names}
    if not path.exists():
        raise InputError(f"{option} {path} does not exist")
    if path.is_file():
        if len(names) != 1:
            raise InputError(f"{option} {path} is one file but there are {len(names)} clips to evaluate; "
                             f"give a folder with one file per clip name")
        return {names[0]: path}
    found, missing = {}, []
    for name in names:
        candidates = [path / f"{name}{suffix}" for suffix in suffixes] + ([path / name / also] if also else [])
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name)
        found[name] = hit
    if missing:
        raise InputError(f"{option} {path}: no file for {', '.join(missing)} (expected <name>{'|'.join(suffixes)}"
                         f"{f' or <name>/{also}' if also else ''})")
    return found


def pair_inputs(generated: Path, reference: Path, image: Path | None = None,
                keypoints: Path | None = None) -> list[Pair]:
    """The pairs to evaluate, or an :class:`InputError` naming what does not match."""
    for option, path in (("--generated", generated), ("--reference", reference)):
        if not path.exists():
            raise InputError(f"{option} {path} does not exist")
    if is_clip(generated) or is_clip(reference):
        for option, path in (("--generated", generated), ("--reference", reference)):
            if not is_clip(path):
                raise InputError(f"{option} {path} is not a video file or a folder of frames, but the other input "
                                 f"is one clip; give two clips or two folders of clips")
        names = [generated.stem]
        generated_clips, reference_clips = {names[0]: generated}, {names[0]: reference}
    else:
        generated_clips = _clips_in(generated, "--generated")
        reference_clips = _clips_in(reference, "--reference")
        only_generated = sorted(set(generated_clips) - set(reference_clips))
        only_reference = sorted(set(reference_clips) - set(generated_clips))
        if only_generated or only_reference:
            raise InputError("--generated and --reference clips do not pair by name: "
                             + "; ".join(part for part in (
                                 f"no reference for {', '.join(only_generated)}" if only_generated else "",
                                 f"no generated clip for {', '.join(only_reference)}" if only_reference else "",
                             ) if part))
        names = sorted(generated_clips)
    images = _by_name(image, names, "--image", IMAGE_SUFFIXES)
    keypoint_files = _by_name(keypoints, names, "--keypoints", KEYPOINT_SUFFIXES, also="keypoints.json")
    return [Pair(name, generated_clips[name], reference_clips[name], images[name], keypoint_files[name])
            for name in names]


def read_clip(path: Path, fps: float | None, what: str) -> np.ndarray:
    """RGB uint8 frames ``[T, H, W, 3]`` of a video file or a frame folder (one size required)."""
    if path.is_file():
        frames, _ = read_video(path, fps=fps, frame_count_rule="any")
        return frames
    files = _image_files(path)
    images = [read_image(file) for file in files]
    sizes = {image.shape[:2] for image in images}
    if len(sizes) > 1:
        found = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise InputError(f"{what} {path}: frames have different sizes ({found}); expected one size")
    return np.stack(images)


def _resize(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in frames])


def comparable(generated: np.ndarray, reference: np.ndarray, policy: FramePolicy, name: str,
               image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``generated``, ``reference`` (and the first-frame ``image``) with equal frame counts and one size, or an
    :class:`InputError` saying what differs and which option reconciles it."""
    if policy.frames is not None:
        short = [f"{what} has {len(frames)}" for what, frames in (("generated", generated), ("reference", reference))
                 if len(frames) < policy.frames]
        if short:
            raise InputError(f"{name}: --frames {policy.frames} but the {' and the '.join(short)} frames")
        generated, reference = generated[:policy.frames], reference[:policy.frames]
    if len(generated) != len(reference):
        raise InputError(f"{name}: mismatched frame counts: generated has {len(generated)} frames, reference has "
                         f"{len(reference)}; expected one reference frame per generated frame (use --frames N to "
                         f"compare the first N, or --fps to resample the videos)")
    if isinstance(policy.size, tuple):
        width, height = policy.size
        generated, reference = _resize(generated, width, height), _resize(reference, width, height)
    elif policy.size == "generated":
        height, width = generated.shape[1:3]
        reference = _resize(reference, width, height)
    height, width = generated.shape[1:3]
    if reference.shape[1:3] != (height, width):
        raise InputError(f"{name}: mismatched frame sizes: generated is {width}x{height}, reference is "
                         f"{reference.shape[2]}x{reference.shape[1]}; expected one size (use --size generated to "
                         f"resize the reference to the generated size, or --size WxH for both)")
    if image is not None:
        if policy.size is not None:
            image = _resize(image[None], width, height)[0]
        if image.shape[:2] != (height, width):
            raise InputError(f"{name}: mismatched sizes: the first-frame image is {image.shape[1]}x{image.shape[0]}, "
                             f"the generated frames {width}x{height} (use --size generated to resize it)")
    return generated, reference, image


def load_driving_keypoints(path: Path, frames: int, name: str) -> list[PoseFrame]:
    """The driving (aligned) keypoints of a clip: the ``aligned`` frames of a ``poses`` keypoints.json, or any pose
    JSON this package reads (its own format, controlnet_aux ``POSE_KEYPOINT``); one frame per generated frame."""
    try:
        document = json.loads(path.read_text())
        if isinstance(document, dict) and document.get("format") == "steadydancer-pose-conditions":
            document = document["aligned"]
        poses = frames_from_dict(document)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"--keypoints {path}: not a pose JSON file ({exc})") from None
    if len(poses) < frames:
        raise InputError(f"{name}: --keypoints {path} holds {len(poses)} frames but {frames} generated frames are "
                         f"evaluated; expected one driving pose per generated frame")
    return poses[:frames]

