"""Every model file the pack uses: where it lives on the Hugging Face hub and where each set-up puts it.

This table is the single source for ``python -m steadydancer_core download``, the README's model table
and every error message that says what to download (``missing_files_message``). Two layouts:

* ``comfyui``: each file in ``<ComfyUI>/models/<folder>/`` under the name the workflows in ``workflows/``
  load (the hub's folders flattened away);
* ``standalone``: the folders ``animate`` and ``poses`` read (``--wan-dir``, ``--dit``, the pose models).

Transfers go through ``huggingface_hub`` (its progress bars, resumable partial files). A download is
staged in a hidden folder beside its destination and moved into place whole; the hub is probed once
before anything is fetched, so an offline machine gets one message at once instead of retries.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

from .atomic_output import remove_empty_tree, topmost_missing
from .errors import UserError

LAYOUTS = ("comfyui", "standalone")
#: The DiT variants: Kijai's fp8-scaled single file (what the workflows load), Kijai's fp16 single file,
#: the authors' fp32 shards (a folder ``animate --dit`` reads; ComfyUI needs them merged into one file).
DIT_CHOICES = ("fp8", "fp16", "official", "none")
DEFAULT_DIT = {"comfyui": "fp8", "standalone": "official"}
#: The one pose-model folder name, in ComfyUI's models/ and in the standalone models folder alike.
POSE_FOLDER = "steadydancer_pose"
WAN_DIFFUSERS_FOLDER = "Wan2.1-I2V-14B-480P-Diffusers"
OFFICIAL_DIT_FOLDER = "SteadyDancer-14B"
#: Where the official shards wait in a ComfyUI install until they are merged (not a folder ComfyUI scans).
COMFY_SHARDS_FOLDER = "steadydancer_shards"
MERGED_DIT_NAME = "SteadyDancer-14B_bf16.safetensors"
STAGING_NAME = ".steadydancer-download"
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ModelFile:
    """One file (or, with a glob ``pattern``, every matching file) of a hub repository."""

    key: str
    what: str
    repo: str
    pattern: str  # a path in the repo, or a glob such as "vae/*" listed from the hub when fetched
    comfy_folder: str | None  # <ComfyUI>/models/<comfy_folder>/<comfy_name>; None: not used by ComfyUI
    comfy_name: str | None
    standalone: str | None  # destination under the standalone models folder; None: not used there
    size: int | None = None  # bytes, where known here (shown offline); online the hub's listing is used
    strip: str = ""  # repo-path prefix dropped in the standalone destination

    @property
    def is_glob(self) -> bool:
        return any(ch in self.pattern for ch in "*?[")


DWPOSE_REPO = "yzd-v/DWPose"
WAN_REPACKAGED_REPO = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
WAN_DIFFUSERS_REPO = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
OFFICIAL_DIT_REPO = "MCG-NJU/SteadyDancer-14B"
KIJAI_REPO = "Kijai/WanVideo_comfy"
KIJAI_FP8_REPO = "Kijai/WanVideo_comfy_fp8_scaled"
#: The Diffusers subfolders standalone inference reads (encoders.WAN_COMPONENTS), never transformer/.
WAN_DIFFUSERS_SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "image_encoder", "image_processor")

FILES: tuple[ModelFile, ...] = (
    ModelFile("dit_fp8", "SteadyDancer DiT, fp8-scaled (Kijai; the workflows' default)", KIJAI_FP8_REPO,
              "SteadyDancer/Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors", "diffusion_models",
              "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors",
              "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors", size=16_410_198_058),
    ModelFile("dit_fp16", "SteadyDancer DiT, fp16 single file (Kijai)", KIJAI_REPO,
              "SteadyDancer/Wan21_I2V_SteadyDancer_fp16.safetensors", "diffusion_models",
              "Wan21_I2V_SteadyDancer_fp16.safetensors", "Wan21_I2V_SteadyDancer_fp16.safetensors"),
    ModelFile("dit_official_config", "SteadyDancer DiT, official: config", OFFICIAL_DIT_REPO, "config.json",
              COMFY_SHARDS_FOLDER, f"{OFFICIAL_DIT_FOLDER}/config.json", f"{OFFICIAL_DIT_FOLDER}/config.json"),
    ModelFile("dit_official", "SteadyDancer DiT, official fp32 shards + index (MCG-NJU)", OFFICIAL_DIT_REPO,
              "diffusion_pytorch_model*", COMFY_SHARDS_FOLDER, OFFICIAL_DIT_FOLDER, OFFICIAL_DIT_FOLDER),
    ModelFile("vae", "Wan2.1 VAE", WAN_REPACKAGED_REPO, "split_files/vae/wan_2.1_vae.safetensors", "vae",
              "wan_2.1_vae.safetensors", None),
    ModelFile("text_encoder", "umT5-XXL text encoder, fp8-scaled", WAN_REPACKAGED_REPO,
              "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders",
              "umt5_xxl_fp8_e4m3fn_scaled.safetensors", None),
    ModelFile("clip_vision", "CLIP vision ViT-H", WAN_REPACKAGED_REPO,
              "split_files/clip_vision/clip_vision_h.safetensors", "clip_vision", "clip_vision_h.safetensors", None),
    *(ModelFile(f"wan_{sub}", f"Wan2.1-I2V Diffusers {sub}/", WAN_DIFFUSERS_REPO, f"{sub}/*", None, None,
                f"{WAN_DIFFUSERS_FOLDER}/{sub}", strip=f"{sub}/") for sub in WAN_DIFFUSERS_SUBFOLDERS),
    ModelFile("pose_detector", "YOLOX-L person detector (DWPose)", DWPOSE_REPO, "yolox_l.onnx", POSE_FOLDER,
              "yolox_l.onnx", f"{POSE_FOLDER}/yolox_l.onnx"),
    ModelFile("pose_model", "DWPose-L whole-body keypoints", DWPOSE_REPO, "dw-ll_ucoco_384.onnx", POSE_FOLDER,
              "dw-ll_ucoco_384.onnx", f"{POSE_FOLDER}/dw-ll_ucoco_384.onnx"),
    ModelFile("lora_lightx2v", "lightx2v 4-step distillation LoRA (workflow (b), optional)", KIJAI_REPO,
              "Lightx2v/lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors", "loras",
              "lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors", None),
)
BY_KEY = {file.key: file for file in FILES}
DIT_KEYS = {"fp8": ("dit_fp8",), "fp16": ("dit_fp16",), "official": ("dit_official_config", "dit_official"),
            "none": ()}
COMFY_WAN_KEYS = ("vae", "text_encoder", "clip_vision")
STANDALONE_WAN_KEYS = tuple(f"wan_{sub}" for sub in WAN_DIFFUSERS_SUBFOLDERS)
POSE_KEYS = ("pose_detector", "pose_model")


class DownloadError(UserError):
    """The hub cannot be reached or a file cannot be fetched; the message lists what was to be fetched."""


def download_command(layout: str, root: str | None = None, dit: str | None = None) -> str:
    """The one command that fetches a set-up's files (used by README and every error message)."""
    target = f"--comfyui {root or 'PATH/TO/ComfyUI'}" if layout == "comfyui" else f"--dir {root or 'models'}"
    dit_flag = "" if dit in (None, DEFAULT_DIT[layout]) else f" --dit {dit}"
    return f"python -m steadydancer_core download {target}{dit_flag}"


