"""Long videos: time per output frame and peak memory against the video length N (tiny random models).

Each N runs in a fresh process (peak RSS only grows within a process) through the same path as
``animate --frames N``: pose pictures read per segment from a folder, ``SteadyDancerPipeline.generate``
over 81-frame segments carrying 1 frame, frames streamed into an mp4. Targets: time linear in the number
of segments, peak memory flat in N (nothing holds all N frames).

    python benchmarks/bench_long_video.py [--frames 81 161 321 641] [--size 224x128] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_assets(root: Path, frames: int, width: int, height: int) -> None:
    from tiny_models import build_tiny_dit_checkpoint, build_tiny_wan_dir

    build_tiny_wan_dir(root / "wan")
    build_tiny_dit_checkpoint(root / "dit.safetensors")
    yy, xx = np.mgrid[0:height, 0:width]
    reference = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)
    Image.fromarray(reference).save(root / "ref.png")
    for name, offset in (("poses", 0), ("negative", width // 5)):
        folder = root / name
        folder.mkdir()
        for i in range(frames):  # a block walking across the frame and back
            pose = np.zeros((height, width, 3), np.uint8)
            x = (offset + 7 * i) % (width - 32)
            pose[height // 3: height // 3 + 48, x: x + 32] = (255, 128, 0)
            Image.fromarray(pose).save(folder / f"{i:05d}.png")


def child(root: Path, frames: int, steps: int, size: str) -> None:
    """One run of ``animate --frames N``; prints its seconds and peak RSS as JSON."""
    from steadydancer_core import cli_animate

    out = root / f"out_{frames}.mp4"
    args = ["--image", str(root / "ref.png"), "--poses", str(root / "poses"), "--negative-poses",
            str(root / "negative"), "--prompt", "a person dances", "--wan-dir", str(root / "wan"),
            "--dit", str(root / "dit.safetensors"), "--out", str(out), "--frames", str(frames),
            "--steps", str(steps), "--device", "cpu", "--no-progress", "--overwrite", "--size", size]
    start = time.perf_counter()
    code = cli_animate.main(args)
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"animate exited with {code}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": peak_kib / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[81, 161, 321, 641])
    parser.add_argument("--size", default="224x128", help="output WxH")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), args.steps, args.size)
        return

    from steadydancer_core.segments import plan_segments

    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_assets(root, max(args.frames), width, height)
        print(f"tiny DiT, {width}x{height}, {args.steps} steps, 81-frame segments carrying 1, CPU "
              f"({resource.getpagesize()}-byte pages); one fresh process per N")
        print(f"{'N':>5} {'segments':>8} {'seconds':>8} {'s/frame':>8} {'s/segment':>9} {'x N=' + str(args.frames[0]):>8}"
              f" {'peak RSS MiB':>12} {'N frames MiB':>12}")
        baseline = None
        for frames in args.frames:
            result = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--size", args.size,
                                     "--child", tmp, str(frames)],
                                    check=True, capture_output=True, text=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            segments = len(plan_segments(frames).segments)
            baseline = baseline or figures["seconds"]
            all_frames_mib = frames * width * height * 3 / 2**20
            print(f"{frames:>5} {segments:>8} {figures['seconds']:>8.1f} {figures['seconds'] / frames:>8.3f} "
                  f"{figures['seconds'] / segments:>9.2f} {figures['seconds'] / baseline:>8.2f} "
                  f"{figures['peak_mib']:>12.0f} {all_frames_mib:>12.0f}")


if __name__ == "__main__":
    main()
