"""Pose-frame sequences read on demand, so a long video's poses need not all be in memory at once.

The pipeline takes any ``Frames``: a length and fancy indexing with an index array, returning uint8
``[len(indices), H, W, 3]``. A NumPy array is one; these two read from disk or render only the frames a
segment asks for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from .errors import InputError
from .video import read_image


class Frames(Protocol):
    """What the pipeline needs of a pose-frame sequence."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class ImageFolderFrames:
    """Image files (already sorted) read when indexed; their sizes are checked up front from the headers."""

    def __init__(self, files: Sequence[Path], what: str) -> None:
        if not files:
            raise InputError(f"{what}: no image files")
        sizes = {}
        for file in files:
            try:
                with Image.open(file) as image:  # reads the header only
                    sizes.setdefault(image.size, file)
            except OSError as err:
                raise InputError(f"{what}: cannot read {file} as an image ({err})") from err
        if len(sizes) > 1:
            found = ", ".join(f"{w}x{h} ({path.name})" for (w, h), path in sizes.items())
            raise InputError(f"{what} images have different sizes: {found}; expected one size")
        self.files = list(files)
        (width, height), = sizes
        self.shape = (len(self.files), height, width, 3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([read_image(self.files[i]) for i in np.atleast_1d(indices)])


class RenderedPoseFrames:
    """Keypoint frames rendered in the official style when indexed (rendering 1000 frames up front would
    hold them all)."""

    def __init__(self, frames: Sequence[object], width: int, height: int) -> None:
        self.frames = list(frames)
        self.shape = (len(self.frames), height, width, 3)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        from .pose.render import render_frames

        return render_frames([self.frames[i] for i in np.atleast_1d(indices)], self.shape[2], self.shape[1])
