"""The clip manifest ``metadata.jsonl``: one JSON object per line.

Fields: ``video`` (path, relative to the manifest's folder or absolute), ``prompt`` (text),
``keypoints`` (pose JSON of the clip's frames at the training fps, ``steadydancer_core.pose`` format or a
controlnet_aux POSE_KEYPOINT file; needed for stage 3), optional ``pose_video`` (an already rendered pose
video used instead of rendering the keypoints), optional ``id`` (default: the video's file stem),
optional ``height``/``width`` (training size in pixels, multiples of 16; default from ``data.max_area``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadydancer_core.atomic_output import atomic_path
from steadydancer_core.errors import InputError

KNOWN_FIELDS = {"id", "video", "prompt", "keypoints", "pose_video", "height", "width"}


@dataclass(frozen=True)
class ClipEntry:
    id: str
    video: Path
    prompt: str
    keypoints: Path | None = None
    pose_video: Path | None = None
    height: int | None = None
    width: int | None = None

    def to_json(self, base: Path) -> dict[str, Any]:
        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            try:
                return str(p.relative_to(base))
            except ValueError:
                return str(p)
        data = {"id": self.id, "video": rel(self.video), "prompt": self.prompt, "keypoints": rel(self.keypoints),
                "pose_video": rel(self.pose_video), "height": self.height, "width": self.width}
        return {k: v for k, v in data.items() if v is not None}


def _entry(data: Any, base: Path) -> ClipEntry:
    if not isinstance(data, dict):
        raise ValueError("a line must be a JSON object")
    unknown = sorted(set(data) - KNOWN_FIELDS)
    if unknown:
        raise ValueError(f"unknown fields {unknown}; known: {sorted(KNOWN_FIELDS)}")
    if not data.get("video"):
        raise ValueError("missing 'video'")
    if not data.get("keypoints") and not data.get("pose_video"):
        raise ValueError("needs 'keypoints' (pose JSON) or 'pose_video'")
    if not isinstance(data.get("prompt", ""), str):
        raise ValueError("'prompt' must be a string")
    size = (data.get("height"), data.get("width"))
    if (size[0] is None) != (size[1] is None):
        raise ValueError("give both 'height' and 'width' or neither")
    if size[0] is not None and (int(size[0]) % 16 or int(size[1]) % 16 or int(size[0]) <= 0 or int(size[1]) <= 0):
        raise ValueError(f"height/width must be positive multiples of 16, got {size[0]}x{size[1]}")

    def path(key: str) -> Path | None:
        value = data.get(key)
        return None if not value else (base / value if not Path(value).is_absolute() else Path(value))
    video = path("video")
    return ClipEntry(id=str(data.get("id") or video.stem), video=video, prompt=data.get("prompt", ""),
                     keypoints=path("keypoints"), pose_video=path("pose_video"),
                     height=None if size[0] is None else int(size[0]), width=None if size[1] is None else int(size[1]))


def read_manifest(path: str | Path) -> tuple[list[ClipEntry], list[dict[str, str]]]:
    """Entries and the problems of lines that cannot be used (reported, never fatal for the others)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    entries: list[ClipEntry] = []
    problems: list[dict[str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = _entry(json.loads(line), path.parent)
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            problems.append({"id": f"line {number}", "reason": f"bad manifest line: {exc}"})
            continue
        if entry.id in seen:
            problems.append({"id": entry.id, "reason": f"duplicate id on line {number}"})
            continue
        seen.add(entry.id)
        entries.append(entry)
    return entries, problems


def write_manifest(path: str | Path, entries: list[ClipEntry]) -> None:
    """Write ``metadata.jsonl`` atomically (a failed write leaves the earlier file as it was)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text("".join(json.dumps(e.to_json(path.parent)) + "\n" for e in entries))
