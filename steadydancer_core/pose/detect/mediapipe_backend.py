"""Offline pose backend: mediapipe 0.10.21 BlazePose (full model, bundled in the wheel) + Hands, mapped
to OpenPose-18.

mediapipe is an optional extra (it pins numpy<2 and protobuf<5 and needs Python <= 3.12), so it is
imported only when a ``MediaPipeDetector`` is built. The landmark mapping below is plain NumPy.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import UserError
from ..keypoints import BODY_JOINTS, HAND_JOINTS, LEFT_HAND, RIGHT_HAND, PersonPose, PoseFrame
from .protocol import check_image

MEDIAPIPE_VERSION = "0.10.21"
BLAZEPOSE_POINTS = 33
# OpenPose-18 index -> BlazePose index (neck, index 1, is the shoulders' midpoint).
OPENPOSE_FROM_BLAZEPOSE = np.array([0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7])
BLAZEPOSE_LEFT_SHOULDER, BLAZEPOSE_RIGHT_SHOULDER = 11, 12
BLAZEPOSE_LEFT_WRIST, BLAZEPOSE_RIGHT_WRIST = 15, 16


class BackendUnavailable(UserError, ImportError):
    """An optional pose backend's package is not installed in this environment."""


def import_mediapipe() -> Any:
    """``mediapipe`` itself, or one clear error saying how to get it."""
    try:
        import mediapipe

        # A folder named "mediapipe" on sys.path (e.g. tests/mediapipe) imports as an empty namespace package.
        if getattr(mediapipe, "__file__", None) is None:
            raise ImportError("mediapipe resolved to a namespace package, not the library")
    except ImportError:
        raise BackendUnavailable(
            f"the 'mediapipe' pose backend needs mediapipe=={MEDIAPIPE_VERSION} (it bundles the BlazePose model and "
            f"runs offline). It pins numpy<2 and protobuf<5 and needs Python 3.11/3.12, so install it in its own "
            f"environment: pip install -r requirements-mediapipe.txt (in this repository; it pins "
            f"mediapipe=={MEDIAPIPE_VERSION}). Otherwise use the 'dwpose' backend."
        ) from None
    if not hasattr(mediapipe, "solutions") or not hasattr(mediapipe.solutions, "pose"):
        raise BackendUnavailable(
            f"mediapipe {getattr(mediapipe, '__version__', '?')} has no bundled 'solutions.pose' model; "
            f"install mediapipe=={MEDIAPIPE_VERSION}"
        )
    return mediapipe


