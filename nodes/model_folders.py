"""Model folders of the pack, registered with ComfyUI's ``folder_paths`` (models/<name>)."""
from __future__ import annotations

import os

import folder_paths

#: Cached T5 conditionings written by 'SteadyDancer Save Text Embeds'.
TEXT_EMBEDS = "steadydancer_text_embeds"
#: Pose detector models (YOLOX / DWPose ONNX files).
POSE_MODELS = "steadydancer_pose"

_EXTENSIONS = {TEXT_EMBEDS: {".safetensors"}, POSE_MODELS: {".onnx"}}


def register() -> None:
    """Add models/<name> for each folder (idempotent; keeps paths an extra_model_paths.yaml added)."""
    for name, extensions in _EXTENSIONS.items():
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        folder_paths.folder_names_and_paths[name][1].update(extensions)


def default_folder(name: str) -> str:
    """Where new files of ``name`` are written: the first registered path, created if needed."""
    path = folder_paths.get_folder_paths(name)[0]
    os.makedirs(path, exist_ok=True)
    return path
