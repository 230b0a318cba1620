"""Where the DWPose ONNX files live, and fetching them from the Hugging Face hub when they are absent."""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import UserError

MODELS_DIR_ENV = "STEADYDANCER_MODELS_DIR"
DWPOSE_REPO = "yzd-v/DWPose"
DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DWPOSE_FILES = (DETECTOR_FILE, POSE_FILE)
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[3] / "models" / "pose"


class ModelFilesMissing(UserError, FileNotFoundError):
    """Pose model files are absent and could not be fetched."""


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The models folder: the argument, else ``$STEADYDANCER_MODELS_DIR``, else ``<repo>/models/pose``."""
    if models_dir is not None:
        return Path(models_dir)
    from_env = os.environ.get(MODELS_DIR_ENV)
    return Path(from_env) if from_env else DEFAULT_MODELS_DIR


def _missing_message(folder: Path, missing: list[str], reason: str) -> str:
    return (
        f"DWPose model files missing: {', '.join(missing)} not found in {folder} and {reason}.\n"
        f"Download them from https://huggingface.co/{DWPOSE_REPO} ({', '.join(DWPOSE_FILES)}) and put them in {folder} "
        f"(or point ${MODELS_DIR_ENV} / --models-dir at the folder that holds them). "
        f"The 'mediapipe' backend works offline without these files."
    )


def ensure_dwpose_models(models_dir: str | os.PathLike | None = None, *, download: bool = True) -> tuple[Path, Path]:
    """Paths of ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx``, fetching absent ones from ``yzd-v/DWPose``.

    Any failure to fetch (offline, hub error, no huggingface_hub) becomes one ``ModelFilesMissing`` that
    says which files to put where; the hub's own traceback is deliberately not chained.
    """
    folder = resolve_models_dir(models_dir)
    missing = [name for name in DWPOSE_FILES if not (folder / name).is_file()]
    if missing and not download:
        raise ModelFilesMissing(_missing_message(folder, missing, "downloading is disabled"))
    for name in missing:
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(repo_id=DWPOSE_REPO, filename=name, local_dir=str(folder))
        except Exception as exc:  # noqa: BLE001 - every hub failure means the same thing to the user
            reason = f"fetching them from the Hugging Face hub failed ({type(exc).__name__})"
            error = ModelFilesMissing(_missing_message(folder, missing, reason))
            raise error from None
    return folder / DETECTOR_FILE, folder / POSE_FILE
