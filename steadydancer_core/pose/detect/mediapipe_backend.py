"""Offline pose backend: mediapipe 0.10.21 BlazePose (full model, bundled in the wheel) + Hands, mapped
to OpenPose-18.

mediapipe is an optional extra (it pins numpy<2 and protobuf<5 and needs Python <= 3.12), so it is
imported only when a ``MediaPipeDetector`` is built. The landmark mapping below is plain NumPy.

Hands: mediapipe's palm detector sees the whole frame at 192x192, so the hands of a small full-body
dancer are a few pixels there and are missed. A hand slot the full-frame pass leaves empty is looked for
again in an upscaled square crop around the hand BlazePose located (wrist, index, pinky, thumb), and
kept only when the found hand's wrist lies at that BlazePose wrist.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import UserError
from ..keypoints import BODY_JOINTS, HAND_JOINTS, LEFT_HAND, RIGHT_HAND, PersonPose, PoseFrame
from . import native_log
from .protocol import check_image

MEDIAPIPE_VERSION = "0.10.21"
BLAZEPOSE_POINTS = 33
# OpenPose-18 index -> BlazePose index (neck, index 1, is the shoulders' midpoint).
OPENPOSE_FROM_BLAZEPOSE = np.array([0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7])
BLAZEPOSE_LEFT_SHOULDER, BLAZEPOSE_RIGHT_SHOULDER = 11, 12
BLAZEPOSE_LEFT_WRIST, BLAZEPOSE_RIGHT_WRIST = 15, 16
# BlazePose per side (person's left, right): elbow, wrist, then pinky, index and thumb tips of the hand.
BLAZEPOSE_ARM = {LEFT_HAND: (13, 15, (17, 19, 21)), RIGHT_HAND: (14, 16, (18, 20, 22))}
HAND_CROP_PIXELS = 256  # the crop is resized to this square before the hand model sees it
HAND_CROP_FOREARMS = 1.5  # crop side in forearm lengths (a hand is about 0.7 forearm long)
HAND_CROP_MIN_PIXELS = 24  # smaller crops hold no detectable hand
HAND_WRIST_TOLERANCE = 0.25  # a crop's hand is kept when its wrist is within this many crop sides of BlazePose's


def hand_crop(landmarks: np.ndarray, slot: int, width: int, height: int) -> tuple[float, float, float] | None:
    """Pixel square ``(x0, y0, side)`` around the hand of ``slot`` (0 left, 1 right) from BlazePose's
    ``[33, 3]`` landmarks (normalised x, y, visibility), or None when that arm is not seen."""
    elbow, wrist, tips = BLAZEPOSE_ARM[slot]
    scale = np.array([width, height], np.float64)
    wrist_xy = landmarks[wrist, :2] * scale
    tips_xy = landmarks[list(tips), :2] * scale
    if landmarks[wrist, 2] < 0.3 or not (0 <= wrist_xy[0] < width and 0 <= wrist_xy[1] < height):
        return None
    forearm = float(np.linalg.norm(wrist_xy - landmarks[elbow, :2] * scale))
    reach = float(np.linalg.norm(tips_xy.mean(axis=0) - wrist_xy))
    side = max(HAND_CROP_FOREARMS * forearm, 4.0 * reach, HAND_CROP_MIN_PIXELS)
    center = (wrist_xy + tips_xy.mean(axis=0)) / 2
    return float(center[0] - side / 2), float(center[1] - side / 2), side


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

    def __init__(self, *, threshold: float = 0.5, hands: bool = True, hand_crops: bool = True,
                 video_mode: bool = False, min_detection_confidence: float = 0.5) -> None:
        native_log.install()  # before mediapipe's C++ starts logging
        mediapipe = import_mediapipe()
        self.threshold = threshold
        self._pose = mediapipe.solutions.pose.Pose(
            static_image_mode=not video_mode, model_complexity=1, min_detection_confidence=min_detection_confidence)
        self._hands = self._crop_hands = None
        if hands:
            self._hands = mediapipe.solutions.hands.Hands(
                static_image_mode=not video_mode, max_num_hands=2, model_complexity=1,
                min_detection_confidence=min_detection_confidence)
        if hands and hand_crops:  # crops are unrelated images: never tracked between calls
            self._crop_hands = mediapipe.solutions.hands.Hands(
                static_image_mode=True, max_num_hands=2, model_complexity=1,
                min_detection_confidence=min_detection_confidence)

    def detect(self, image: np.ndarray) -> PoseFrame:
        image = np.ascontiguousarray(check_image(image))
        height, width = image.shape[:2]
        result = self._pose.process(image)
        if result.pose_landmarks is None:
            return PoseFrame([], width, height)
        landmarks = np.array([[p.x, p.y, p.visibility] for p in result.pose_landmarks.landmark], np.float64)
        body, body_score, body_visible = blazepose_to_body(landmarks, self.threshold)
        hands, hand_score, hand_visible = assign_hands(*self._detect_hands(self._hands, image), body, body_visible)
        if self._crop_hands is not None:
            for slot in (LEFT_HAND, RIGHT_HAND):
                if not hand_visible[slot].any():
                    found = self._hand_in_crop(image, landmarks, slot)
                    if found is not None:
                        hands[slot], hand_score[slot], hand_visible[slot] = found[0], found[1], True
        person = PersonPose.create(body=body, body_visible=body_visible, body_score=body_score,
                                   hands=hands, hand_visible=hand_visible, hand_score=hand_score)
        return PoseFrame([person], width, height)

    @staticmethod
    def _detect_hands(model: Any, image: np.ndarray) -> tuple[list[np.ndarray], list[str], list[float]]:
        if model is None:
            return [], [], []
        result = model.process(image)
        if not result.multi_hand_landmarks:
            return [], [], []
        hands = [np.array([[p.x, p.y] for p in hand.landmark], np.float64) for hand in result.multi_hand_landmarks]
        labels = [handedness.classification[0].label for handedness in result.multi_handedness]
        scores = [float(handedness.classification[0].score) for handedness in result.multi_handedness]
        return hands, labels, scores

    def _hand_in_crop(self, image: np.ndarray, landmarks: np.ndarray, slot: int) -> tuple[np.ndarray, float] | None:
        """The hand of ``slot`` found in an upscaled crop around BlazePose's hand, in image-normalised
        coordinates with its score; None when no hand's wrist lies at BlazePose's wrist."""
        import cv2

        height, width = image.shape[:2]
        box = hand_crop(landmarks, slot, width, height)
        if box is None:
            return None
        x0, y0, side = box
        zoom = HAND_CROP_PIXELS / side
        warp = np.array([[zoom, 0.0, -x0 * zoom], [0.0, zoom, -y0 * zoom]])
        crop = cv2.warpAffine(image, warp, (HAND_CROP_PIXELS, HAND_CROP_PIXELS), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_CONSTANT)
        hands, _, scores = self._detect_hands(self._crop_hands, crop)
        wrist = landmarks[BLAZEPOSE_ARM[slot][1], :2]
        best = None
        for hand, score in zip(hands, scores):
            in_image = (np.array([x0, y0]) + hand * side) / [width, height]
            offset = np.linalg.norm((in_image[0] - wrist) * [width, height]) / side
            if offset <= HAND_WRIST_TOLERANCE and (best is None or offset < best[2]):
                best = (in_image, score, offset)
        return None if best is None else (best[0], best[1])

    def close(self) -> None:
        """Release mediapipe's graphs."""
        self._pose.close()
        for model in (self._hands, self._crop_hands):
            if model is not None:
                model.close()

    def __enter__(self) -> "MediaPipeDetector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
