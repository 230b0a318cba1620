"""Pose detectors: DWPose on onnxruntime (fidelity backend) and mediapipe (optional offline backend).

Every backend implements ``PoseDetector.detect(image) -> PoseFrame``; ``create_detector`` builds one by name.
The mediapipe module is imported only when that backend is asked for (it is an optional extra).
"""
from __future__ import annotations

import os
from typing import Any

from .dwpose import DWPoseDetector, OnnxModelError
from .dwpose_ops import DetectionThresholds
from .models import MODELS_DIR_ENV, ModelFilesMissing, ensure_dwpose_models, resolve_models_dir
from .protocol import PoseDetector, detect_frames

BACKENDS = ("dwpose", "mediapipe")


def create_detector(backend: str = "dwpose", *, models_dir: str | os.PathLike | None = None,
                    download: bool = True, **options: Any) -> PoseDetector:
    """A detector by backend name; ``options`` go to the backend's constructor."""
    if backend == "dwpose":
        return DWPoseDetector.from_models_dir(models_dir, download=download, **options)
    if backend == "mediapipe":
        from .mediapipe_backend import MediaPipeDetector

        return MediaPipeDetector(**options)
    raise ValueError(f"pose backend must be one of {BACKENDS}, got {backend!r}")


__all__ = [
    "BACKENDS", "DWPoseDetector", "DetectionThresholds", "MODELS_DIR_ENV", "ModelFilesMissing", "OnnxModelError",
    "PoseDetector", "create_detector", "detect_frames", "ensure_dwpose_models", "resolve_models_dir",
]
