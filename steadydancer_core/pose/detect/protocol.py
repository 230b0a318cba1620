"""The interface every pose detector backend implements, and a helper that runs one over a clip."""
from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from ..keypoints import PoseFrame


@runtime_checkable
class PoseDetector(Protocol):
    """Turns one RGB uint8 image ``[H, W, 3]`` into the people found in it (normalised keypoints)."""

    name: str

    def detect(self, image: np.ndarray) -> PoseFrame:
        ...


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` if it is an RGB uint8 ``[H, W, 3]`` array, else a clear error."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"pose detector: expected an RGB image array [H, W, 3], got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        raise ValueError(f"pose detector: expected a uint8 image, got {image.dtype}")
    if min(image.shape[:2]) < 2:
        raise ValueError(f"pose detector: image too small: {image.shape[1]}×{image.shape[0]}")
    return image


def detect_frames(detector: PoseDetector, frames: Iterable[np.ndarray], *, progress: bool = True,
                  description: str = "detecting poses") -> list[PoseFrame]:
    """Run ``detector`` on every frame (``[N, H, W, 3]`` or an iterable of images), with a progress bar."""
    total = len(frames) if hasattr(frames, "__len__") else None
    return [detector.detect(frame) for frame in tqdm(frames, total=total, desc=description, unit="frame",
                                                     disable=not progress)]
