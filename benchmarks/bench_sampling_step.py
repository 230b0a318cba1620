"""Time of one standalone sampling step, split into DiT time and everything else.

"Everything else" is what ``SteadyDancerPipeline.sample`` does around the DiT per step: stacking the DC-CFG
passes (``conditioning.call_dit``), the guidance combination, the solver step and dtype moves. Target:
at most 3% of a step. Two configurations with random weights and random conditioning (the cost does not
depend on the values):

* tiny: ``TINY`` DiT, latent [16, 2, 4, 6];
* mid: a 4-layer 768-wide DiT (head dim 128 as released) with the real text/CLIP widths (4096 / 1280,
  text_len 512) on a 9-frame 160x256 latent [16, 3, 20, 32] — small enough for a CPU run.

    python benchmarks/bench_sampling_step.py [--device cuda] [--dtype bf16] [--steps 10] [--configs tiny mid]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steadydancer_core.conditioning import ConditioningLatents  # noqa: E402
from steadydancer_core.model import TINY, DiTConfig, SteadyDancerDiT  # noqa: E402
from steadydancer_core.pipeline import Conditioning, SamplingSettings, SteadyDancerPipeline, make_plan  # noqa: E402

MID = DiTConfig(dim=768, ffn_dim=2048, num_heads=6, num_layers=4, freq_dim=256, text_dim=4096, text_len=512,
                clip_dim=1280)
#: name -> (config, pixel (height, width), frames)
CASES = {"tiny": (TINY, (32, 48), 5), "mid": (MID, (160, 256), 9)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedDiT(torch.nn.Module):
    """Runs the DiT and records the wall time of every call (synchronised on CUDA)."""

    def __init__(self, dit: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.dit = dit
        self.device = device
        self.seconds: list[float] = []

    def forward(self, *args, **kwargs) -> torch.Tensor:
        _sync(self.device)
        start = time.perf_counter()
        out = self.dit(*args, **kwargs)
        _sync(self.device)
        self.seconds.append(time.perf_counter() - start)
        return out


def _conditioning(config: DiTConfig, latent_shape: tuple[int, ...], device: torch.device) -> Conditioning:
    _, frames, height, width = latent_shape

    def latent() -> torch.Tensor:
        return torch.randn(1, 16, frames, height, width, device=device)

    latents = ConditioningLatents.from_latents(latent(), latent(), latent())
    clip = torch.randn(1, 257, config.clip_dim, device=device)
    return Conditioning(latents, torch.randn(1, config.text_len, config.text_dim, device=device),
                        torch.randn(1, config.text_len, config.text_dim, device=device), clip, clip,
                        reference_frame=np.zeros((1, 1, 3), np.uint8))


class StepClock:
    """Wraps the solver's ``step`` to timestamp the end of every sampling step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ends: list[float] = []

    def wrap(self, solver):
        original = solver.step

        def step(velocity, sample):
            out = original(velocity, sample)
            _sync(self.device)
            self.ends.append(time.perf_counter())
            return out

        solver.step = step
        return solver


def run_case(name: str, device: torch.device, dtype: torch.dtype, steps: int, batched: bool) -> None:
    import steadydancer_core.pipeline as pipeline_module

    config, (height, width), frames = CASES[name]
    torch.manual_seed(0)
    dit = SteadyDancerDiT(config, dtype=dtype, device=device).eval()
    timed = TimedDiT(dit, device)
    settings = SamplingSettings(frames=frames, size=(width, height), steps=steps, batch_conditions=batched)
    plan = make_plan((height, width), settings, pose_guidance=True)
    cond = _conditioning(config, plan.latent_shape, device)
    pipe = SteadyDancerPipeline("unused", "unused", device=device, dit_dtype=dtype)

    clock = StepClock(device)
    real_make_solver = pipeline_module.make_solver
    pipeline_module.make_solver = lambda *a: clock.wrap(real_make_solver(*a))
    try:
        pipe.sample(timed, cond, plan, settings, progress=False)  # warm-up (allocator, kernels)
        timed.seconds.clear()
        clock.ends.clear()
        _sync(device)
        start = time.perf_counter()
        pipe.sample(timed, cond, plan, settings, progress=False)
    finally:
        pipeline_module.make_solver = real_make_solver

    step_times = np.diff([start, *clock.ends])
    # Model seconds per step: the calls between consecutive step ends.
    model_times, index = [], 0
    for count in _calls_per_step(plan, batched):
        model_times.append(sum(timed.seconds[index:index + count]))
        index += count
    model_times = np.array(model_times)
    other = step_times - model_times
    share = other.sum() / step_times.sum()
    print(f"{name:5s} latent {list(plan.latent_shape)} {str(dtype)[6:]:8s} {'batched' if batched else 'one-by-one':10s}"
          f" step {1e3 * statistics.median(step_times):9.2f} ms  model {1e3 * statistics.median(model_times):9.2f} ms"
          f"  other {1e3 * statistics.median(other):7.3f} ms  other share {100 * share:5.2f}%"
          f"  ({'OK' if share <= 0.03 else 'ABOVE'} the 3% target)")


def _calls_per_step(plan, batched: bool) -> list[int]:
    evaluations = [3 if i in plan.pose_steps else 2 for i in range(plan.steps)]
    return [1] * plan.steps if batched else evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--configs", nargs="+", choices=sorted(CASES), default=["tiny", "mid"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.steps} steps, DC-CFG window 0.1-0.4 (3 passes at "
          f"{sum(1 for i in range(args.steps) if 0.1 < i / args.steps < 0.4)} steps); medians per step")
    for case in args.configs:
        for batched in (True, False):
            run_case(case, device, dtype, args.steps, batched)


if __name__ == "__main__":
    main()
