"""Pose following: does the generated person take the driving pose, frame by frame?

The pose of every generated frame is detected with a ``PoseDetector`` (the project's detector protocol; DWPose
by default) and compared with the driving *aligned* keypoints — the condition the video was generated from —
on the 18 OpenPose body joints of the main person of each frame (``select_person``, highest score).

Normalisation. Keypoints are normalised image coordinates; both sides are put in pixels of the generated
frame (``x·W``, ``y·H``). In frame *t* the scale is the size of the driving person,
``s_t = max(w_t, h_t)``: the larger side, in pixels, of the box around the driving person's visible body
joints. For a joint *j* visible in the driving pose the normalised error is ``e_tj = ‖p̂_tj − p_tj‖₂ / s_t``.

* ``pose_error``: the mean of ``e_tj`` over the driving-visible joints that the detector also found in the
  generated frame (lower is better).
* ``pose_pck@0.05`` / ``pose_pck@0.1``: the fraction of *all* driving-visible joints with ``e_tj ≤ α``; a joint
  the detector did not find in the generated frame counts as a miss (higher is better).
* ``pose_detected``: the fraction of driving-visible joints found in the generated frames.

Frames whose driving pose has fewer than two visible body joints (no scale) are left out and counted in
``pose_frames_skipped``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..pose.detect.protocol import PoseDetector, detect_frames
from ..pose.keypoints import PoseFrame, select_person

PCK_THRESHOLDS = (0.05, 0.1)


@dataclass(frozen=True)
class PoseFollowing:
    error: float
    pck: dict[float, float]
    detected: float
    joints: int
    frames_skipped: int

    def as_dict(self) -> dict[str, float | int]:
        values: dict[str, float | int] = {"pose_error": self.error}
        values.update({f"pose_pck@{alpha:g}": value for alpha, value in self.pck.items()})
        values.update({"pose_detected": self.detected, "pose_joints": self.joints,
                       "pose_frames_skipped": self.frames_skipped})
        return values


def _body(frame: PoseFrame, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Body joints of the frame's main person in pixels of a ``width``×``height`` frame, and their visibility."""
    person = select_person(frame)
    if person is None:
        return np.zeros((18, 2)), np.zeros(18, bool)
    return person.body * np.array([width, height], dtype=np.float64), person.body_visible.copy()


def pose_following(generated: Sequence[PoseFrame], driving: Sequence[PoseFrame], width: int, height: int,
                   thresholds: Sequence[float] = PCK_THRESHOLDS) -> PoseFollowing:
    """Compare detected ``generated`` poses with ``driving`` poses, one frame each (see the module docstring)."""
    if len(generated) != len(driving):
        raise ValueError(f"pose following: {len(generated)} generated pose frames vs {len(driving)} driving frames")
    errors, hits, found, total, skipped = [], {alpha: 0 for alpha in thresholds}, 0, 0, 0
    for detected, target in zip(generated, driving):
        points, visible = _body(target, width, height)
        if visible.sum() < 2:
            skipped += 1
            continue
        box = points[visible]
        scale = float(np.max(box.max(axis=0) - box.min(axis=0)))
        if scale <= 0:
            skipped += 1
            continue
        guess, guess_visible = _body(detected, width, height)
        both = visible & guess_visible
        error = np.linalg.norm(guess[both] - points[both], axis=1) / scale
        errors.extend(error.tolist())
        total += int(visible.sum())
        found += int(both.sum())
        for alpha in thresholds:
            hits[alpha] += int((error <= alpha).sum())
    if total == 0:
        raise ValueError("pose following: no driving frame has two or more visible body joints")
    return PoseFollowing(
        error=float(np.mean(errors)) if errors else float("nan"),
        pck={alpha: hits[alpha] / total for alpha in thresholds},
        detected=found / total, joints=total, frames_skipped=skipped,
    )


def detect_generated_poses(detector: PoseDetector, frames: np.ndarray, name: str = "",
                           progress: bool = True) -> list[PoseFrame]:
    """The detector run over every generated frame (with a progress bar)."""
    return detect_frames(detector, frames, progress=progress, description=f"poses {name}".strip())
