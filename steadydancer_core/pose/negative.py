"""The negative (perturbed) pose for DC-CFG (official ``preprocess/utils_aug.py: pose_aug_diff``).

Every frame gets its own draw: ``aspect ~ U(0.6, 1.4)`` and ``scale ~ U(0.7, 1.3)``; body and hands become
``p' = neck + diag(aspect · scale, scale) · (p − neck)`` in the reference canvas' normalised coordinates,
i.e. an anisotropic scale about the neck (x factor 0.42–1.82, y factor 0.7–1.3). The face is not scaled,
only shifted by the translation that brings the scaled neck back, ``neck · (1 − factor)`` (official; faces
are never drawn). The official code also draws two offsets in
(−0.2, 0.2) that it never applies; they are not drawn here. Draws come from a seeded numpy Generator
(the official uses unseeded ``random``), or are given explicitly (``NegativeDraw``) for parity.
Inputs are never mutated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .keypoints import NECK, PersonPose, PoseFrame, check_sequence

NEGATIVE_SCALE_RANGE = (0.7, 1.3)
NEGATIVE_ASPECT_RANGE = (0.6, 1.4)


@dataclass(frozen=True)
class NegativeDraw:
    """One frame's perturbation: ``scale`` (both axes) and ``aspect`` (extra x factor)."""

    scale: float
    aspect: float


def as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    """A numpy Generator: ``seed`` itself if it is one, else ``default_rng(seed)``."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"expected an integer seed or a numpy Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def draw_negative_params(
    num_frames: int,
    seed: int | np.random.Generator,
    scale_range: tuple[float, float] = NEGATIVE_SCALE_RANGE,
    aspect_range: tuple[float, float] = NEGATIVE_ASPECT_RANGE,
) -> list[NegativeDraw]:
    """``num_frames`` independent draws, scale first then aspect per frame, from ``seed``."""
    for name, (low, high) in (("scale_range", scale_range), ("aspect_range", aspect_range)):
        if not 0 < low <= high:
            raise ValueError(f"draw_negative_params: expected {name} (low, high) with 0 < low <= high, got {(low, high)}")
    if num_frames < 0:
        raise ValueError(f"draw_negative_params: expected num_frames >= 0, got {num_frames}")
    rng = as_generator(seed)
    uniform = rng.random((num_frames, 2))
    scales = scale_range[0] + (scale_range[1] - scale_range[0]) * uniform[:, 0]
    aspects = aspect_range[0] + (aspect_range[1] - aspect_range[0]) * uniform[:, 1]
    return [NegativeDraw(float(s), float(a)) for s, a in zip(scales, aspects)]


def _pivot(person: PersonPose) -> np.ndarray:
    """The neck; the shoulder midpoint or the visible joints' centroid when the neck is hidden (the
    official code would use the hidden neck's -1 sentinel)."""
    if person.body_visible[NECK]:
        return person.body[NECK]
    if person.body_visible[2] and person.body_visible[5]:
        return (person.body[2] + person.body[5]) / 2
    if person.body_visible.any():
        return person.body[person.body_visible].mean(axis=0)
    return person.body[NECK]


def perturb_person(person: PersonPose, draw: NegativeDraw) -> PersonPose:
    """One person scaled about its neck by ``draw`` (official arithmetic order: x·aspect, then ·scale,
    then translate the neck back)."""
    factor = np.array([draw.aspect, 1.0])
    body = person.body * factor * draw.scale
    hands = person.hands * factor * draw.scale
    pivot = _pivot(person)
    scaled_pivot = pivot * factor * draw.scale
    offset = pivot - scaled_pivot
    return person.replace(body=body + offset, hands=hands + offset, face=person.face + offset, bbox=None)


def negative_poses(
    frames: Sequence[PoseFrame],
    seed: int | np.random.Generator = 0,
    draws: Sequence[NegativeDraw] | None = None,
    scale_range: tuple[float, float] = NEGATIVE_SCALE_RANGE,
    aspect_range: tuple[float, float] = NEGATIVE_ASPECT_RANGE,
) -> tuple[list[PoseFrame], list[NegativeDraw]]:
    """The negative pose of every frame (each person about its own neck, one draw per frame) and the
    draws used. ``draws`` replaces the random draws (one per frame)."""
    frames = check_sequence(frames, "negative_poses frames")
    if draws is None:
        draws = draw_negative_params(len(frames), seed, scale_range, aspect_range)
    else:
        draws = list(draws)
        if len(draws) != len(frames):
            raise ValueError(f"negative_poses: expected one draw per frame ({len(frames)}), got {len(draws)}")
        for i, draw in enumerate(draws):
            if not isinstance(draw, NegativeDraw):
                raise TypeError(f"negative_poses: draws[{i}] is {type(draw).__name__}, expected NegativeDraw")
    negative = [PoseFrame([perturb_person(person, draw) for person in frame.people], frame.width, frame.height)
                for frame, draw in zip(frames, draws)]
    return negative, draws
