"""Pose Simulation (training stage 3, "Motion Discontinuity Mitigation"), in keypoint space.

For a clip's poses p0..pT: pick ``T* ∈ {2, 3, 4}`` uniformly, form the interpolated poses
``p̂_k = p0 + (k / T*) (p_T* − p0)`` (k = 1..T*−1) for every keypoint visible in both p0 and p_T*
(elsewhere p1 keeps its own value and visibility), and with probability 0.5 replace p1 by p̂_1 (or, with
``replace="all_intermediate"``, p1..p_{T*−1} by p̂_1..p̂_{T*−1}). This imitates the jump between the
reference (first) frame and a driving pose that does not continue it smoothly. Only the main person of
each frame is touched. Draws come from a seeded numpy Generator; ``simulate_variant`` applies one fixed
T* without randomness (the precomputed per-clip variants of the training design).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from .keypoints import PersonPose, PoseFrame, check_sequence, select_person
from .negative import as_generator

T_STAR_CHOICES = (2, 3, 4)
Replace = Literal["p1_only", "all_intermediate"]


@dataclass(frozen=True)
class SimulationResult:
    """The (possibly) modified frames, the drawn ``t_star`` and whether frames were replaced."""

    frames: list[PoseFrame]
    t_star: int
    replaced: bool


def interpolate_person(start: PersonPose, end: PersonPose, weight: float, keep: PersonPose) -> PersonPose:
    """``start + weight · (end − start)`` for every point visible in both ``start`` and ``end`` (coordinates
    and scores, result visible); every other point keeps ``keep``'s value and visibility."""
    parts = {}
    for coords, score, visible in (("body", "body_score", "body_visible"), ("hands", "hand_score", "hand_visible"),
                                   ("face", "face_score", "face_visible")):
        both = getattr(start, visible) & getattr(end, visible)
        a, b = getattr(start, coords), getattr(end, coords)
        sa, sb = getattr(start, score), getattr(end, score)
        parts[coords] = np.where(both[..., None], a + weight * (b - a), getattr(keep, coords))
        parts[score] = np.where(both, sa + weight * (sb - sa), getattr(keep, score))
        parts[visible] = both | getattr(keep, visible)
    return keep.replace(**parts)


def _main_people(frames: list[PoseFrame], indices: Sequence[int]) -> dict[int, PersonPose | None]:
    return {i: select_person(frames[i]) for i in indices}


def simulate_variant(frames: Sequence[PoseFrame], t_star: int, replace: Replace = "p1_only") -> list[PoseFrame]:
    """Frames with p1 (or p1..p_{T*−1}) replaced by the interpolation between p0 and p_{T*}. A frame whose
    main person is missing (or where p0/p_{T*} has nobody) is left as it is."""
    frames = check_sequence(frames, "pose simulation frames")
    if isinstance(t_star, bool) or int(t_star) != t_star or t_star < 2:
        raise ValueError(f"simulate_variant: expected an integer t_star >= 2, got {t_star!r}")
    if t_star >= len(frames):
        raise ValueError(f"simulate_variant: t_star={t_star} needs at least {t_star + 1} frames, got {len(frames)}")
    if replace not in ("p1_only", "all_intermediate"):
        raise ValueError(f"simulate_variant: expected replace 'p1_only' or 'all_intermediate', got {replace!r}")
    targets = [1] if replace == "p1_only" else list(range(1, t_star))
    people = _main_people(frames, [0, t_star, *targets])
    out = list(frames)
    start, end = people[0], people[t_star]
    if start is None or end is None:
        return out
    for k in targets:
        keep = people[k]
        if keep is None:
            continue
        new_person = interpolate_person(start, end, k / t_star, keep)
        frame = frames[k]
        out[k] = PoseFrame([new_person if p is keep else p for p in frame.people], frame.width, frame.height)
    return out


def simulate_pose_discontinuity(
    frames: Sequence[PoseFrame],
    seed: int | np.random.Generator,
    t_choices: Sequence[int] = T_STAR_CHOICES,
    replace_prob: float = 0.5,
    replace: Replace = "p1_only",
) -> SimulationResult:
    """Draw ``T*`` uniformly from ``t_choices`` (only those the clip is long enough for) and, with
    probability ``replace_prob``, apply ``simulate_variant``. Draw order: T*, then the coin."""
    frames = check_sequence(frames, "pose simulation frames")
    if not 0.0 <= replace_prob <= 1.0:
        raise ValueError(f"simulate_pose_discontinuity: expected replace_prob in [0, 1], got {replace_prob}")
    feasible = [int(t) for t in t_choices if 2 <= t < len(frames)]
    if not feasible:
        raise ValueError(f"simulate_pose_discontinuity: a clip of {len(frames)} frames is too short for any "
                         f"T* in {tuple(t_choices)} (needs T* + 1 frames, T* >= 2)")
    rng = as_generator(seed)
    t_star = feasible[int(rng.integers(len(feasible)))]
    replaced = bool(rng.random() < replace_prob)
    out = simulate_variant(frames, t_star, replace) if replaced else list(frames)
    return SimulationResult(frames=out, t_star=t_star, replaced=replaced)
