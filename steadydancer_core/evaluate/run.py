"""One evaluation run: check every pair, fetch the networks the chosen metrics need, then compute them pair by
pair (one pair in memory at a time) and gather the report ``{"mean", "per_video", "settings"}``."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..pose.detect.protocol import PoseDetector
from ..video import read_image
from .backbones import FID_INCEPTION, FVD_I3D, LPIPS_BACKBONES, Backbone, ensure_backbones, resolve_eval_models_dir
from .distribution import FVD_CLIP_FRAMES, Fid, Fvd
from .frame_metrics import PSNR_CAP, SSIM_SETTINGS, Lpips, psnr_per_frame, ssim_disco_per_frame, ssim_per_frame
from .inputs import FramePolicy, Pair, comparable, load_driving_keypoints, read_clip
from .pose_following import PCK_THRESHOLDS, detect_generated_poses, pose_following
from .temporal import temporal_summary

METRICS = ("ssim", "ssim_disco", "psnr", "lpips", "fid", "fvd", "first_frame", "pose", "temporal")
#: metric -> the importable modules it needs (torchvision comes with LPIPS/FID/FVD: requirements-eval.txt)
LIBRARIES = {
    "ssim": ("torchmetrics",), "ssim_disco": ("skimage",), "psnr": ("torchmetrics",), "first_frame": ("torchmetrics",),
    "lpips": ("torchmetrics", "torchvision"), "fid": ("torchmetrics", "torch_fidelity", "torchvision"),
    "fvd": ("cdfvd", "torchvision"),
}
#: metrics averaged over all frames of all clips (the others over clips, FID/FVD over the whole set)
FRAME_POOLED = ("ssim", "ssim_disco", "psnr", "lpips")
#: per-clip counts that the mean row sums instead of averaging
COUNTS = ("frames", "pose_joints", "pose_frames_skipped")


@dataclass(frozen=True)
class EvalConfig:
    metrics: tuple[str, ...]
    policy: FramePolicy = field(default_factory=FramePolicy)
    lpips_net: str = "vgg"
    device: str = "cpu"
    models_dir: Path | None = None
    download: bool = True
    progress: bool = True
    pose_backend: str | None = None


def check_metrics(metrics: Sequence[str], pairs: Sequence[Pair]) -> tuple[str, ...]:
    """The metrics if they exist, their inputs were given and their libraries import; else one clear error."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"--metrics: unknown {', '.join(unknown)}; expected some of {', '.join(METRICS)}")
    if "first_frame" in metrics and any(p.image is None for p in pairs):
        raise InputError("--metrics first_frame needs --image (the reference image the video started from)")
    if "pose" in metrics and any(p.keypoints is None for p in pairs):
        raise InputError("--metrics pose needs --keypoints (the driving aligned keypoints, e.g. the keypoints.json "
                         "written by `python -m steadydancer_core poses`)")
    missing = sorted({module for m in metrics for module in LIBRARIES.get(m, ())
                      if importlib.util.find_spec(module) is None})
    if missing:
        needing = [m for m in metrics if set(LIBRARIES.get(m, ())) & set(missing)]
        raise InputError(f"--metrics {','.join(needing)} need {', '.join(missing)}, which are not installed: "
                         f"pip install -r requirements-eval.txt (with the torchvision of your torch), or leave "
                         f"{','.join(needing)} out of --metrics")
    return tuple(dict.fromkeys(metrics))


def needed_backbones(config: EvalConfig) -> list[Backbone]:
    needed = []
    if "lpips" in config.metrics:
        needed.append(LPIPS_BACKBONES[config.lpips_net])
    if "fid" in config.metrics:
        needed.append(FID_INCEPTION)
    if "fvd" in config.metrics:
        needed.append(FVD_I3D)
    return needed


