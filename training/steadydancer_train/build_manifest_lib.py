"""Build ``metadata.jsonl`` from a folder of videos: poses from the project's pose pipeline (a
``PoseDetector``), prompts from sidecar ``<video stem>.txt`` files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steadydancer_core.atomic_output import atomic_path
from steadydancer_core.errors import InputError
from steadydancer_core.pose.detect.protocol import PoseDetector, detect_frames
from steadydancer_core.pose.keypoints import PoseFrame, frames_to_dict
from steadydancer_core.video import VideoReadError, read_video

from .manifest import ClipEntry, write_manifest

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")
#: Key of the detection settings inside a keypoints file (the pose JSON readers ignore it).
DETECTION_KEY = "detection"


def detection_settings(detector: PoseDetector, fps: float, frames: int) -> dict[str, Any]:
    """What a keypoints file was computed with; a cached file is reused only when all of it matches."""
    return {"backend": detector.name, "fps": float(fps), "frames": int(frames)}


def _cached_settings(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()).get(DETECTION_KEY)
    except (OSError, ValueError, AttributeError):  # unreadable or not an object: recompute it
        return None


def _save_keypoints(path: Path, poses: list[PoseFrame], settings: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps({**frames_to_dict(poses), DETECTION_KEY: settings}))


def find_videos(videos_dir: str | Path) -> list[Path]:
    """The videos under ``videos_dir`` (recursively, sorted); InputError when there are none."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise InputError(f"videos folder not found: {videos_dir}")
    videos = sorted(p for p in videos_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise InputError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {videos_dir}")
    return videos


def build_manifest(videos_dir: str | Path, manifest_path: str | Path, detector: PoseDetector, *,
                   keypoints_dir: str | Path | None = None, fps: float = 16.0, frames: int = 81,
                   progress: bool = True) -> tuple[list[ClipEntry], list[dict[str, str]]]:
    """Detect poses of the first ``frames`` frames (at ``fps``) of every video and write the manifest.

    Keypoint files that already exist are reused when they were detected with the same backend, fps and
    frame count (a rerun resumes); others are recomputed. Unreadable videos are reported and left out; a
    missing prompt file is reported and the prompt left empty. The manifest is written atomically."""
    videos_dir = Path(videos_dir)
    videos = find_videos(videos_dir)
    manifest_path = Path(manifest_path)
    keypoints_dir = Path(keypoints_dir) if keypoints_dir else manifest_path.parent / "keypoints"
    settings = detection_settings(detector, fps, frames)
    entries: list[ClipEntry] = []
    problems: list[dict[str, str]] = []
    used: set[str] = set()
    for video in videos:
        clip_id = str(video.relative_to(videos_dir).with_suffix("")).replace("/", "__")
        if clip_id in used:
            problems.append({"id": clip_id, "reason": f"two videos map to the id {clip_id!r}; {video} left out"})
            continue
        used.add(clip_id)
        keypoints = keypoints_dir / f"{clip_id}.json"
        if _cached_settings(keypoints) != settings:
            try:
                images, _ = read_video(video, fps=fps, max_frames=frames)
            except (VideoReadError, OSError, ValueError) as exc:
                problems.append({"id": clip_id, "reason": f"unreadable video: {exc}"})
                continue
            _save_keypoints(keypoints, detect_frames(detector, images, progress=progress, description=clip_id),
                            settings)
        sidecar = video.with_suffix(".txt")
        if sidecar.is_file():
            prompt = sidecar.read_text().strip()
        else:
            prompt = ""
            problems.append({"id": clip_id, "reason": f"no prompt file {sidecar.name}: empty prompt"})
        entries.append(ClipEntry(id=clip_id, video=video, prompt=prompt, keypoints=keypoints))
    write_manifest(manifest_path, entries)
    return entries, problems
