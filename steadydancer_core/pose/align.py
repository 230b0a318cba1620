"""Alignment of driving poses to the reference body (official ``preprocess/pose_align.py``, MusePose lineage).

Lengths are measured in units of image height: normalised x is multiplied by the image's width/height.
From ONE calibration frame (``align_frame``, default 0) ten bone-length ratios reference/driving are
estimated (``SCALE_NAMES``) and one global offset (reference neck − calibration neck). Every driving frame
is then rebuilt outward from its neck: each joint = (its already moved parent) + ratio × (its original
offset from the parent), so bone angles are kept and only lengths change; the right hand follows the right
wrist and the left hand the left wrist with ``hand = (arm_upper + arm_lower) / 2`` (the official palm
ratios are computed but never used). The offset is added and x is divided by the reference aspect, which
gives normalised coordinates of the reference canvas. Later frames keep their own neck motion unscaled.

Two modes:

* ``robust=True`` (default): a ratio is measured only when every joint it needs is visible in both poses;
  missing ratios fall back to the mean of the measured ones (1 if none), and all ratios are clamped to
  ``ratio_range`` (default 0.2–5). A joint whose parent is hidden hangs off its nearest visible ancestor
  (ratio = mean of the ratios along the path); a frame without a neck pivots on the shoulder midpoint or
  the centroid of its visible joints. Face points follow the nose. So an upper-body reference with a
  full-body video (or the reverse) gives a sane result.
* ``robust=False``: the official arithmetic exactly, for parity, including its behaviour on hidden joints:
  the -1 sentinels enter the distances (ratios of 0, inf or garbage; NaN → 1), an infinite ratio turns the
  affected chain into NaN → -1, and the sentinels are restored before the offset is added.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np

from .keypoints import (
    LEFT_HAND, NECK, RIGHT_HAND, PersonPose, PoseFrame, check_sequence, person_to_official, select_person,
)

SCALE_NAMES: tuple[str, ...] = (
    "neck", "face_left", "face_right", "shoulder", "arm_upper", "arm_lower", "hand", "body_len", "leg_upper",
    "leg_lower",
)
DEFAULT_RATIO_RANGE = (0.2, 5.0)

# (child, parent, ratio) in the order the official code rebuilds the skeleton (parents before children).
_BODY_CHAIN: tuple[tuple[int, int, str], ...] = (
    (0, 1, "neck"),
    (14, 0, "face_left"), (16, 0, "face_left"),
    (15, 0, "face_right"), (17, 0, "face_right"),
    (2, 1, "shoulder"), (5, 1, "shoulder"),
    (3, 2, "arm_upper"), (4, 3, "arm_lower"),
    (6, 5, "arm_upper"), (7, 6, "arm_lower"),
    (8, 1, "body_len"), (11, 1, "body_len"),
    (9, 8, "leg_upper"), (10, 9, "leg_lower"),
    (12, 11, "leg_upper"), (13, 12, "leg_lower"),
)
_PARENT = {child: (parent, ratio) for child, parent, ratio in _BODY_CHAIN}
# hands[RIGHT_HAND] hangs off the right wrist (4), hands[LEFT_HAND] off the left wrist (7).
_HAND_WRIST = {RIGHT_HAND: 4, LEFT_HAND: 7}


@dataclass(frozen=True)
class Alignment:
    """The transform estimated from the calibration frame.

    ``scales``: ratio reference/driving per name of ``SCALE_NAMES``; ``offset``: reference neck −
    calibration neck, in (x · aspect, y) height units; ``ref_aspect``: width/height of the reference
    canvas the output is normalised to; ``robust``: which mode produced it (and must apply it).
    """

    scales: dict[str, float]
    offset: np.ndarray
    ref_aspect: float
    robust: bool


def _to_height_units(points: np.ndarray, aspect: float) -> np.ndarray:
    return points * np.array([aspect, 1.0])


def _from_height_units(points: np.ndarray, aspect: float) -> np.ndarray:
    out = points.copy()
    out[..., 0] = out[..., 0] / aspect
    return out


# ------------------------------------------------------------------------------------------------
# Ratio estimation

# Each ratio: list of "measurements" (tuples of joint paths); a measurement's length is the sum of the
# distances along its path; a ratio with two measurements (left/right) is their mean ratio.
_RATIO_PATHS: dict[str, tuple[tuple[int, ...], ...]] = {
    "neck": ((0, 1),),
    "face_left": ((16, 14, 0),),
    "face_right": ((17, 15, 0),),
    "shoulder": ((2, 5),),
    "arm_upper": ((2, 3), (5, 6)),
    "arm_lower": ((3, 4), (6, 7)),
    "leg_upper": ((8, 9), (11, 12)),
    "leg_lower": ((9, 10), (12, 13)),
}


def _path_length(body: np.ndarray, path: tuple[int, ...]) -> float:
    return float(sum(np.linalg.norm(body[a] - body[b]) for a, b in zip(path[:-1], path[1:])))


def _body_len(body: np.ndarray) -> float:
    # neck to the midpoint of the hips
    return float(np.linalg.norm(body[1] - (body[8] + body[11]) / 2))


def _official_scales(ref: np.ndarray, drv: np.ndarray) -> dict[str, float]:
    """The official ratios on sentinel-laden arrays (height units), NaN → 1, inf kept."""
    scales: dict[str, float] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, paths in _RATIO_PATHS.items():
            ratios = [np.float64(_path_length(ref, p)) / np.float64(_path_length(drv, p)) for p in paths]
            scales[name] = float(ratios[0]) if len(ratios) == 1 else float((ratios[0] + ratios[1]) / 2)
        scales["body_len"] = float(np.float64(_body_len(ref)) / np.float64(_body_len(drv)))
        scales["hand"] = (scales["arm_upper"] + scales["arm_lower"]) / 2
    return {name: (1.0 if np.isnan(value) else value) for name, value in scales.items()}


def _robust_scales(ref: np.ndarray, ref_visible: np.ndarray, drv: np.ndarray, drv_visible: np.ndarray,
                   ratio_range: tuple[float, float]) -> dict[str, float]:
    both = ref_visible & drv_visible
    low, high = ratio_range
    measured: dict[str, float] = {}
    for name, paths in _RATIO_PATHS.items():
        ratios = []
        for path in paths:
            ref_len, drv_len = _path_length(ref, path), _path_length(drv, path)
            if both[list(path)].all() and drv_len > 1e-9 and ref_len > 1e-9:
                ratios.append(ref_len / drv_len)
        if ratios:
            measured[name] = float(np.clip(np.mean(ratios), low, high))
    if both[[1, 8, 11]].all() and _body_len(drv) > 1e-9 and _body_len(ref) > 1e-9:
        measured["body_len"] = float(np.clip(_body_len(ref) / _body_len(drv), low, high))
    fallback = float(np.mean(list(measured.values()))) if measured else 1.0
    scales = {name: measured.get(name, fallback) for name in SCALE_NAMES if name != "hand"}
    scales["hand"] = (scales["arm_upper"] + scales["arm_lower"]) / 2
    return {name: scales[name] for name in SCALE_NAMES}


def _root(body: np.ndarray, visible: np.ndarray, hands: np.ndarray, hand_visible: np.ndarray) -> np.ndarray | None:
    """The pivot of a pose: the neck; else the shoulder midpoint (how detectors define the neck); else the
    centroid of the visible body joints, else of the visible hand points; None for an empty pose."""
    if visible[NECK]:
        return body[NECK]
    if visible[2] and visible[5]:
        return (body[2] + body[5]) / 2
    if visible.any():
        return body[visible].mean(axis=0)
    if hand_visible.any():
        return hands[hand_visible].mean(axis=0)
    return None


def estimate_alignment(
    reference: PersonPose,
    calibration: PersonPose,
    ref_aspect: float,
    video_aspect: float,
    robust: bool = True,
    ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
) -> Alignment:
    """Ratios and offset from the reference pose and the calibration driving pose.

    ``ref_aspect`` / ``video_aspect``: width/height of the reference canvas and of the driving video.
    """
    if ref_aspect <= 0 or video_aspect <= 0:
        raise ValueError(f"estimate_alignment: expected positive aspects, got ref {ref_aspect}, video {video_aspect}")
    if not (0 < ratio_range[0] <= 1 <= ratio_range[1]):
        raise ValueError(f"estimate_alignment: expected ratio_range (low, high) with 0 < low <= 1 <= high, got {ratio_range}")
    if not reference.body_visible.any():
        raise ValueError("estimate_alignment: the reference pose has no visible body joint")
    if not calibration.body_visible.any():
        raise ValueError("estimate_alignment: the calibration driving pose has no visible body joint")
    if robust:
        ref_body = _to_height_units(reference.body, ref_aspect)
        drv_body = _to_height_units(calibration.body, video_aspect)
        scales = _robust_scales(ref_body, reference.body_visible, drv_body, calibration.body_visible, ratio_range)
        ref_root = _root(ref_body, reference.body_visible, reference.hands, reference.hand_visible)
        drv_root = _root(drv_body, calibration.body_visible, calibration.hands, calibration.hand_visible)
        offset = ref_root - drv_root
    else:
        ref_body = _to_height_units(person_to_official(reference)[0], ref_aspect)
        drv_body = _to_height_units(person_to_official(calibration)[0], video_aspect)
        scales = _official_scales(ref_body, drv_body)
        offset = ref_body[NECK] - drv_body[NECK]
    return Alignment(scales=scales, offset=np.asarray(offset, np.float64), ref_aspect=float(ref_aspect), robust=robust)


# ------------------------------------------------------------------------------------------------
# Per-frame application


def _official_scale_about(points: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """The official ``warpAffine_kps(points, cv2.getRotationMatrix2D(center, 0, scale))``, bit for bit
    (including the NaN matrix an infinite scale produces)."""
    matrix = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), 0, float(scale))
    return np.dot(points, matrix[:, :2].T) + matrix[:, 2]


def _apply_official(person: PersonPose, alignment: Alignment, video_aspect: float) -> PersonPose:
    body0, subset, hands0 = person_to_official(person)
    face0 = np.where(person.face_visible[:, None], person.face, -1.0)
    body = _to_height_units(body0, video_aspect)
    hands = _to_height_units(hands0, video_aspect)
    face = _to_height_units(face0, video_aspect)
    s = alignment.scales
    original = body.copy()
    hand_offsets = {side: hands[side] - original[wrist] for side, wrist in _HAND_WRIST.items()}
    with np.errstate(invalid="ignore", over="ignore"):
        for child, parent, ratio in _BODY_CHAIN:
            if parent == NECK:
                # children of the neck scale their own position about the (fixed) neck
                body[child] = _official_scale_about(original[child][None], body[NECK], s[ratio])[0]
            else:
                moved = original[child] - original[parent] + body[parent]
                body[child] = _official_scale_about(moved[None], body[parent], s[ratio])[0]
            if child in _HAND_WRIST.values():
                side = RIGHT_HAND if child == _HAND_WRIST[RIGHT_HAND] else LEFT_HAND
                hands[side] = _official_scale_about(hand_offsets[side] + body[child], body[child], s["hand"])
        body[body0 == -1] = -1.0
        hands[hands0 == -1] = -1.0
        face[face0 == -1] = -1.0
        body, hands, face = (np.nan_to_num(a, nan=-1.0) for a in (body, hands, face))
        body, hands, face = (_from_height_units(a + alignment.offset, alignment.ref_aspect) for a in (body, hands, face))
        # Keeps PersonPose's finite invariant where the official garbage overflows (it never draws those).
        body, hands, face = (np.nan_to_num(a, nan=-1.0) for a in (body, hands, face))
    return person.replace(body=body, hands=hands, face=np.where(person.face_visible[:, None], face, person.face),
                          bbox=None)


def _scale_about(points: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """Vectorised ``_official_scale_about`` for a finite scale, same bits: with angle 0 the official matrix
    is ``[[s, 0, (1 - s) cx], [0, s, (1 - s) cy]]`` with the centre rounded to float32 (``cv2.Point2f``)."""
    return points * scale + (1.0 - scale) * center.astype(np.float32).astype(np.float64)


def _robust_roots(body: np.ndarray, visible: np.ndarray, hands: np.ndarray, hand_visible: np.ndarray) -> np.ndarray:
    """``_root`` for a batch sharing one body-visibility pattern: ``[G, 2]`` (NaN where nothing is visible)."""
    if visible[NECK]:
        return body[:, NECK]
    if visible[2] and visible[5]:
        return (body[:, 2] + body[:, 5]) / 2
    if visible.any():
        return body[:, visible].mean(axis=1)
    count = hand_visible.sum(axis=(1, 2))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (hands * hand_visible[..., None]).sum(axis=(1, 2)) / count


def _apply_robust_batch(people: Sequence[PersonPose], aspects: Sequence[float], alignment: Alignment) -> list[PersonPose]:
    """Robust alignment of many driving people at once. The anchor structure depends only on which body
    joints are visible, so people are grouped by that pattern and each group is rebuilt with array ops."""
    s = alignment.scales
    groups: dict[bytes, list[int]] = {}
    for index, person in enumerate(people):
        groups.setdefault(person.body_visible.tobytes(), []).append(index)
    out: list[PersonPose | None] = [None] * len(people)
    for indices in groups.values():
        visible = people[indices[0]].body_visible
        factor = np.array([[aspects[i], 1.0] for i in indices])
        original = np.stack([people[i].body for i in indices]) * factor[:, None]
        original_hands = np.stack([people[i].hands for i in indices]) * factor[:, None, None]
        hand_visible = np.stack([people[i].hand_visible for i in indices])
        face = np.stack([people[i].face for i in indices]) * factor[:, None]
        root = _robust_roots(original, visible, original_hands, hand_visible)
        body = original.copy()
        # joint -> positions after / before (the root is a fixed point)
        placed: dict[int, np.ndarray] = {NECK: root}
        origin: dict[int, np.ndarray] = {NECK: root}

        def anchor(joint: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
            """Nearest visible ancestor (or the root): original and new position, and the ratios on the way."""
            ratios = []
            current = joint
            while current != NECK:
                parent, ratio = _PARENT[current]
                ratios.append(s[ratio])
                if parent in placed:
                    return origin[parent], placed[parent], ratios
                current = parent
            return origin[NECK], placed[NECK], ratios

        def rebuild(points: np.ndarray, old_anchor: np.ndarray, new_anchor: np.ndarray, scale: float) -> np.ndarray:
            # The official operation order (move with the anchor, then scale about it), so that a pose with
            # every joint visible aligns bit for bit as in the official code.
            moved = points if old_anchor is new_anchor else points - old_anchor + new_anchor
            return _scale_about(moved, new_anchor, scale)

        with np.errstate(invalid="ignore"):
            for child, _parent, _ratio in _BODY_CHAIN:
                if visible[child]:
                    old_anchor, new_anchor, ratios = anchor(child)
                    body[:, child] = rebuild(original[:, child], old_anchor, new_anchor, float(np.mean(ratios)))
                    placed[child], origin[child] = body[:, child], original[:, child]
            hands = original_hands.copy()
            for side, wrist in _HAND_WRIST.items():
                if visible[wrist]:
                    old_anchor, new_anchor, scale = original[:, wrist], body[:, wrist], s["hand"]
                else:
                    old_anchor, new_anchor, ratios = anchor(wrist)
                    scale = float(np.mean(ratios + [s["hand"]]))
                moved = original_hands[:, side]
                if old_anchor is not new_anchor:
                    moved = moved - old_anchor[:, None] + new_anchor[:, None]
                hands[:, side] = _scale_about(moved, new_anchor[:, None], scale)
            if visible[0]:
                # Face points follow the nose (the official code leaves them behind; they are never drawn).
                face = rebuild(face, original[:, None, 0], body[:, None, 0], (s["face_left"] + s["face_right"]) / 2)
        body, hands, face = (_from_height_units(a + alignment.offset, alignment.ref_aspect) for a in (body, hands, face))
        for row, i in enumerate(indices):
            person = people[i]
            out[i] = person.replace(body=np.where(visible[:, None], body[row], person.body),
                                    hands=np.where(person.hand_visible[..., None], hands[row], person.hands),
                                    face=np.where(person.face_visible[:, None], face[row], person.face), bbox=None)
    return out  # type: ignore[return-value]


def apply_alignment(person: PersonPose, alignment: Alignment, video_aspect: float) -> PersonPose:
    """One driving person (normalised to a video of aspect ``video_aspect``) aligned to the reference canvas.
    Visibility and scores are kept; the detection box is dropped (it no longer matches)."""
    if alignment.robust:
        return _apply_robust_batch([person], [video_aspect], alignment)[0]
    return _apply_official(person, alignment, video_aspect)


def align_sequence(
    reference: PoseFrame | PersonPose,
    driving: Sequence[PoseFrame],
    canvas_size: tuple[int, int] | None = None,
    align_frame: int = 0,
    robust: bool = True,
    ratio_range: tuple[float, float] = DEFAULT_RATIO_RANGE,
    select_by: Literal["score", "area"] = "score",
) -> tuple[list[PoseFrame], Alignment]:
    """Align the main person of every driving frame to the reference body.

    ``reference``: the reference image's frame (its main person is used) or a person. ``canvas_size``:
    ``(width, height)`` of the output canvas (the generation size); by default the reference frame's size.
    The reference keypoints are taken as normalised to that canvas (the official code resizes the reference
    to the generation size before detecting). Returns frames of ``canvas_size`` holding one aligned person
    (or nobody where the driving frame had nobody) and the estimated ``Alignment``.
    """
    driving = check_sequence(driving, "driving poses")
    if isinstance(reference, PoseFrame):
        ref_person = select_person(reference, select_by)
        if ref_person is None:
            raise ValueError("align_sequence: no person detected in the reference image")
        if canvas_size is None:
            canvas_size = (reference.width, reference.height)
    elif isinstance(reference, PersonPose):
        ref_person = reference
        if canvas_size is None:
            raise ValueError("align_sequence: canvas_size=(width, height) is required when the reference is a PersonPose")
    else:
        raise TypeError(f"align_sequence: expected the reference as a PoseFrame or PersonPose, got {type(reference).__name__}")
    width, height = canvas_size
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"align_sequence: expected a positive integer canvas_size (width, height), got {canvas_size}")
    if not 0 <= align_frame < len(driving):
        raise ValueError(f"align_sequence: align_frame must index the {len(driving)} driving frames, got {align_frame}")
    calibration = select_person(driving[align_frame], select_by)
    if calibration is None:
        raise ValueError(f"align_sequence: no person detected in driving frame {align_frame} (the calibration "
                         f"frame); choose another align_frame")
    alignment = estimate_alignment(ref_person, calibration, width / height, driving[align_frame].aspect,
                                   robust=robust, ratio_range=ratio_range)
    people = [select_person(frame, select_by) for frame in driving]
    present = [t for t, person in enumerate(people) if person is not None]
    if robust:
        moved = _apply_robust_batch([people[t] for t in present], [driving[t].aspect for t in present], alignment)
    else:
        moved = [_apply_official(people[t], alignment, driving[t].aspect) for t in present]
    by_frame = dict(zip(present, moved))
    aligned = [PoseFrame([by_frame[t]] if t in by_frame else [], int(width), int(height)) for t in range(len(driving))]
    return aligned, alignment

