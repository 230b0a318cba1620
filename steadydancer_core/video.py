"""Video and image I/O with PyAV: read a driving video at a target fps, write H.264 clips, read images.

Frames are always ``uint8`` arrays ``[N, H, W, 3]`` in RGB order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

__all__ = [
    "VideoReadError",
    "VideoReadInfo",
    "read_video",
    "write_video",
    "VideoWriter",
    "read_image",
    "frame_count_for_rule",
    "FRAME_COUNT_RULES",
]

FRAME_COUNT_RULES = ("4n+1", "any")


class VideoReadError(UserError, ValueError):
    """A video or image file could not be used (missing, unreadable, corrupt, empty, no video stream)."""


@dataclass(frozen=True)
class VideoReadInfo:
    """What ``read_video`` did to the source, so callers can report it to the user."""

    path: str
    source_fps: float
    duration_s: float | None
    frames_decoded: int
    target_fps: float | None
    resampled_frames: int
    output_frames: int
    frame_count_rule: str
    source_indices: tuple[int, ...] = field(repr=False)
    rotation: int = 0

    def summary(self) -> str:
        duration = "unknown" if self.duration_s is None else f"{self.duration_s:.2f}s"
        target = "native fps" if self.target_fps is None else f"{self.target_fps:g} fps"
        text = (
            f"{os.path.basename(self.path)}: {self.source_fps:.3f} fps, duration {duration}, "
            f"{self.frames_decoded} frames decoded, {self.resampled_frames} frames at {target}"
        )
        if self.output_frames != self.resampled_frames:
            text += f", trimmed to {self.output_frames} ({self.frame_count_rule})"
        if self.rotation:
            text += f", rotated {self.rotation}° as its display matrix asks"
        return text


def frame_count_for_rule(count: int, rule: str) -> int:
    """The largest frame count <= ``count`` allowed by ``rule`` ("4n+1": Wan's VAE packs 1 + 4k frames)."""
    if rule not in FRAME_COUNT_RULES:
        raise ValueError(f"frame_count_rule must be one of {FRAME_COUNT_RULES}, got {rule!r}")
    if count < 1:
        return 0
    if rule == "4n+1":
        return (count - 1) // 4 * 4 + 1
    return count


def _open_container(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoReadError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoReadError(f"video file is empty (0 bytes): {path}")
    try:
        return av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise VideoReadError(f"cannot read {path} as a video (corrupt or unsupported file): {exc}") from exc


def _frame_time(frame: av.VideoFrame, index: int, stream: av.video.stream.VideoStream, fps: Fraction) -> Fraction:
    """Presentation time of a decoded frame as an exact fraction; falls back to index/fps without timestamps."""
    if frame.pts is not None and stream.time_base is not None:
        return frame.pts * Fraction(stream.time_base)
    return index / fps


def read_video(
    path: str | os.PathLike,
    *,
    fps: float | None = 16.0,
    max_frames: int | None = None,
    frame_count_rule: str = "4n+1",
) -> tuple[np.ndarray, VideoReadInfo]:
    """Decode a video to RGB frames, resampled to ``fps`` (``None`` keeps every source frame).

    Resampling picks, for each output time ``k / fps`` (measured from the first frame), the source frame
    whose timestamp is nearest (ties go to the earlier frame), so 30 fps -> 16 fps drops frames and
    8 fps -> 16 fps repeats them. The count is capped at ``max_frames`` and then trimmed to the largest
    count the ``frame_count_rule`` allows. Decoding stops as soon as enough frames are selected.
    Frames are turned upright when the file carries a display rotation (phone videos), as players do.
    """
    if frame_count_rule not in FRAME_COUNT_RULES:
        raise ValueError(f"frame_count_rule must be one of {FRAME_COUNT_RULES}, got {frame_count_rule!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive or None (native), got {fps!r}")
    if max_frames is not None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if frame_count_for_rule(max_frames, frame_count_rule) != max_frames:
            raise ValueError(
                f"max_frames={max_frames} breaks the {frame_count_rule} rule; "
                f"use {frame_count_for_rule(max_frames, frame_count_rule)} or {frame_count_for_rule(max_frames + 4, frame_count_rule)}"
            )
    path = Path(path)
    container = _open_container(path)
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        source_fps = Fraction(rate) if rate else Fraction(0)
        duration_s = None
        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration_s = container.duration / av.time_base
        target_period = None if fps is None else 1 / Fraction(fps).limit_denominator(100000)

        selected: list[np.ndarray] = []
        source_indices: list[int] = []
        decoded = 0
        start_time: Fraction | None = None
        previous: tuple[int, Fraction, av.VideoFrame] | None = None
        quarter_turns = 0

        def select(index: int, frame: av.VideoFrame) -> None:
            # Repeated selections of one source frame (upsampling) share the converted array.
            if source_indices and source_indices[-1] == index:
                selected.append(selected[-1])
            else:
                # The display matrix rotates counter-clockwise, as np.rot90 does for positive k.
                selected.append(np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), quarter_turns)))
            source_indices.append(index)

        def full() -> bool:
            return max_frames is not None and len(selected) >= max_frames

        try:
            for frame in container.decode(stream):
                time = _frame_time(frame, decoded, stream, source_fps or Fraction(30))
                if start_time is None:
                    start_time = time
                    quarter_turns = round((frame.rotation or 0) / 90) % 4
                time -= start_time
                if target_period is None:
                    select(decoded, frame)
                else:
                    # Emit every target time that lies before this frame, choosing between it and the previous one.
                    while not full():
                        target = len(selected) * target_period
                        if time < target:
                            break
                        if previous is not None and (target - previous[1]) <= (time - target):
                            select(previous[0], previous[2])
                        else:
                            select(decoded, frame)
                    previous = (decoded, time, frame)
                decoded += 1
                if full():
                    break
        except av.error.FFmpegError as exc:
            raise VideoReadError(f"{path} is corrupt: decoding failed after {decoded} frames: {exc}") from exc

        if target_period is not None and previous is not None and not full():
            # The last frame covers target times up to half a source period after it (ties go to it, the earlier frame).
            source_period = 1 / source_fps if source_fps else target_period
            while not full() and len(selected) * target_period - previous[1] <= source_period / 2:
                select(previous[0], previous[2])

    if decoded == 0 or not selected:
        raise VideoReadError(f"{path} contains no decodable video frames")
    resampled = len(selected)
    keep = frame_count_for_rule(resampled, frame_count_rule)
    frames = np.stack(selected[:keep])
    info = VideoReadInfo(
        path=str(path),
        source_fps=float(source_fps),
        duration_s=duration_s,
        frames_decoded=decoded,
        target_fps=None if fps is None else float(fps),
        resampled_frames=resampled,
        output_frames=keep,
        frame_count_rule=frame_count_rule,
        source_indices=tuple(source_indices[:keep]),
        rotation=quarter_turns * 90,
    )
    return frames, info


