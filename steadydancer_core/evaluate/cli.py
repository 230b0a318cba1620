"""``evaluate``: generated videos against reference videos -> report.json + report.csv.

    python -m steadydancer_core evaluate --generated out/ --reference gt/ [--image refs/] [--keypoints poses/]
        [--metrics ssim,ssim_disco,psnr,lpips,fid,fvd,first_frame,pose,temporal] [--out report.json]

Every input is read and checked (pairs by name, frame counts, sizes, keypoints) and the networks fetched or
found before any metric runs; the report and its CSV are written atomically, an existing one only with
``--overwrite``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..atomic_output import check_output_path
from ..errors import InputError, report_user_errors
from .backbones import EVAL_MODELS_ENV
from .inputs import FramePolicy, pair_inputs
from .report import csv_path_for, write_report
from .run import METRICS, EvalConfig, evaluate

if TYPE_CHECKING:
    from ..pose.detect.protocol import PoseDetector

DEFAULT_METRICS = ("ssim", "ssim_disco", "psnr", "lpips", "fid", "fvd", "temporal")


def _parse_metrics(text: str) -> tuple[str, ...]:
    metrics = tuple(m.strip() for m in text.replace(" ", ",").split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise argparse.ArgumentTypeError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; "
                                         f"expected a comma list of {', '.join(METRICS)}")
    return metrics


def _parse_size(text: str) -> str | tuple[int, int]:
    if text == "generated":
        return text
    match = re.fullmatch(r"(\d+)[x*](\d+)", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(f"expected 'generated' or WIDTHxHEIGHT, got {text!r}")
    return int(match[1]), int(match[2])


def _parse_fps(text: str) -> float | None:
    if text == "native":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'native', got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--generated", required=True, type=Path,
                        help="a generated video / frame folder, or a folder of them (paired with --reference by name)")
    inputs.add_argument("--reference", required=True, type=Path,
                        help="the ground-truth video / frame folder, or a folder of them with the same names")
    inputs.add_argument("--image", type=Path,
                        help="the reference image each video started from (a file, or a folder of <name>.png ...): "
                             "enables first_frame")
    inputs.add_argument("--keypoints", type=Path,
                        help="driving aligned keypoints (a poses keypoints.json or pose JSON; or a folder of "
                             "<name>.json / <name>/keypoints.json): enables pose")
    inputs.add_argument("--out", type=Path, default=Path("report.json"),
                        help="report JSON (default report.json); the CSV goes beside it with the suffix .csv")
    inputs.add_argument("--overwrite", action="store_true", help="replace an existing report and CSV")

    what = parser.add_argument_group("metrics")
    what.add_argument("--metrics", type=_parse_metrics,
                      help=f"comma list of {', '.join(METRICS)} (default {','.join(DEFAULT_METRICS)}, plus "
                           f"first_frame with --image and pose with --keypoints)")
    what.add_argument("--lpips-net", choices=("vgg", "alex"), default="vgg", help="LPIPS backbone (default vgg)")
    what.add_argument("--pose-backend", choices=("dwpose", "mediapipe"), default="dwpose",
                      help="pose detector for the pose metric (default dwpose, as the poses command)")
    what.add_argument("--pose-models-dir", type=Path, help="DWPose model folder (as poses --models-dir)")

    frames = parser.add_argument_group("frames")
    frames.add_argument("--fps", type=_parse_fps, default=None,
                        help="resample videos to this fps before comparing (default native; frame folders as they are)")
    frames.add_argument("--frames", type=int, help="compare only the first N frames of each clip")
    frames.add_argument("--size", type=_parse_size,
                        help="'generated': resize references to the generated size; WxH: resize all frames "
                             "(default: sizes must match)")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    runtime.add_argument("--models-dir", type=Path,
                         help=f"folder whose checkpoints/ holds the LPIPS/FID/FVD weights (default ${EVAL_MODELS_ENV} "
                              f"or <repo>/models/eval); missing files are fetched there once")
    runtime.add_argument("--no-download", action="store_true", help="never fetch missing weights")
    runtime.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace, pairs_have_image: bool, pairs_have_keypoints: bool) -> EvalConfig:
    metrics = args.metrics
    if metrics is None:
        metrics = DEFAULT_METRICS + ("first_frame",) * pairs_have_image + ("pose",) * pairs_have_keypoints
    if args.frames is not None and args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return EvalConfig(metrics=tuple(metrics), policy=FramePolicy(fps=args.fps, frames=args.frames, size=args.size),
                      lpips_net=args.lpips_net, device=device, models_dir=args.models_dir,
                      download=not args.no_download, progress=not args.no_progress,
                      pose_backend=args.pose_backend if "pose" in metrics else None)


def _create_detector(args: argparse.Namespace) -> "PoseDetector":
    from ..pose.detect import create_detector

    if args.pose_backend == "dwpose":
        return create_detector("dwpose", models_dir=args.pose_models_dir, download=not args.no_download)
    return create_detector("mediapipe")


def _run(args: argparse.Namespace) -> int:
    out = args.out if args.out.suffix.lower() == ".json" else args.out.with_suffix(".json")
    for path in (out, csv_path_for(out)):
        check_output_path(path, "--out", folder=False, existing_ok=args.overwrite)
    pairs = pair_inputs(args.generated, args.reference, args.image, args.keypoints)
    config = _config(args, args.image is not None, args.keypoints is not None)
    report = evaluate(pairs, config, lambda: _create_detector(args))
    json_path, csv_file = write_report(report, out)
    shown = ", ".join(f"{key} {value:.4g}" for key, value in report["mean"].items() if isinstance(value, float))
    print(f"{len(pairs)} clip pair(s): {shown}", file=sys.stderr)
    print(f"wrote {json_path} and {csv_file}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate``; 0 on success, 2 with one ``error:`` line on bad input or missing weights."""
    return report_user_errors(lambda: _run(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadydancer_core.evaluate.cli", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
