"""DWPose pre- and post-processing as plain NumPy/OpenCV functions (no network, no onnxruntime).

The two networks around these functions are YOLOX-L (person boxes) and DWPose-L (133 COCO-WholeBody
keypoints by SimCC); see ``reference/pose_pipeline.md`` §1 for where every constant comes from.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..keypoints import BODY_JOINTS, PersonPose

# YOLOX letterbox: top-left placement on a grey (114) square canvas, raw 0..255 pixels, no mean/std.
LETTERBOX_PAD_VALUE = 114
YOLOX_STRIDES = (8, 16, 32)
PERSON_CLASS = 0

# DWPose top-down crop: 288×384 (w×h), box padded ×1.25, ImageNet mean/std in RGB order.
POSE_INPUT_WH = (288, 384)
BOX_PADDING = 1.25
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
SIMCC_SPLIT_RATIO = 2.0
WHOLEBODY_POINTS = 133

# The official pipeline gives the inserted neck a binary score: 1 when both shoulders score above this.
NECK_SHOULDER_THRESHOLD = 0.3
# OpenPose-18 body index -> COCO-WholeBody index (neck is computed, marked -1).
OPENPOSE_FROM_COCO = np.array([0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])
FACE_SLICE = slice(23, 91)
LEFT_HAND_SLICE = slice(91, 112)
RIGHT_HAND_SLICE = slice(112, 133)


@dataclass(frozen=True)
class DetectionThresholds:
    """Box and keypoint thresholds of one of the two public pipelines.

    ``official`` is SteadyDancer's mmdet/mmpose path (person score > 0.5, NMS IoU 0.65, keypoints 0.35);
    ``controlnet_aux`` is the ONNX node of comfyui_controlnet_aux (0.3, 0.45, 0.3).
    """

    person_score: float = 0.5
    nms_iou: float = 0.65
    keypoint: float = 0.35

    @classmethod
    def preset(cls, name: str) -> "DetectionThresholds":
        presets = {"official": cls(0.5, 0.65, 0.35), "controlnet_aux": cls(0.3, 0.45, 0.3)}
        if name not in presets:
            raise ValueError(f"threshold preset must be one of {sorted(presets)}, got {name!r}")
        return presets[name]


# ------------------------------------------------------------------------------------------------
# Detection input size (official: short side 1024, both sides rounded to a multiple of 64)


def resize_for_detection(image: np.ndarray, short_side: int | None) -> np.ndarray:
    """Resize so the short side is ``short_side`` with each side a multiple of 64; ``None`` keeps the image.

    Keypoints normalised by the resized size equal those of the original image (the tiny aspect change
    of the rounding is undone by the normalisation), so only the crop pixels differ.
    """
    if short_side is None:
        return image
    height, width = image.shape[:2]
    factor = short_side / min(height, width)
    new_h = max(64, int(np.round(height * factor / 64.0)) * 64)
    new_w = max(64, int(np.round(width * factor / 64.0)) * 64)
    if (new_h, new_w) == (height, width):
        return image
    interpolation = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


# ------------------------------------------------------------------------------------------------
# YOLOX


def letterbox(image: np.ndarray, size_hw: tuple[int, int] = (640, 640)) -> tuple[np.ndarray, float]:
    """YOLOX input ``[1, 3, H, W]`` float32 (raw 0..255) and the resize ratio (boxes are divided by it)."""
    height, width = image.shape[:2]
    ratio = min(size_hw[0] / height, size_hw[1] / width)
    resized_w, resized_h = int(width * ratio), int(height * ratio)
    padded = np.full((size_hw[0], size_hw[1], 3), LETTERBOX_PAD_VALUE, np.uint8)
    padded[:resized_h, :resized_w] = cv2.resize(image, (resized_w, resized_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def yolox_grids(size_hw: tuple[int, int] = (640, 640), strides: tuple[int, ...] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Anchor grid ``[A, 2]`` (x, y in cells, row-major per stride) and stride per anchor ``[A, 1]``."""
    grids, expanded = [], []
    for stride in strides:
        rows, cols = size_hw[0] // stride, size_hw[1] // stride
        xv, yv = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
        expanded.append(np.full((rows * cols, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def decode_yolox(output: np.ndarray, ratio: float, size_hw: tuple[int, int] = (640, 640)) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes ``[K, 4]`` xyxy in input-image pixels and their scores ``[K]`` from a ``[1, A, 5+C]`` output.

    The exported head already applies the sigmoids; score = objectness × person-class probability.
    """
    predictions = np.asarray(output, np.float32)
    if predictions.ndim == 3:
        predictions = predictions[0]
    grids, strides = yolox_grids(size_hw)
    if predictions.ndim != 2 or predictions.shape[0] != len(grids) or predictions.shape[1] < 6:
        raise ValueError(f"YOLOX output: expected [1, {len(grids)}, 5+classes] for a {size_hw[1]}×{size_hw[0]} input, "
                         f"got {tuple(np.shape(output))}")
    centers = (predictions[:, :2] + grids) * strides
    sizes = np.exp(predictions[:, 2:4]) * strides
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1) / ratio
    scores = predictions[:, 4] * predictions[:, 5 + PERSON_CLASS]
    return boxes, scores


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes in descending score order."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None)
        inter_h = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None)
        inter = inter_w * inter_h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, np.finfo(np.float32).eps)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def select_person_boxes(boxes: np.ndarray, scores: np.ndarray, thresholds: DetectionThresholds) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes above the score threshold after NMS, best first."""
    confident = scores > thresholds.person_score
    boxes, scores = boxes[confident], scores[confident]
    keep = nms(boxes, scores, thresholds.nms_iou)
    return boxes[keep], scores[keep]


# ------------------------------------------------------------------------------------------------
# DWPose top-down crops


def box_to_center_scale(box: np.ndarray, input_wh: tuple[int, int] = POSE_INPUT_WH) -> tuple[np.ndarray, np.ndarray]:
    """Centre and crop size (w, h) of a box padded ×1.25 and widened/heightened to the model's aspect."""
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    width, height = (x1 - x0) * BOX_PADDING, (y1 - y0) * BOX_PADDING
    aspect = input_wh[0] / input_wh[1]
    if width > height * aspect:
        height = width / aspect
    else:
        width = height * aspect
    return center, np.array([width, height])


def crop_affine(center: np.ndarray, scale: np.ndarray, input_wh: tuple[int, int] = POSE_INPUT_WH) -> np.ndarray:
    """The 2×3 image→crop matrix (no rotation): uniform zoom input_w/scale_w, box centre to crop centre."""
    zoom = input_wh[0] / scale[0]
    return np.array([
        [zoom, 0.0, input_wh[0] / 2 - zoom * center[0]],
        [0.0, zoom, input_wh[1] / 2 - zoom * center[1]],
    ])


def normalise_crop(crop: np.ndarray) -> np.ndarray:
    """``(crop - mean) / std`` as CHW float32. Channel-first scalar ops, ~9x faster than broadcasting over
    the trailing 3-wide axis (see benchmarks/bench_pose_detect.py)."""
    out = crop.transpose(2, 0, 1).astype(np.float32)
    for channel in range(3):
        out[channel] -= POSE_MEAN[channel]
        out[channel] /= POSE_STD[channel]
    return out


def pose_inputs(
    image: np.ndarray,
    boxes: np.ndarray,
    input_wh: tuple[int, int] = POSE_INPUT_WH,
    swap_channels: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops as a normalised ``[N, 3, H, W]`` float32 batch plus each crop's centre ``[N, 2]`` and size ``[N, 2]``.

    ``swap_channels`` feeds the network BGR, reproducing the official pipeline's double colour conversion.
    """
    crops, centers, scales = [], [], []
    for box in boxes:
        center, scale = box_to_center_scale(box, input_wh)
        crop = cv2.warpAffine(image, crop_affine(center, scale, input_wh), input_wh, flags=cv2.INTER_LINEAR)
        if swap_channels:
            crop = crop[..., ::-1]
        crops.append(normalise_crop(crop))
        centers.append(center)
        scales.append(scale)
    batch = np.stack(crops) if crops else np.zeros((0, 3, input_wh[1], input_wh[0]), np.float32)
    return np.ascontiguousarray(batch), np.array(centers).reshape(-1, 2), np.array(scales).reshape(-1, 2)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop-pixel keypoints ``[N, K, 2]`` (argmax bin / split ratio) and scores ``[N, K]`` = min of the two maxima.

    A point whose score is <= 0 gets location -1, as in the reference decoder.
    """
    if simcc_x.ndim != 3 or simcc_y.ndim != 3 or simcc_x.shape[:2] != simcc_y.shape[:2]:
        raise ValueError(f"SimCC outputs: expected [N, K, bins] pairs, got {simcc_x.shape} and {simcc_y.shape}")
    locations = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], -1).astype(np.float64) / SIMCC_SPLIT_RATIO
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float64)
    locations[scores <= 0] = -1
    return locations, scores


def crop_to_image(keypoints: np.ndarray, centers: np.ndarray, scales: np.ndarray,
                  input_wh: tuple[int, int] = POSE_INPUT_WH) -> np.ndarray:
    """Back-project crop-pixel keypoints ``[N, K, 2]`` to image pixels (inverse of ``crop_affine``)."""
    return keypoints / np.asarray(input_wh, np.float64) * scales[:, None] + centers[:, None] - scales[:, None] / 2


def _wholebody_flip_indices() -> np.ndarray:
    """Index of each COCO-WholeBody point's mirror twin (left <-> right), as mmpose's dataset meta swaps them."""
    pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 20), (18, 21), (19, 22)]
    face_pairs = [(i, 16 - i) for i in range(8)] + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22), (31, 35), (32, 34),
                  (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (48, 54), (49, 53), (50, 52), (55, 59),
                  (56, 58), (60, 64), (61, 63), (65, 67)]
    pairs += [(23 + a, 23 + b) for a, b in face_pairs]
    pairs += [(91 + i, 112 + i) for i in range(21)]  # left hand <-> right hand
    indices = np.arange(WHOLEBODY_POINTS)
    for a, b in pairs:
        indices[a], indices[b] = b, a
    return indices