def keys_for(layout: str, dit: str, *, wan: bool = True, pose: bool = True, lora: bool = False) -> list[str]:
    """The table keys a set-up needs."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if dit not in DIT_CHOICES:
        raise ValueError(f"dit must be one of {DIT_CHOICES}, got {dit!r}")
    keys = list(DIT_KEYS[dit])
    if wan:
        keys += COMFY_WAN_KEYS if layout == "comfyui" else STANDALONE_WAN_KEYS
    if pose:
        keys += POSE_KEYS
    if lora:
        if layout != "comfyui":
            raise ValueError("the lightx2v LoRA is for the ComfyUI workflows; standalone animate applies no LoRA")
        keys.append("lora_lightx2v")
    return keys


def destination(file: ModelFile, layout: str, root: Path) -> Path:
    """Where ``file`` goes: a file path, or for a glob entry the folder its files go into."""
    if layout == "comfyui":
        return root / "models" / file.comfy_folder / file.comfy_name
    return root / file.standalone


def target_of(file: ModelFile, layout: str, root: Path, repo_path: str) -> Path:
    """The destination of one concrete repo file of ``file``."""
    base = destination(file, layout, root)
    if not file.is_glob:
        return base
    return base / repo_path[len(file.strip):]


# ---- the hub ---------------------------------------------------------------------------------------

class Hub(Protocol):
    """What the downloader needs from the hub (``HuggingFaceHub``; tests pass a local stand-in)."""

    def unreachable_reason(self) -> str | None: ...

    def list_files(self, repo: str) -> dict[str, int | None]: ...

    def file_size(self, repo: str, path: str) -> int | None: ...

    def fetch(self, repo: str, path: str, local_dir: Path) -> Path: ...


class HuggingFaceHub:
    """``huggingface_hub``: its endpoint, proxy and token settings, progress bars and resumable downloads."""

    def unreachable_reason(self) -> str | None:
        """None when the hub answers; else why not, found with one short request (no retry loop)."""
        try:
            from huggingface_hub import constants
            from huggingface_hub.utils import get_session
        except ImportError:
            return "huggingface_hub is not installed (pip install huggingface_hub)"
        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        try:
            get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - requests or httpx; any failure means "not reachable"
            return f"{constants.ENDPOINT} is not reachable ({type(error).__name__})"
        return None

    def list_files(self, repo: str) -> dict[str, int | None]:
        from huggingface_hub import HfApi

        return {entry.path: getattr(entry, "size", None)
                for entry in HfApi().list_repo_tree(repo, recursive=True) if hasattr(entry, "size")}

    def file_size(self, repo: str, path: str) -> int | None:
        from huggingface_hub import HfApi

        infos = HfApi().get_paths_info(repo, [path])
        return getattr(infos[0], "size", None) if infos else None

    def fetch(self, repo: str, path: str, local_dir: Path) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo, filename=path, local_dir=str(local_dir)))


# ---- planning and fetching -------------------------------------------------------------------------

@dataclass(frozen=True)
class Transfer:
    """One concrete file to fetch (``size`` None when not known) and where it goes."""

    file: ModelFile
    repo_path: str
    target: Path
    size: int | None

    @property
    def present(self) -> bool:
        return self.target.is_file() and (self.size is None or self.target.stat().st_size == self.size)


def plan(keys: Sequence[str], layout: str, root: Path, hub: Hub | None) -> list[Transfer]:
    """The files of ``keys``; globs are listed and sizes read from ``hub`` (None: offline, sizes as known)."""
    transfers = []
    listings: dict[str, dict[str, int | None]] = {}
    for key in keys:
        file = BY_KEY[key]
        if file.is_glob:
            if hub is None:
                transfers.append(Transfer(file, file.pattern, destination(file, layout, root), file.size))
                continue
            if file.repo not in listings:
                listings[file.repo] = hub.list_files(file.repo)
            matches = sorted(p for p in listings[file.repo] if fnmatch.fnmatchcase(p, file.pattern))
            if not matches:
                raise DownloadError(f"{file.repo} lists no file matching {file.pattern}; the repository changed")
            transfers += [Transfer(file, p, target_of(file, layout, root, p), listings[file.repo][p]) for p in matches]
        else:
            size = file.size if hub is None else hub.file_size(file.repo, file.pattern)  # the hub's word first
            transfers.append(Transfer(file, file.pattern, destination(file, layout, root), size))
    return transfers


def format_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    return f"{size / 1024**3:.2f} GiB" if size >= 1024**3 else f"{size / 1024**2:.1f} MiB"


def describe(transfers: Iterable[Transfer]) -> list[str]:
    """One line per file: repo, file, size, destination, and whether it is already there."""
    lines = []
    for transfer in transfers:
        listed = not (transfer.file.is_glob and transfer.repo_path == transfer.file.pattern)
        state = "  [present]" if listed and transfer.present else ""
        lines.append(f"{transfer.file.repo}  {transfer.repo_path}  ({format_size(transfer.size)})  -> "
                     f"{transfer.target}{state}")
    return lines


def _clean_staging(staging: Path) -> None:
    """After a failure: keep only partial downloads (``*.incomplete``, which the same command resumes);
    drop the hub's lock, metadata and ignore files and every folder left empty."""
    if not staging.exists():
        return
    for path in staging.rglob("*"):
        if path.is_file() and path.suffix != ".incomplete":
            path.unlink(missing_ok=True)
    for folder in sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(staging.iterdir()):
        staging.rmdir()


