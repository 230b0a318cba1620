"""Forward latency of the SteadyDancer DiT (random weights) for TINY and a mid-size config.

Prints, per config: token count, median forward time over ``--runs`` runs (after one warm-up), the
median of the pose branch alone (temporal + spatial + alignment) and its share of the forward.

    .venv/bin/python benchmarks/bench_dit_forward.py [--runs 3] [--threads 2] [--device cpu] [--dtype float32]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steadydancer_core.model import TINY, DiTConfig, SteadyDancerDiT  # noqa: E402

#: dim 1024, 8 layers, 8 heads of 128; official text/CLIP widths.
MID = DiTConfig(dim=1024, ffn_dim=4096, num_heads=8, num_layers=8)

CASES: dict[str, tuple[DiTConfig, tuple[int, int, int]]] = {
    "tiny (dim 256, 2 layers), latent 3x16x24": (TINY, (3, 16, 24)),
    "mid (dim 1024, 8 layers, 8 heads), latent 5x32x32": (MID, (5, 32, 32)),
}


def _inputs(config: DiTConfig, frames: int, height: int, width: int, device: torch.device,
            dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    latent = rand(1, config.out_dim, frames, height, width)
    mask = torch.zeros(1, config.in_dim - 2 * config.out_dim, frames, height, width, device=device, dtype=dtype)
    mask[:, :, 0] = 1
    pose = rand(1, config.in_dim_c, frames, height, width)
    return {
        "x": torch.cat([rand(1, config.out_dim, frames, height, width), mask, latent], dim=1),
        "timestep": torch.tensor([700.0], device=device),
        "context": rand(1, min(config.text_len, 120), config.text_dim),
        "clip_fea_x": rand(1, 257, config.clip_dim),
        "clip_fea_c": rand(1, 257, config.clip_dim),
        "pose_latents": pose,
        "ref_x": latent[:, :, :1],
        "ref_c": pose[:, :, :1],
    }


def _median_seconds(fn: Callable[[], object], runs: int, device: torch.device) -> float:
    def synced() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    synced()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        synced()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"median of {args.runs} runs")
    for name, (config, (frames, height, width)) in CASES.items():
        torch.manual_seed(0)
        model = SteadyDancerDiT(config, device=device, dtype=dtype).eval()
        inputs = _inputs(config, frames, height, width, device, dtype)
        tokens = (frames + 2) * (height // 2) * (width // 2)
        with torch.no_grad():
            forward = _median_seconds(lambda: model(**inputs), args.runs, device)
            pose = _median_seconds(lambda: model.pose_features(inputs["pose_latents"], inputs["x"][:, :16]),
                                   args.runs, device)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.1f} M params, {tokens} tokens | forward {forward * 1e3:.1f} ms | "
              f"pose branch {pose * 1e3:.1f} ms ({pose / forward:.1%} of forward)")


if __name__ == "__main__":
    main()