def blazepose_to_body(landmarks: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenPose-18 ``(coords [18,2], scores [18], visible [18])`` from BlazePose ``[33, 3]`` (x, y normalised,
    visibility). The neck is the shoulders' midpoint with the lower of their scores.

    A joint is visible when its score passes ``threshold`` AND it lies inside the image: BlazePose
    always returns all 33 landmarks and extrapolates the ones outside the frame (the legs of a
    waist-up video), often with a high visibility; DWPose never reports such joints, and drawing them
    would hand the model legs the driving video does not show."""
    if landmarks.shape != (BLAZEPOSE_POINTS, 3):
        raise ValueError(f"expected BlazePose landmarks [33, 3] (x, y, visibility), got {landmarks.shape}")
    body = np.empty((BODY_JOINTS, 2))
    score = np.empty(BODY_JOINTS)
    mapped = OPENPOSE_FROM_BLAZEPOSE >= 0
    body[mapped] = landmarks[OPENPOSE_FROM_BLAZEPOSE[mapped], :2]
    score[mapped] = landmarks[OPENPOSE_FROM_BLAZEPOSE[mapped], 2]
    shoulders = landmarks[[BLAZEPOSE_LEFT_SHOULDER, BLAZEPOSE_RIGHT_SHOULDER]]
    body[1] = shoulders[:, :2].mean(axis=0)
    score[1] = shoulders[:, 2].min()
    inside = ((body >= 0.0) & (body <= 1.0)).all(axis=1)
    return body, score, (score > threshold) & inside


def assign_hands(hands: list[np.ndarray], labels: list[str], hand_scores: list[float], body: np.ndarray,
                 body_visible: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place detected hands (each ``[21, 2]``) into the person's (left, right) slots.

    A hand goes to the side whose body wrist is nearer to the hand's wrist point when both body wrists
    are visible. Otherwise mediapipe's handedness label decides, swapped: mediapipe labels hands as seen
    in a mirrored (selfie) image, and our images are not mirrored.
    """
    coords = np.zeros((2, HAND_JOINTS, 2))
    scores = np.zeros((2, HAND_JOINTS))
    filled = np.zeros(2, bool)
    wrists = {LEFT_HAND: 7, RIGHT_HAND: 4}  # OpenPose left / right wrist
    use_wrists = bool(body_visible[wrists[LEFT_HAND]] and body_visible[wrists[RIGHT_HAND]])
    for hand, label, hand_score in sorted(zip(hands, labels, hand_scores), key=lambda item: -item[2]):
        if use_wrists:
            distances = {slot: np.linalg.norm(hand[0] - body[joint]) for slot, joint in wrists.items()}
            slot = min(distances, key=distances.get)
        else:
            slot = RIGHT_HAND if label == "Left" else LEFT_HAND
        if filled[slot]:
            slot = 1 - slot  # two hands claimed one side: the less confident takes the other
            if filled[slot]:
                continue
        coords[slot], scores[slot], filled[slot] = hand, hand_score, True
    return coords, scores, np.repeat(filled[:, None], HAND_JOINTS, axis=1)


class MediaPipeDetector:
    """BlazePose (``model_complexity=1``, the full model bundled in mediapipe 0.10.21) + mediapipe Hands.

    Single person. ``threshold`` applies to BlazePose's per-landmark visibility. ``video_mode`` lets
    mediapipe track between consecutive calls (faster, smoother) instead of detecting in every image.
    """

    name = "mediapipe"

    def __init__(self, *, threshold: float = 0.5, hands: bool = True, video_mode: bool = False,
                 min_detection_confidence: float = 0.5) -> None:
        mediapipe = import_mediapipe()
        self.threshold = threshold
        self._pose = mediapipe.solutions.pose.Pose(
            static_image_mode=not video_mode, model_complexity=1, min_detection_confidence=min_detection_confidence)
        self._hands = None
        if hands:
            self._hands = mediapipe.solutions.hands.Hands(
                static_image_mode=not video_mode, max_num_hands=2, model_complexity=1,
                min_detection_confidence=min_detection_confidence)

    def detect(self, image: np.ndarray) -> PoseFrame:
        image = np.ascontiguousarray(check_image(image))
        height, width = image.shape[:2]
        result = self._pose.process(image)
        if result.pose_landmarks is None:
            return PoseFrame([], width, height)
        landmarks = np.array([[p.x, p.y, p.visibility] for p in result.pose_landmarks.landmark], np.float64)
        body, body_score, body_visible = blazepose_to_body(landmarks, self.threshold)
        hands, hand_score, hand_visible = assign_hands(*self._detect_hands(image), body, body_visible)
        person = PersonPose.create(body=body, body_visible=body_visible, body_score=body_score,
                                   hands=hands, hand_visible=hand_visible, hand_score=hand_score)
        return PoseFrame([person], width, height)

    def _detect_hands(self, image: np.ndarray) -> tuple[list[np.ndarray], list[str], list[float]]:
        if self._hands is None:
            return [], [], []
        result = self._hands.process(image)
        if not result.multi_hand_landmarks:
            return [], [], []
        hands = [np.array([[p.x, p.y] for p in hand.landmark], np.float64) for hand in result.multi_hand_landmarks]
        labels = [handedness.classification[0].label for handedness in result.multi_handedness]
        scores = [float(handedness.classification[0].score) for handedness in result.multi_handedness]
        return hands, labels, scores

    def close(self) -> None:
        """Release mediapipe's graphs."""
        self._pose.close()
        if self._hands is not None:
            self._hands.close()

    def __enter__(self) -> "MediaPipeDetector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
