"""Build ``metadata.jsonl`` from a folder of videos: poses from the project's pose pipeline (a
``PoseDetector``), prompts from sidecar ``<video stem>.txt`` files."""
from __future__ import annotations

from pathlib import Path

from steadydancer_core.pose.detect.protocol import PoseDetector, detect_frames
from steadydancer_core.pose.keypoints import save_pose_json
from steadydancer_core.video import VideoReadError, read_video

from .manifest import ClipEntry, write_manifest

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")


def build_manifest(videos_dir: str | Path, manifest_path: str | Path, detector: PoseDetector, *,
                   keypoints_dir: str | Path | None = None, fps: float = 16.0, frames: int = 81,
                   progress: bool = True) -> tuple[list[ClipEntry], list[dict[str, str]]]:
    """Detect poses of the first ``frames`` frames (at ``fps``) of every video and write the manifest.

    Keypoint files that already exist are reused (a rerun resumes). Unreadable videos are reported and
    left out; a missing prompt file is reported and the prompt left empty."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos folder not found: {videos_dir}")
    manifest_path = Path(manifest_path)
    keypoints_dir = Path(keypoints_dir) if keypoints_dir else manifest_path.parent / "keypoints"
    keypoints_dir.mkdir(parents=True, exist_ok=True)
    videos = sorted(p for p in videos_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) under {videos_dir}")
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
        if not keypoints.is_file():
            try:
                images, _ = read_video(video, fps=fps, max_frames=frames)
            except (VideoReadError, OSError, ValueError) as exc:
                problems.append({"id": clip_id, "reason": f"unreadable video: {exc}"})
                continue
            poses = detect_frames(detector, images, progress=progress, description=clip_id)
            tmp = keypoints.with_suffix(".tmp")
            save_pose_json(poses, tmp)
            tmp.replace(keypoints)
        sidecar = video.with_suffix(".txt")
        if sidecar.is_file():
            prompt = sidecar.read_text().strip()
        else:
            prompt = ""
            problems.append({"id": clip_id, "reason": f"no prompt file {sidecar.name}: empty prompt"})
        entries.append(ClipEntry(id=clip_id, video=video, prompt=prompt, keypoints=keypoints))
    write_manifest(manifest_path, entries)
    return entries, problems