def _load_pair(pair: Pair, config: EvalConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    generated = read_clip(pair.generated, config.policy.fps, "--generated")
    reference = read_clip(pair.reference, config.policy.fps, "--reference")
    image = read_image(pair.image) if pair.image is not None and "first_frame" in config.metrics else None
    return comparable(generated, reference, config.policy, pair.name, image)


def check_pairs(pairs: Sequence[Pair], config: EvalConfig) -> list[int]:
    """Read every pair once and check counts, sizes and keypoints before anything heavy; the frame counts."""
    counts = []
    for pair in tqdm(pairs, desc="checking inputs", unit="clip", disable=not config.progress):
        generated, _, _ = _load_pair(pair, config)
        if "temporal" in config.metrics and len(generated) < 2:
            raise InputError(f"{pair.name}: 1 frame; the temporal metrics need at least 2")
        if "pose" in config.metrics:
            load_driving_keypoints(pair.keypoints, len(generated), pair.name)
        counts.append(len(generated))
    if "fid" in config.metrics and sum(counts) < 2:
        raise InputError(f"FID needs at least 2 frames per side; the clips hold {sum(counts)}")
    clips = sum(count // FVD_CLIP_FRAMES for count in counts)
    if "fvd" in config.metrics and clips < 2:
        raise InputError(f"FVD needs at least 2 clips of {FVD_CLIP_FRAMES} frames per side; the clips give {clips} "
                         f"(leave fvd out of --metrics for shorter videos)")
    return counts


def _library_versions(metrics: Sequence[str]) -> dict[str, str]:
    names = ["numpy", "torch", "torchmetrics"]
    if any(m in ("lpips", "fid", "fvd") for m in metrics):
        names.append("torchvision")
    if "ssim_disco" in metrics:
        names.append("scikit-image")
    if "fid" in metrics:
        names.append("torch-fidelity")
    if "fvd" in metrics:
        names.append("cd-fvd")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def settings_of(config: EvalConfig, weights: dict[str, Path]) -> dict[str, Any]:
    """Every choice behind the numbers, for the report."""
    size = config.policy.size
    return {
        "metrics": list(config.metrics),
        "frames": {"fps": config.policy.fps or "native", "max_frames": config.policy.frames,
                   "size": "must match" if size is None else (size if isinstance(size, str) else f"{size[0]}x{size[1]}"),
                   "resize": "cv2 INTER_AREA"},
        "psnr": {"data_range": 255, "cap_db": PSNR_CAP, "per": "frame, all pixels and channels"},
        "ssim": {"data_range": 255, "channels": "RGB", **SSIM_SETTINGS},
        "ssim_disco": {"library": "scikit-image structural_similarity", "channels": "cv2 grey", "win_size": 7,
                       "gaussian": False} if "ssim_disco" in config.metrics else None,
        "lpips": {"net": config.lpips_net, "normalize": True} if "lpips" in config.metrics else None,
        "fid": {"network": "torch-fidelity InceptionV3 (torchmetrics)", "feature": 2048, "antialias": True,
                "over": "all frames of all clips"} if "fid" in config.metrics else None,
        "fvd": {"network": "cd-fvd I3D (i3d_pretrained_400.pt, logits)", "clip_frames": FVD_CLIP_FRAMES,
                "resize": "224x224 bilinear (cd-fvd)", "clips": "consecutive, non-overlapping, remainder dropped"}
        if "fvd" in config.metrics else None,
        "first_frame": "PSNR/SSIM (and LPIPS when selected) of generated frame 0 vs --image"
        if "first_frame" in config.metrics else None,
        "pose": {"backend": config.pose_backend, "joints": "OpenPose-18 body, main person",
                 "scale": "max side of the driving person's visible-joint box, pixels of the generated frame",
                 "pck_thresholds": list(PCK_THRESHOLDS)} if "pose" in config.metrics else None,
        "temporal": "mean |f[t+1]-f[t]| on 0..255; step 0->1 separate" if "temporal" in config.metrics else None,
        "weights": {name: str(path) for name, path in weights.items()},
        "models_dir": str(resolve_eval_models_dir(config.models_dir)),
        "device": config.device,
        "libraries": _library_versions(config.metrics),
    }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate(pairs: Sequence[Pair], config: EvalConfig,
             detector: Callable[[], PoseDetector] | None = None) -> dict[str, Any]:
    """Compute ``config.metrics`` for ``pairs``; returns the report dictionary (see the package docstring).

    ``detector`` builds the pose detector for the ``pose`` metric; it is called once the inputs are checked.
    """
    if not pairs:
        raise InputError("nothing to evaluate: no clip pairs")
    metrics = check_metrics(config.metrics, pairs)
    if "pose" in metrics and detector is None:
        raise InputError("--metrics pose needs a pose detector")
    check_pairs(pairs, config)
    pose_detector = detector() if "pose" in metrics else None
    weights = ensure_backbones(needed_backbones(config), config.models_dir, download=config.download)
    lpips = Lpips(config.lpips_net, config.models_dir, config.device) if "lpips" in metrics else None
    fid = Fid(weights[FID_INCEPTION.filename], config.device) if "fid" in metrics else None
    fvd = Fvd(weights[FVD_I3D.filename], config.device) if "fvd" in metrics else None

    per_video, pooled = [], {name: [] for name in FRAME_POOLED}
    for pair in tqdm(pairs, desc="evaluating", unit="clip", disable=not config.progress):
        generated, reference, image = _load_pair(pair, config)
        row: dict[str, Any] = {"name": pair.name, "generated": str(pair.generated), "reference": str(pair.reference),
                               "frames": len(generated), "width": generated.shape[2], "height": generated.shape[1]}
        per_frame = {}
        if "ssim" in metrics:
            per_frame["ssim"] = ssim_per_frame(generated, reference)
        if "ssim_disco" in metrics:
            per_frame["ssim_disco"] = ssim_disco_per_frame(generated, reference)
        if "psnr" in metrics:
            per_frame["psnr"] = psnr_per_frame(generated, reference)
        if lpips is not None:
            per_frame["lpips"] = lpips.per_frame(generated, reference)
        for name, values in per_frame.items():
            row[name] = float(values.mean())
            pooled[name].extend(values.tolist())
        if "first_frame" in metrics:
            first, target = generated[:1], image[None]
            row["first_frame_psnr"] = float(psnr_per_frame(first, target)[0])
            row["first_frame_ssim"] = float(ssim_per_frame(first, target)[0])
            if lpips is not None:
                row["first_frame_lpips"] = float(lpips.per_frame(first, target)[0])
        if "temporal" in metrics:
            row.update(temporal_summary(generated))
            row.update(temporal_summary(reference, prefix="reference_temporal"))
        if "pose" in metrics:
            driving = load_driving_keypoints(pair.keypoints, len(generated), pair.name)
            detected = detect_generated_poses(pose_detector, generated, pair.name, config.progress)
            row.update(pose_following(detected, driving, generated.shape[2], generated.shape[1]).as_dict())
        if fid is not None:
            fid.update(generated, real=False)
            fid.update(reference, real=True)
        if fvd is not None:
            fvd.update(generated, real=False)
            fvd.update(reference, real=True)
        per_video.append(row)

    mean: dict[str, Any] = {name: float(np.mean(values)) for name, values in pooled.items() if values}
    for key, value in per_video[0].items():
        if key in COUNTS:
            mean[key] = int(sum(row[key] for row in per_video))
        elif key not in mean and key not in ("name", "generated", "reference", "width", "height") \
                and isinstance(value, (int, float)):
            mean[key] = _mean([row.get(key) for row in per_video])
    if fid is not None:
        mean["fid"] = fid.compute()
    if fvd is not None:
        mean["fvd"] = fvd.compute()
        mean["fvd_clips"] = fvd.counts["generated"]
    mean["videos"] = len(per_video)
    return {"mean": mean, "per_video": per_video, "settings": settings_of(config, weights)}
