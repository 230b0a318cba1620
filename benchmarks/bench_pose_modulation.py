"""Pose-latent modulation speed: align + negative + render (positive and negative) for 81 frames at 832×480.

Driving poses are the recorded parity fixture's 9 frames (official synthetic detector output) cycled with a
small per-frame sway to 81 frames. Prints per-stage wall times; target < 1 s total on a 2-core machine.
Usage (from the repository root): python -m benchmarks.bench_pose_modulation [--frames 81] [--width 832] [--height 480] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from steadydancer_core.pose import (
    PoseFrame, align_sequence, negative_poses, person_from_official, render_frames,
)

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "parity" / "pose_a" / "fixture.json"


def driving_sequence(frames: int) -> tuple[PoseFrame, list[PoseFrame]]:
    data = json.loads(FIXTURE.read_text())
    ref_w, ref_h = data["ref_resized_for_generation"]
    video_w, video_h = data["video_size"]
    reference = PoseFrame([person_from_official(data["reference_pose"]["body"], data["reference_pose"]["hands"])],
                          ref_w, ref_h)
    recorded = data["driving_poses"]
    driving = []
    for t in range(frames):
        source = recorded[t % len(recorded)]
        sway = np.array([0.02 * np.sin(t / 7.0), 0.0])
        person = person_from_official(np.array(source["body"]) + sway, np.array(source["hands"]) + sway)
        driving.append(PoseFrame([person], video_w, video_h))
    return reference, driving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    reference, driving = driving_sequence(args.frames)
    reference = PoseFrame(reference.people, args.width, args.height)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        times = {}
        start = time.perf_counter()
        aligned, _ = align_sequence(reference, driving)
        times["align"] = time.perf_counter() - start
        start = time.perf_counter()
        negative, _ = negative_poses(aligned, seed=0)
        times["negative"] = time.perf_counter() - start
        for name, frames in (("render_positive", aligned), ("render_negative", negative)):
            start = time.perf_counter()
            images = render_frames(frames, args.width, args.height, threads=args.threads)
            times[name] = time.perf_counter() - start
        times["total"] = sum(times.values())
        best = {k: min(v, best.get(k, float("inf"))) for k, v in times.items()}
    print(f"{args.frames} frames at {args.width}x{args.height} (supersample 2, area downscale, "
          f"{args.threads} render threads), best of {args.repeats}; output {images.shape}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for name, seconds in best.items():
        print(f"  {name:16s} {seconds * 1000:8.1f} ms")
    # Baseline in the same process: the bicubic (PIL) downscale the official loader applies.
    start = time.perf_counter()
    render_frames(aligned, args.width, args.height, downscale="bicubic", threads=args.threads)
    print(f"  (render_positive with PIL bicubic downscale: {(time.perf_counter() - start) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
