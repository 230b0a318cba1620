"""Frames per second of the DWPose pre- and post-processing (everything except the two networks).

    .venv/bin/python -m benchmarks.bench_pose_detect [--repeats 30] [--people 1]   (from the repository root)

Per frame: official resize (short side 1024), YOLOX letterbox, box decode + NMS on a realistic head output,
top-down crop + normalisation, SimCC decode, back-projection and the 133 -> OpenPose-18 conversion.
The network outputs are random arrays of the real shapes, so only our NumPy/OpenCV work is timed.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from steadydancer_core.pose.detect import dwpose_ops as ops


def _timed(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def _yolox_output(rng: np.random.Generator, people: int) -> np.ndarray:
    """A head output with background noise and ``people`` confident, well separated person boxes."""
    output = rng.normal(0, 1, (1, 8400, 85)).astype(np.float32)
    output[0, :, 4:] = rng.uniform(0, 0.2, (8400, 81))  # sigmoid outputs, mostly low
    for i in range(people):
        anchor = 8000 + 7 * 20 + 3 + 4 * i
        output[0, anchor, :5] = [0.5, 0.5, np.log(3.0), np.log(8.0), 0.95]
        output[0, anchor, 5] = 0.95
    return output


def bench(width: int, height: int, people: int, repeats: int) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    work = ops.resize_for_detection(frame, 1024)
    _, ratio = ops.letterbox(work)
    yolox = _yolox_output(rng, people)
    boxes, _ = ops.select_person_boxes(*ops.decode_yolox(yolox, ratio), ops.DetectionThresholds())
    assert len(boxes) == people, f"benchmark set-up: expected {people} boxes, got {len(boxes)}"
    simcc_x = rng.random((people, 133, 576), dtype=np.float32)
    simcc_y = rng.random((people, 133, 768), dtype=np.float32)
    _, centers, scales = ops.pose_inputs(work, boxes)
    thresholds = ops.DetectionThresholds()

    def postprocess() -> None:
        keypoints, scores = ops.decode_simcc(simcc_x, simcc_y)
        keypoints = ops.crop_to_image(keypoints, centers, scales)
        for i in range(people):
            ops.wholebody_to_person(keypoints[i], scores[i], (work.shape[1], work.shape[0]), thresholds.keypoint)

    stages = {
        "resize to short side 1024": lambda: ops.resize_for_detection(frame, 1024),
        "letterbox 640": lambda: ops.letterbox(work),
        "box decode + NMS": lambda: ops.select_person_boxes(*ops.decode_yolox(yolox, ratio), thresholds),
        f"crop + normalise ({people} person)": lambda: ops.pose_inputs(work, boxes),
        "SimCC decode + back-projection + OpenPose-18": postprocess,
    }
    print(f"\n{width}×{height} (detection at {work.shape[1]}×{work.shape[0]}), {people} person(s), median of {repeats}")
    total = 0.0
    for name, function in stages.items():
        seconds = _timed(function, repeats)
        total += seconds
        print(f"  {name:<46s} {seconds * 1e3:8.3f} ms")
    print(f"  {'total pre/post-processing':<46s} {total * 1e3:8.3f} ms  -> {1 / total:7.1f} frames/s")
    no_resize = total - _timed(stages["resize to short side 1024"], repeats)
    print(f"  {'total excluding the resize step':<46s} {no_resize * 1e3:8.3f} ms  -> {1 / no_resize:7.1f} frames/s")


def bench_normalisation(repeats: int) -> None:
    """Our channel-first normalisation against the obvious broadcast over the trailing RGB axis."""
    crop = np.random.default_rng(1).integers(0, 255, (384, 288, 3), dtype=np.uint8)

    def broadcast() -> np.ndarray:
        return ((crop.astype(np.float32) - ops.POSE_MEAN) / ops.POSE_STD).transpose(2, 0, 1)

    np.testing.assert_allclose(ops.normalise_crop(crop), broadcast(), rtol=0, atol=1e-6)
    baseline, ours = _timed(broadcast, repeats), _timed(lambda: ops.normalise_crop(crop), repeats)
    print(f"\ncrop normalisation 288×384: broadcast HWC {baseline * 1e3:.3f} ms, channel-first {ours * 1e3:.3f} ms "
          f"-> {baseline / ours:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--people", type=int, default=1)
    args = parser.parse_args()
    for width, height in ((832, 480), (1280, 720)):
        bench(width, height, args.people, args.repeats)
    bench_normalisation(args.repeats)


if __name__ == "__main__":
    main()
