"""DWPose on onnxruntime: YOLOX-L person boxes, then DWPose-L whole-body keypoints per box."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ...errors import UserError
from ..keypoints import PoseFrame
from . import dwpose_ops as ops
from .models import ensure_dwpose_models
from .protocol import check_image


class OnnxModelError(UserError, ValueError):
    """An ONNX file is not the model it should be (unreadable, wrong input or outputs)."""


def _default_providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class _OnnxModel:
    """An onnxruntime session plus what the detector needs to know about its input (names read from the file)."""

    def __init__(self, path: str | os.PathLike, role: str, providers: Sequence[str] | None) -> None:
        import onnxruntime

        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=list(providers or _default_providers()))
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for a bad file
            raise OnnxModelError(f"cannot load the {role} model {self.path}: {exc}. "
                                 f"Delete the file and fetch it again.") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise OnnxModelError(f"{role} model {self.path}: expected one [N, 3, H, W] input, "
                                 f"got {[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        batch, _, height, width = inputs[0].shape
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.input_hw = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: batch})


class DWPoseDetector:
    """YOLOX-L + DWPose-L on onnxruntime, returning every detected person as a normalised ``PersonPose``.

    People come out ordered by the detector's score (``person_order="score"``, the official "person 0")
    or by box area (``"area"``), at most ``max_people`` of them. Each keeps its own two hands.
    ``no_box="whole_image"`` runs the pose model on the whole frame when no box passes the threshold
    (official mmpose behaviour); ``"empty"`` returns nobody (controlnet_aux behaviour). ``flip_test``
    averages the SimCC of each crop and of its mirror image, as the official mmpose config does (twice
    the pose-network work; the controlnet_aux ONNX path does not).
    """

    name = "dwpose"

    def __init__(
        self,
        detector_model: str | os.PathLike,
        pose_model: str | os.PathLike,
        *,
        thresholds: ops.DetectionThresholds = ops.DetectionThresholds(),
        detect_short_side: int | None = 1024,
        no_box: Literal["whole_image", "empty"] = "whole_image",
        person_order: Literal["score", "area"] = "score",
        max_people: int | None = None,
        official_channel_swap: bool = False,
        flip_test: bool = False,
        providers: Sequence[str] | None = None,
    ) -> None:
        if no_box not in ("whole_image", "empty"):
            raise ValueError(f"no_box must be 'whole_image' or 'empty', got {no_box!r}")
        if person_order not in ("score", "area"):
            raise ValueError(f"person_order must be 'score' or 'area', got {person_order!r}")
        if max_people is not None and max_people < 1:
            raise ValueError(f"max_people must be >= 1 or None, got {max_people}")
        self.thresholds = thresholds
        self.detect_short_side = detect_short_side
        self.no_box = no_box
        self.person_order = person_order
        self.max_people = max_people
        self.official_channel_swap = official_channel_swap
        self.flip_test = flip_test
        self.detector = _OnnxModel(detector_model, "YOLOX person detector", providers)
        self.pose = _OnnxModel(pose_model, "DWPose keypoint", providers)
        if self.pose.input_hw is None:
            raise OnnxModelError(f"DWPose model {self.pose.path}: expected a fixed input height and width, "
                                 f"got {self.pose.session.get_inputs()[0].shape}")
        if len(self.pose.output_names) != 2:
            raise OnnxModelError(f"DWPose model {self.pose.path}: expected two outputs (simcc_x, simcc_y), "
                                 f"got {self.pose.output_names}. Is this the YOLOX file?")

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike | None = None, *, download: bool = True,
                        **options) -> "DWPoseDetector":
        """Load ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx`` from the models folder (fetched when absent)."""
        detector_path, pose_path = ensure_dwpose_models(models_dir, download=download)
        return cls(detector_path, pose_path, **options)

    @property
    def pose_input_wh(self) -> tuple[int, int]:
        height, width = self.pose.input_hw
        return width, height

    def detect_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes ``[K, 4]`` (xyxy pixels of ``image``) and scores, best first, after NMS."""
        size_hw = self.detector.input_hw or (640, 640)
        batch, ratio = ops.letterbox(image, size_hw)
        outputs = self.detector.run(batch)
        boxes, scores = ops.decode_yolox(outputs[0], ratio, size_hw)
        return ops.select_person_boxes(boxes, scores, self.thresholds)

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """133 keypoints ``[K, 133, 2]`` in image pixels and scores ``[K, 133]`` for each box."""
        batch, centers, scales = ops.pose_inputs(image, boxes, self.pose_input_wh, self.official_channel_swap)
        simcc_x, simcc_y = self._run_pose(batch)
        if self.flip_test:
            flipped_x, flipped_y = ops.unflip_simcc(*self._run_pose(np.ascontiguousarray(batch[..., ::-1])))
            simcc_x, simcc_y = (simcc_x + flipped_x) / 2, (simcc_y + flipped_y) / 2
        keypoints, scores = ops.decode_simcc(simcc_x, simcc_y)
        return ops.crop_to_image(keypoints, centers, scales, self.pose_input_wh), scores

    def _run_pose(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run all crops at once, or in zero-padded chunks when the model's batch axis is fixed."""
        if len(batch) == 0:
            height, width = self.pose.input_hw
            return (np.zeros((0, ops.WHOLEBODY_POINTS, int(width * ops.SIMCC_SPLIT_RATIO)), np.float32),
                    np.zeros((0, ops.WHOLEBODY_POINTS, int(height * ops.SIMCC_SPLIT_RATIO)), np.float32))
        chunk = self.pose.fixed_batch or len(batch)
        xs, ys = [], []
        for start in range(0, len(batch), chunk):
            part = batch[start:start + chunk]
            if len(part) < chunk:
                part = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]), part.dtype)])
            first, second = self.pose.run(part)
            simcc_x, simcc_y = self._order_simcc(first, second)
            taken = min(chunk, len(batch) - start)
            xs.append(simcc_x[:taken])
            ys.append(simcc_y[:taken])
        return np.concatenate(xs), np.concatenate(ys)

    def _order_simcc(self, first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(simcc_x, simcc_y) by output name when the export names them, else by bin count (x: 2·width)."""
        names = self.pose.output_names
        if set(names) == {"simcc_x", "simcc_y"}:
            return (first, second) if names[0] == "simcc_x" else (second, first)
        width_bins = int(self.pose_input_wh[0] * ops.SIMCC_SPLIT_RATIO)
        if first.shape[-1] == width_bins:
            return first, second
        if second.shape[-1] == width_bins:
            return second, first
        raise OnnxModelError(f"DWPose model {self.pose.path}: no output has {width_bins} x bins; "
                             f"got shapes {first.shape} and {second.shape}")

    def detect(self, image: np.ndarray) -> PoseFrame:
        """Everybody in an RGB uint8 image, keypoints normalised to the image (see the class docstring)."""
        image = check_image(image)
        height, width = image.shape[:2]
        work = ops.resize_for_detection(image, self.detect_short_side)
        work_h, work_w = work.shape[:2]
        boxes, box_scores = self.detect_boxes(work)
        box_scores_or_none: list[float | None] = [float(s) for s in box_scores]
        if len(boxes) == 0:
            if self.no_box == "empty":
                return PoseFrame([], width, height)
            boxes = np.array([[0.0, 0.0, work_w, work_h]])
            box_scores_or_none = [None]
        if self.person_order == "area":
            order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
            boxes, box_scores_or_none = boxes[order], [box_scores_or_none[i] for i in order]
        if self.max_people is not None:
            boxes, box_scores_or_none = boxes[:self.max_people], box_scores_or_none[:self.max_people]
        keypoints, scores = self.estimate(work, boxes)
        people = [
            ops.wholebody_to_person(keypoints[i], scores[i], (work_w, work_h), self.thresholds.keypoint,
                                    box=boxes[i], box_score=box_scores_or_none[i])
            for i in range(len(boxes))
        ]
        return PoseFrame(people, width, height)
