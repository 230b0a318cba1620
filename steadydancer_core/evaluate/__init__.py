"""Evaluation of generated videos: the paper's Table 1 metrics and the two promises of the method.

* Frame fidelity against the ground truth (``frame_metrics``): SSIM, PSNR (torchmetrics), DisCo's SSIM
  (scikit-image), LPIPS (torchmetrics, VGG backbone).
* Set metrics (``distribution``): FID (torchmetrics + torch-fidelity's Inception) and FVD (cd-fvd's I3D).
* First-frame fidelity: PSNR/SSIM/LPIPS of generated frame 0 against the reference image.
* Pose following (``pose_following``): detected poses of the generated frames against the driving aligned
  keypoints — normalised keypoint error and PCK@0.05/0.1.
* Temporal smoothness (``temporal``): per-frame change with the step 0→1 reported separately.

``evaluate(pairs, config)`` returns ``{"mean": {metric: value}, "per_video": [...], "settings": {...}}``;
``write_report`` writes it as JSON plus a CSV. The command line is ``python -m steadydancer_core evaluate``.
LPIPS, FID and FVD need ``requirements-eval.txt`` (torchvision, torch-fidelity, cd-fvd); their weights are
fetched once into ``models/eval/checkpoints`` (``backbones``).
"""
from .backbones import BackboneMissing, ensure_backbones, resolve_eval_models_dir
from .inputs import FramePolicy, Pair, pair_inputs
from .pose_following import PoseFollowing, pose_following
from .report import write_report
from .run import METRICS, EvalConfig, evaluate

__all__ = [
    "METRICS", "BackboneMissing", "EvalConfig", "FramePolicy", "Pair", "PoseFollowing", "ensure_backbones",
    "evaluate", "pair_inputs", "pose_following", "resolve_eval_models_dir", "write_report",
]