def fetch_all(transfers: Sequence[Transfer], root: Path, hub: Hub) -> list[Path]:
    """Fetch every transfer not already present; each file is moved into place only when complete.

    A failure stops at once with one :class:`DownloadError` naming the file; files fetched before it stay
    in place, its partial download stays in the hidden staging folder so the same command resumes it, and
    no lock file or folder made empty is left."""
    staging = root / STAGING_NAME
    new_folders = {topmost_missing(p) for p in [staging, *(t.target.parent for t in transfers)]} - {None}
    written = []
    try:
        for transfer in transfers:
            if transfer.present:
                continue
            try:
                fetched = hub.fetch(transfer.file.repo, transfer.repo_path, staging)
            except Exception as error:  # noqa: BLE001 - hub, network and disk errors all stop the run here
                detail = str(error).splitlines()[0] if str(error) else "no detail"
                raise DownloadError(
                    f"fetching {transfer.file.repo} {transfer.repo_path} failed ({type(error).__name__}: {detail}); "
                    f"{len(written)} file(s) fetched before it stay in place and the same command resumes") from None
            transfer.target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched, transfer.target)
            written.append(transfer.target)
    except BaseException:
        _clean_staging(staging)
        for folder in new_folders:
            remove_empty_tree(folder)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return written


