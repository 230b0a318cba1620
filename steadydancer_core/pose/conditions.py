"""Keypoints in, condition pictures out: alignment → negative pose → rendering, in one call.

This is what the pose CLI, the ComfyUI nodes and the standalone pipeline call
(``build_pose_conditions``). Everything is checked before the per-frame work starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from .align import DEFAULT_RATIO_RANGE, Alignment, align_sequence
from .keypoints import PoseFrame, check_sequence, select_main_people
from .negative import NEGATIVE_ASPECT_RANGE, NEGATIVE_SCALE_RANGE, NegativeDraw, negative_poses
from .render import Downscale, Palette, check_render_args, render_frames


@dataclass
class PoseConditions:
    """``aligned`` / ``negative``: keypoints normalised to the output canvas, one main person per frame;
    ``positive_images`` / ``negative_images``: ``(T, height, width, 3)`` uint8 RGB; ``negative_draws``: the
    per-frame draws used; ``alignment``: the estimated transform (None when alignment was off)."""

    aligned: list[PoseFrame]
    negative: list[PoseFrame]
    positive_images: np.ndarray
    negative_images: np.ndarray
    negative_draws: list[NegativeDraw]
    alignment: Alignment | None


def build_pose_conditions(
    reference: PoseFrame | None,
    driving: Sequence[PoseFrame],
    width: int,
    height: int,
    seed: int | np.random.Generator = 0,
    *,
    align: bool = True,
    robust: bool = True,
    align_frame: int = 0,
    ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
    select_by: Literal["score", "area"] = "score",
    negative_draws: Sequence[NegativeDraw] | None = None,
    scale_range: tuple[float, float] = NEGATIVE_SCALE_RANGE,
    aspect_range: tuple[float, float] = NEGATIVE_ASPECT_RANGE,
    palette: Palette = "steadydancer",
    supersample: int = 2,
    downscale: Downscale | None = "area",
    threads: int = 2,
) -> PoseConditions:
    """Positive and negative pose pictures for a ``width`` × ``height`` generation.

    ``reference``: the reference image's keypoints (required when ``align``; they are read as normalised
    to the output canvas, as the official code detects on the reference resized to the generation size).
    ``driving``: the driving video's keypoints, one frame per output frame. ``align=False`` draws the driving
    main person as detected (stretched to the canvas). ``seed`` drives the negative-pose draws unless
    ``negative_draws`` gives them. See ``align_sequence``, ``negative_poses`` and ``render_frames`` for the
    other options.
    """
    driving = check_sequence(driving, "driving poses")
    check_render_args(width, height, supersample, downscale)
    if negative_draws is not None and len(negative_draws) != len(driving):
        raise ValueError(f"build_pose_conditions: expected one negative draw per driving frame ({len(driving)}), "
                         f"got {len(negative_draws)}")
    if align:
        if reference is None:
            raise ValueError("build_pose_conditions: alignment needs the reference keypoints; pass reference= or align=False")
        aligned, alignment = align_sequence(reference, driving, canvas_size=(int(width), int(height)),
                                            align_frame=align_frame, robust=robust, ratio_range=ratio_range,
                                            select_by=select_by)
    else:
        aligned = [PoseFrame(frame.people, int(width), int(height)) for frame in select_main_people(driving, select_by)]
        alignment = None
    negative, draws = negative_poses(aligned, seed=seed, draws=negative_draws, scale_range=scale_range,
                                     aspect_range=aspect_range)
    render = dict(width=int(width), height=int(height), supersample=supersample, palette=palette,
                  downscale=downscale, threads=threads)
    return PoseConditions(
        aligned=aligned,
        negative=negative,
        positive_images=render_frames(aligned, **render),
        negative_images=render_frames(negative, **render),
        negative_draws=draws,
        alignment=alignment,
    )