def _as_frame_array(frames: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    array = np.asarray(frames) if not isinstance(frames, np.ndarray) else frames
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be [N, H, W, 3] RGB, got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("cannot write a video with 0 frames")
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {array.dtype}")
    return array


class VideoWriter:
    """An H.264 (yuv420p) mp4 written a batch of RGB uint8 frames at a time, so a long video never has to
    be held whole. The size is taken from the first batch; yuv420p needs even sizes, so an odd width or
    height is padded by one replicated edge column/row (never cropped: no content is lost)."""

    def __init__(self, path: str | os.PathLike, fps: float = 16.0, *, crf: int = 18) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.frames_written = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._frame_hw: tuple[int, int] | None = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, frames: np.ndarray | Sequence[np.ndarray]) -> None:
        array = _as_frame_array(frames)
        if self._frame_hw is None:
            self._open(*array.shape[1:3])
        elif array.shape[1:3] != self._frame_hw:
            raise ValueError(f"frames of size {array.shape[1:3]} do not match the video's {self._frame_hw} (HxW)")
        pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
        if pad_h or pad_w:
            array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for image in array:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        self.frames_written += len(array)

    def _open(self, height: int, width: int) -> None:
        self._frame_hw = (height, width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf)}

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent; a writer that got no frame writes nothing)."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    @property
    def size(self) -> tuple[int, int]:
        """The written (width, height), padded to even sizes."""
        if self._frame_hw is None:
            raise ValueError("no frame written yet")
        height, width = self._frame_hw
        return width + width % 2, height + height % 2


def write_video(
    frames: np.ndarray | Sequence[np.ndarray],
    path: str | os.PathLike,
    fps: float = 16.0,
    *,
    crf: int = 18,
) -> tuple[int, int]:
    """Write RGB uint8 frames as an H.264 (yuv420p) mp4 in one go; returns the written (width, height)."""
    array = _as_frame_array(frames)
    with VideoWriter(path, fps, crf=crf) as writer:
        writer.write(array)
        return writer.size


#: Still-image file types read as frames (frame folders, reference images).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB uint8 ``[H, W, 3]``; alpha is dropped, not composited (as the official loader)."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise VideoReadError(f"cannot read {path} as an image (corrupt or unsupported format): {exc}") from exc

