"""Where the DWPose ONNX files live, and fetching them from the Hugging Face hub when they are absent.

One folder convention for the command line and ComfyUI: ``models/steadydancer_pose/`` (``downloads.
POSE_FOLDER``). The CLI's default is that folder in the ComfyUI install the repository sits in
(``<ComfyUI>/custom_nodes/<this pack>``), otherwise in the repository (``<repo>/models/steadydancer_pose``,
where ``download --dir models`` puts it when run from the repository root).
"""
from __future__ import annotations

import os
from pathlib import Path

from ... import downloads
from ...errors import UserError

MODELS_DIR_ENV = "STEADYDANCER_MODELS_DIR"
DWPOSE_REPO = downloads.DWPOSE_REPO
DETECTOR_FILE = downloads.BY_KEY["pose_detector"].comfy_name
POSE_FILE = downloads.BY_KEY["pose_model"].comfy_name
DWPOSE_FILES = (DETECTOR_FILE, POSE_FILE)
REPO_ROOT = Path(__file__).resolve().parents[3]


class ModelFilesMissing(UserError, FileNotFoundError):
    """Pose model files are absent and could not be fetched."""


def default_models_dir(repo_root: Path = REPO_ROOT) -> Path:
    """``<ComfyUI>/models/steadydancer_pose`` when the repository is a ComfyUI custom node, else
    ``<repo>/models/steadydancer_pose``."""
    comfyui = repo_root.parent.parent
    if repo_root.parent.name == "custom_nodes" and (comfyui / "models").is_dir():
        return comfyui / "models" / downloads.POSE_FOLDER
    return repo_root / "models" / downloads.POSE_FOLDER


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The models folder: the argument, else ``$STEADYDANCER_MODELS_DIR``, else :func:`default_models_dir`."""
    if models_dir is not None:
        return Path(models_dir)
    from_env = os.environ.get(MODELS_DIR_ENV)
    return Path(from_env) if from_env else default_models_dir()


def _missing_message(folder: Path, missing: list[str], reason: str) -> str:
    files = "\n".join(f"  - {name}: {DWPOSE_REPO} {name}" for name in missing)
    return (
        f"DWPose model files missing: {', '.join(missing)} not in {folder}, and {reason}.\n{files}\n"
        f"  put them in {folder} (or point ${MODELS_DIR_ENV} / --models-dir at the folder that holds them); "
        f"where the hub is reachable: {downloads.download_command('standalone', 'models')} --dit none --no-wan "
        f"(run in the repository). The 'mediapipe' backend works offline without these files."
    )


def ensure_dwpose_models(models_dir: str | os.PathLike | None = None, *, download: bool = True,
                         hub: downloads.Hub | None = None) -> tuple[Path, Path]:
    """Paths of ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx``, fetching absent ones from ``yzd-v/DWPose``.

    The hub is probed once first: unreachable (offline, ``HF_HUB_OFFLINE``, no huggingface_hub) gives one
    ``ModelFilesMissing`` at once, without the hub's retries; nothing is created in the folder then, and a
    failed transfer leaves no lock file or empty folder (``downloads.fetch_all``)."""
    folder = resolve_models_dir(models_dir)
    missing = [name for name in DWPOSE_FILES if not (folder / name).is_file()]
    if not missing:
        return folder / DETECTOR_FILE, folder / POSE_FILE
    if not download:
        raise ModelFilesMissing(_missing_message(folder, missing, "downloading is disabled"))
    hub = hub or downloads.HuggingFaceHub()
    reason = hub.unreachable_reason()
    if reason:
        raise ModelFilesMissing(_missing_message(folder, missing, f"the Hugging Face hub cannot be reached ({reason})"))
    transfers = [downloads.Transfer(downloads.BY_KEY[key], downloads.BY_KEY[key].pattern,
                                    folder / downloads.BY_KEY[key].comfy_name, None)
                 for key in downloads.POSE_KEYS if downloads.BY_KEY[key].comfy_name in missing]
    try:
        downloads.fetch_all(transfers, folder, hub)
    except downloads.DownloadError as error:
        raise ModelFilesMissing(_missing_message(folder, missing, f"fetching failed: {error}")) from None
    return folder / DETECTOR_FILE, folder / POSE_FILE