WHOLEBODY_FLIP_INDICES = _wholebody_flip_indices()


def unflip_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SimCC of a horizontally flipped crop mapped back to the unflipped crop (mmpose's flip test):
    swap left/right points and reverse the x bins."""
    return simcc_x[:, WHOLEBODY_FLIP_INDICES, ::-1], simcc_y[:, WHOLEBODY_FLIP_INDICES]


# ------------------------------------------------------------------------------------------------
# COCO-WholeBody 133 -> OpenPose-18 body + hands + face


def wholebody_to_person(
    keypoints: np.ndarray,
    scores: np.ndarray,
    image_wh: tuple[int, int],
    keypoint_threshold: float,
    box: np.ndarray | None = None,
    box_score: float | None = None,
) -> PersonPose:
    """One person's 133 image-pixel keypoints as a normalised ``PersonPose``.

    The neck is the shoulders' midpoint with score 1 if both shoulders score > 0.3, else 0. A body joint
    is visible when its score is > ``keypoint_threshold`` (the official subset rule); hand and face points
    when it is >= the threshold (the official rule that sets them to -1 below it).
    """
    if keypoints.shape != (WHOLEBODY_POINTS, 2) or scores.shape != (WHOLEBODY_POINTS,):
        raise ValueError(f"expected 133 keypoints [133, 2] and scores [133], got {keypoints.shape} and {scores.shape}")
    size = np.array(image_wh, np.float64)
    normalised = keypoints / size
    body = np.empty((BODY_JOINTS, 2))
    body_score = np.empty(BODY_JOINTS)
    from_coco = OPENPOSE_FROM_COCO >= 0
    body[from_coco] = normalised[OPENPOSE_FROM_COCO[from_coco]]
    body_score[from_coco] = scores[OPENPOSE_FROM_COCO[from_coco]]
    body[1] = (normalised[5] + normalised[6]) / 2
    body_score[1] = float(scores[5] > NECK_SHOULDER_THRESHOLD and scores[6] > NECK_SHOULDER_THRESHOLD)
    hands = np.stack([normalised[LEFT_HAND_SLICE], normalised[RIGHT_HAND_SLICE]])
    hand_score = np.stack([scores[LEFT_HAND_SLICE], scores[RIGHT_HAND_SLICE]])
    return PersonPose(
        body=body, body_score=body_score, body_visible=body_score > keypoint_threshold,
        hands=hands, hand_score=hand_score, hand_visible=hand_score >= keypoint_threshold,
        face=normalised[FACE_SLICE], face_score=scores[FACE_SLICE], face_visible=scores[FACE_SLICE] >= keypoint_threshold,
        bbox=None if box is None else np.asarray(box, np.float64) / np.tile(size, 2),
        detection_score=box_score,
    )
