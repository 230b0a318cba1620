"""The pretrained networks behind LPIPS, FID and FVD: where their weight files live and fetching them once.

Every file sits in ``<models>/checkpoints/`` (default ``<repo>/models/eval``, or ``$STEADYDANCER_EVAL_MODELS_DIR``,
or ``--models-dir``). That is torch.hub's cache layout, so torchvision finds the LPIPS backbone there without
downloading (:func:`torch_hub_dir`), and FID/FVD get their file by path. Absent files are fetched once with
``torch.hub.download_url_to_file`` (written to a temporary name and moved into place); any failure, offline
included, is one :class:`BackboneMissing` naming the files, their addresses and the folder, with no retry.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import UserError

EVAL_MODELS_ENV = "STEADYDANCER_EVAL_MODELS_DIR"
DEFAULT_EVAL_MODELS_DIR = Path(__file__).resolve().parents[2] / "models" / "eval"


class BackboneMissing(UserError, FileNotFoundError):
    """A metric's pretrained weights are absent and could not be fetched."""


@dataclass(frozen=True)
class Backbone:
    """One weight file: the metric that needs it, its file name in ``checkpoints/`` and where it comes from."""

    metric: str
    filename: str
    url: str
    source: str


# The addresses are the libraries' own: torchvision's VGG16_Weights.IMAGENET1K_V1 / AlexNet_Weights.IMAGENET1K_V1
# (torchmetrics' LPIPS loads its backbone through them), torch_fidelity's URL_INCEPTION_V3 (torchmetrics' FID
# network) and the address cd-fvd's load_i3d_model fetches (the I3D DisCo's FVD uses, i3d_pretrained_400.pt).
# tests/test_evaluate_networks.py checks the first three against the installed libraries.
LPIPS_BACKBONES: dict[str, Backbone] = {
    "vgg": Backbone("lpips", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                    "torchvision VGG16 ImageNet weights (LPIPS backbone)"),
    "alex": Backbone("lpips", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                     "torchvision AlexNet ImageNet weights (LPIPS backbone)"),
}
FID_INCEPTION = Backbone(
    "fid", "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "torch-fidelity's InceptionV3 (TF FID weights, 2015-12-05)")
FVD_I3D = Backbone(
    "fvd", "i3d_pretrained_400.pt", "https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt",
    "cd-fvd's I3D (Kinetics-400), the network of DisCo's FVD")


def resolve_eval_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The argument, else ``$STEADYDANCER_EVAL_MODELS_DIR``, else ``<repo>/models/eval``."""
    if models_dir is not None:
        return Path(models_dir)
    from_env = os.environ.get(EVAL_MODELS_ENV)
    return Path(from_env) if from_env else DEFAULT_EVAL_MODELS_DIR


def backbone_path(backbone: Backbone, models_dir: str | os.PathLike | None = None) -> Path:
    return resolve_eval_models_dir(models_dir) / "checkpoints" / backbone.filename


def _missing_message(folder: Path, missing: Sequence[Backbone], reason: str) -> str:
    lines = [f"evaluation weights missing from {folder / 'checkpoints'} and {reason}:"]
    lines += [f"  {b.filename} ({b.source}, for {b.metric}): {b.url}" for b in missing]
    lines.append(f"Download them on a machine with internet and put them in {folder / 'checkpoints'} "
                 f"(or point --models-dir / ${EVAL_MODELS_ENV} at the folder holding checkpoints/), "
                 f"or leave those metrics out with --metrics.")
    return "\n".join(lines)


def ensure_backbones(backbones: Sequence[Backbone], models_dir: str | os.PathLike | None = None, *,
                     download: bool = True) -> dict[str, Path]:
    """The path of every file in ``backbones`` (by file name), fetching absent ones unless ``download`` is off."""
    folder = resolve_eval_models_dir(models_dir)
    missing = [b for b in dict.fromkeys(backbones) if not backbone_path(b, folder).is_file()]
    if missing and not download:
        raise BackboneMissing(_missing_message(folder, missing, "downloading is disabled (--no-download)"))
    for backbone in missing:
        target = backbone_path(backbone, folder)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Writes a temporary file beside the target and renames it when complete.
            torch.hub.download_url_to_file(backbone.url, str(target), progress=True)
        except Exception as exc:  # noqa: BLE001 - offline, HTTP error or disk: the user fixes each the same way
            reason = f"fetching {backbone.filename} failed ({type(exc).__name__}: {exc})"
            raise BackboneMissing(_missing_message(folder, missing, reason)) from None
    return {b.filename: backbone_path(b, folder) for b in backbones}


@contextlib.contextmanager
def torch_hub_dir(models_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """torch.hub's cache pointed at the evaluation models folder while the metrics are built, then restored, so
    torchvision's pretrained backbones load from ``<models>/checkpoints`` (set only for this block, never globally)."""
    folder = resolve_eval_models_dir(models_dir)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(folder))
    try:
        yield folder
    finally:
        torch.hub.set_dir(previous)
