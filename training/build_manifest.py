"""Build a training manifest from a folder of videos (pose detection + sidecar prompts).

    python training/build_manifest.py --videos data/videos --out data/metadata.jsonl [--backend dwpose]

Each video's poses (first --frames frames at --fps, the training frames) are detected with the project's
pose pipeline and saved as <keypoints_dir>/<id>.json; the prompt is read from <video stem>.txt beside it.
"""
from __future__ import annotations

import argparse

import _script  # noqa: E402  (puts the repository root and training/ on sys.path)

from steadydancer_core.pose.detect import BACKENDS, create_detector  # noqa: E402
from steadydancer_train.build_manifest_lib import build_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", required=True, help="folder searched recursively for videos")
    parser.add_argument("--out", required=True, help="metadata.jsonl to write")
    parser.add_argument("--keypoints_dir", default=None, help="default: <out folder>/keypoints")
    parser.add_argument("--backend", choices=BACKENDS, default="dwpose")
    parser.add_argument("--models_dir", default=None, help="pose detector models (DWPose ONNX)")
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--frames", type=int, default=81)
    args = parser.parse_args(argv)
    options = {"models_dir": args.models_dir} if args.backend == "dwpose" else {}
    detector = create_detector(args.backend, **options)
    entries, problems = build_manifest(args.videos, args.out, detector, keypoints_dir=args.keypoints_dir,
                                       fps=args.fps, frames=args.frames)
    print(f"{args.out}: {len(entries)} clips, {len(problems)} problems")
    for item in problems:
        print(f"  {item['id']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    _script.run(main)
