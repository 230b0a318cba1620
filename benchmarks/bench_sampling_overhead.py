"""Per-step cost of everything outside the DiT: DC-CFG combine + solver step.

Latent sizes: tiny [1, 16, 3, 8, 8] and 14B-480p [1, 16, 21, 60, 104] (81 frames at 480x832). Prints the
median milliseconds per step over a full schedule for the official UniPC (ours), Euler, and, as a baseline
in the same process, diffusers' ``UniPCMultistepScheduler`` given the same sigmas (if installed).

    python benchmarks/bench_sampling_overhead.py [--device cuda] [--steps 40] [--repeats 3]
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

from steadydancer_core.guidance import DCCFGConfig, combine_predictions  # noqa: E402
from steadydancer_core.schedule import official_unipc_schedule  # noqa: E402
from steadydancer_core.solvers import make_solver  # noqa: E402

SHAPES = {"tiny": (1, 16, 3, 8, 8), "14B-480p": (1, 16, 21, 60, 104)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_schedule(step_fn: Callable[[int, torch.Tensor], torch.Tensor], steps: int, sample: torch.Tensor,
                   device: torch.device) -> float:
    """Median ms per step over one pass through the schedule."""
    per_step = []
    for index in range(steps):
        _sync(device)
        start = time.perf_counter()
        sample = step_fn(index, sample)
        _sync(device)
        per_step.append((time.perf_counter() - start) * 1e3)
    return statistics.median(per_step)


def bench(shape: tuple[int, ...], steps: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    generator = torch.Generator().manual_seed(0)
    sample0 = torch.randn(shape, generator=generator).to(device)
    # Predictions in the DiT's output dtype (bf16 in the official run), combined in that dtype.
    cond, uncond_text, uncond_pose = (torch.randn(shape, generator=generator).to(device, dtype) for _ in range(3))
    schedule = official_unipc_schedule(steps, 5.0)
    config = DCCFGConfig()
    results: dict[str, list[float]] = {}

    def combine_only(index: int, sample: torch.Tensor) -> torch.Tensor:
        combine_predictions(config, index, steps, cond, uncond_text, uncond_pose)
        return sample

    for _ in range(repeats):
        results.setdefault("DC-CFG combine", []).append(_time_schedule(combine_only, steps, sample0, device))
        for name in ("unipc", "euler"):
            solver = make_solver(name, schedule.sigmas)

            def guided_step(index: int, sample: torch.Tensor, solver=solver) -> torch.Tensor:
                velocity = combine_predictions(config, index, steps, cond, uncond_text, uncond_pose)
                return solver.step(velocity.float(), sample)

            results.setdefault(f"combine + {name} step", []).append(
                _time_schedule(guided_step, steps, sample0, device))
        try:
            from diffusers import UniPCMultistepScheduler
        except ImportError:
            continue
        reference = UniPCMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
            solver_order=2, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero")
        reference.set_timesteps(sigmas=schedule.sigmas[:-1].double().numpy(), device=device)
        reference.set_begin_index(0)

        def diffusers_step(index: int, sample: torch.Tensor) -> torch.Tensor:
            velocity = combine_predictions(config, index, steps, cond, uncond_text, uncond_pose)
            return reference.step(velocity.float(), schedule.timesteps[index], sample).prev_sample

        results.setdefault("combine + diffusers UniPC step (baseline)", []).append(
            _time_schedule(diffusers_step, steps, sample0, device))
    return {name: min(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="dtype of the model predictions fed to the combine")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {args.steps} steps; predictions {args.dtype}; "
          f"median ms per step (best of {args.repeats} runs)")
    for label, shape in SHAPES.items():
        timings = bench(shape, args.steps, args.repeats, device, dtype)
        print(f"\n{label} latent {list(shape)}:")
        for what, ms in timings.items():
            print(f"  {what:45s} {ms:9.3f} ms")
        baseline = timings.get("combine + diffusers UniPC step (baseline)")
        if baseline:
            ratio = timings["combine + unipc step"] / baseline
            print(f"  ours / diffusers UniPC (same sigmas):          {ratio:9.2f}x")


if __name__ == "__main__":
    main()
