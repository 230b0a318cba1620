"""Build a training manifest from a folder of videos (pose detection + sidecar prompts).

    python training/build_manifest.py --videos data/videos --out data/metadata.jsonl [--backend dwpose]

Each video's poses (first --frames frames at --fps, the training frames) are detected with the project's
pose pipeline and saved as <keypoints_dir>/<id>.json; the prompt is read from <video stem>.txt beside it.
Keypoint files detected earlier with the same backend, fps and frame count are reused; an existing --out
is refused without --overwrite, and every check runs before the first file is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _script  # noqa: E402  (puts the repository root and training/ on sys.path)

from steadydancer_core.atomic_output import check_output_path  # noqa: E402
from steadydancer_core.cli_help import DefaultsHelpFormatter  # noqa: E402
from steadydancer_core.errors import InputError  # noqa: E402
from steadydancer_core.pose.detect import BACKENDS, create_detector  # noqa: E402
from steadydancer_train.build_manifest_lib import build_manifest, find_videos  # noqa: E402


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.fps > 0:
        raise InputError(f"--fps must be positive, got {args.fps:g}")
    if args.frames < 1:
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    find_videos(args.videos)
    check_output_path(args.out, "--out", folder=False, existing_ok=args.overwrite)
    keypoints_dir = args.keypoints_dir or Path(args.out).parent / "keypoints"
    check_output_path(keypoints_dir, "--keypoints_dir", folder=True, existing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--videos", required=True, help="folder searched recursively for videos")
    parser.add_argument("--out", required=True, help="metadata.jsonl to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (once it is complete)")
    parser.add_argument("--keypoints_dir", "--keypoints-dir", dest="keypoints_dir", default=None,
                        help="where the per-video keypoint JSON files go (default: <out folder>/keypoints)")
    parser.add_argument("--backend", choices=BACKENDS, default="dwpose", help="pose detector backend")
    parser.add_argument("--models_dir", "--models-dir", dest="models_dir", default=None,
                        help="DWPose ONNX folder (default: as 'poses': $STEADYDANCER_MODELS_DIR, else "
                             "models/steadydancer_pose)")
    parser.add_argument("--no_download", "--no-download", dest="no_download", action="store_true",
                        help="never fetch missing DWPose files from the hub")
    parser.add_argument("--fps", type=float, default=16.0, help="frame rate the poses are detected at")
    parser.add_argument("--frames", type=int, default=81, help="frames per clip (the training clip length)")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                        help="check the arguments, find the videos and build the detector, then stop")
    args = parser.parse_args(argv)
    _check_arguments(args)
    options = {"models_dir": args.models_dir, "download": not args.no_download} if args.backend == "dwpose" else {}
    detector = create_detector(args.backend, **options)
    if args.dry_run:
        print(f"{len(find_videos(args.videos))} videos in {args.videos}, {args.backend} detector ready; "
              "dry run, nothing detected or written")
        return 0
    entries, problems = build_manifest(args.videos, args.out, detector, keypoints_dir=args.keypoints_dir,
                                       fps=args.fps, frames=args.frames)
    print(f"{args.out}: {len(entries)} clips, {len(problems)} problems")
    for item in problems:
        print(f"  {item['id']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    _script.run(main)