def unreachable_error(reason: str, wanted: Sequence[str]) -> DownloadError:
    """The one error for an unreachable hub, listing what would have been fetched."""
    listing = "\n".join(f"  {line}" for line in wanted)
    return DownloadError(f"the Hugging Face hub cannot be reached: {reason}. Nothing was downloaded. "
                         f"It would have fetched:\n{listing}")


def missing_files_message(keys: Sequence[str], layout: str, root: Path | str | None, dit: str | None = None,
                          *, command: bool = True) -> str:
    """Lines naming each file's repo, path and destination, and (``command``) the one command that fetches
    the set-up's files."""
    root_path = Path(root) if root is not None else Path("models")
    lines = [f"  - {BY_KEY[key].what}: {BY_KEY[key].repo} {BY_KEY[key].pattern} -> "
             f"{destination(BY_KEY[key], layout, root_path)}" for key in keys]
    if command:
        lines.append(f"  fetch them with: {download_command(layout, None if root is None else str(root), dit)}")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's model table, rendered from ``FILES``."""
    rows = ["| file | Hugging Face repo and path | ComfyUI (`--comfyui PATH`) | standalone (`--dir models`) |",
            "|---|---|---|---|"]
    for file in FILES:
        comfy = f"`models/{file.comfy_folder}/{file.comfy_name}`" if file.comfy_folder else "—"
        alone = f"`models/{file.standalone}`" if file.standalone else "—"
        rows.append(f"| {file.what} | `{file.repo}` `{file.pattern}` | {comfy} | {alone} |")
    return "\n".join(rows)
