"""Hands found per frame by the mediapipe backend on the official examples, without and with the hand
crops (``MediaPipeDetector(hand_crops=...)``), and the seconds per frame of each.

    .venv-mediapipe/bin/python -m benchmarks.bench_mediapipe_hands [--frames 81]   (from the repository root)

Each driving video is read at 16 fps (the ``poses`` default); a frame "has hands" when at least one of
the person's two hand slots is filled; "hands" counts filled slots (at most 2 per frame).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from steadydancer_core.pose.detect.mediapipe_backend import MediaPipeDetector
from steadydancer_core.video import read_video

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "official_examples"


def count_hands(frames, hand_crops: bool) -> tuple[int, int, float]:
    """(frames with a hand, hands, seconds per frame)."""
    with MediaPipeDetector(hand_crops=hand_crops) as detector:
        start = time.perf_counter()
        with_hands = hands = 0
        for frame in frames:
            people = detector.detect(frame).people
            found = int(people[0].hand_visible.any(axis=1).sum()) if people else 0
            with_hands += found > 0
            hands += found
        return with_hands, hands, (time.perf_counter() - start) / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=81, help="frames per example (default 81)")
    parser.add_argument("--examples", type=Path, default=EXAMPLES, help="official examples folder")
    args = parser.parse_args()
    print("example | frames | without crops: frames with hands / hands, s/frame | with crops: same")
    for folder in sorted(p for p in args.examples.iterdir() if (p / "driving_video.mp4").is_file()):
        frames, _ = read_video(folder / "driving_video.mp4", fps=16, max_frames=args.frames, frame_count_rule="any")
        before = count_hands(frames, hand_crops=False)
        after = count_hands(frames, hand_crops=True)
        print(f"{folder.name} | {len(frames)} | {before[0]} / {before[1]}, {before[2]:.2f} | "
              f"{after[0]} / {after[1]}, {after[2]:.2f}")


if __name__ == "__main__":
    main()
