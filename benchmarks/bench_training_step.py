"""Training step time and peak memory per stage, for the tiny and a mid-size DiT config.

    .venv/bin/python benchmarks/bench_training_step.py [--steps 4] [--threads 1] [--device cpu|cuda]

Each (config, stage) runs in its own process (so the peak-RSS figure is that run's) on a generated
dataset through the real ``run_stage`` path (fp32 on CPU, bf16 on CUDA, gradient checkpointing on).
Step time = median over the steps after the first; peak memory = max RSS of the process on CPU,
``torch.cuda.max_memory_allocated`` on CUDA. Figures only, no claims: CPU numbers on a shared machine vary.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "training")]

CONFIGS = {
    # name: (DiTConfig kwargs, latent frames, latent height = width)
    "tiny": (dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, freq_dim=32, text_dim=32, text_len=16, clip_dim=48), 3, 8),
    "mid": (dict(dim=512, ffn_dim=1536, num_heads=4, num_layers=4, freq_dim=256, text_dim=64, text_len=64, clip_dim=64), 6, 16),
}


def run_case(config_name: str, stage: int, steps: int, threads: int, device: str, work: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    from steadydancer_core.model import DiTConfig
    from steadydancer_train.config import config_from_dict
    from steadydancer_train.synthetic import write_arch_json, write_random_cache, write_random_wan_i2v
    from steadydancer_train.trainer import run_stage

    kwargs, frames, size = CONFIGS[config_name]
    config = DiTConfig(**kwargs)
    write_arch_json(work / "arch.json", config)
    write_random_wan_i2v(work / "wan.safetensors", config)
    write_random_cache(work / "cache", config, 2, latent_frames=frames, height=size, width=size)
    start = ""
    if stage > 1:  # a SteadyDancer start: one stage-1 step's merged export
        pre = {"stage": 1, "data": {"cache_dir": str(work / "cache")},
               "model": {"arch": str(work / "arch.json"), "wan_checkpoint": str(work / "wan.safetensors")},
               "optim": {"steps": 1, "warmup_steps": 0}, "run": {"output_dir": str(work / "pre"), "merged_dtype": "fp32"},
               "compute": {"device": "cpu", "dtype": "fp32"}}
        run_stage(config_from_dict(pre))
        start = str(work / "pre" / "final" / "dit_merged")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = {"stage": stage, "data": {"cache_dir": str(work / "cache")},
           "model": {"arch": str(work / "arch.json"), "wan_checkpoint": str(work / "wan.safetensors"),
                     "steadydancer_checkpoint": start},
           "optim": {"steps": steps, "warmup_steps": 0}, "run": {"output_dir": str(work / "out"), "save_every": 10**6},
           "compute": {"device": device, "dtype": "bf16" if device == "cuda" else "fp32", "gradient_checkpointing": True}}
    records = run_stage(config_from_dict(cfg))
    times = [r["step_time_s"] for r in records[1:]] or [records[0]["step_time_s"]]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    params = sum(p.numel() for p in __import__("steadydancer_core.model", fromlist=["SteadyDancerDiT"])
                 .SteadyDancerDiT(config, device="meta").parameters())
    tokens = (frames + 2) * (size // 2) ** 2
    return {"config": config_name, "stage": stage, "params_M": params / 1e6, "tokens": tokens,
            "step_s": statistics.median(times), "peak_mb": peak, "loss": records[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--configs", default="tiny,mid")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case in this process
    args = parser.parse_args()
    if args.case:
        name, stage = args.case.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_case(name, int(stage), args.steps, args.threads, args.device, Path(tmp))))
        return
    print(f"training step benchmark: device {args.device}, {args.threads} intra-op thread(s), {args.steps} steps "
          f"(median of steps 2..), gradient checkpointing on, {'bf16' if args.device == 'cuda' else 'fp32'}")
    print(f"{'config':>6} {'stage':>5} {'params':>9} {'tokens':>7} {'step s':>8} {'peak MB':>9} {'loss':>8}")
    for name in args.configs.split(","):
        for stage in (1, 2, 3):
            proc = subprocess.run([sys.executable, __file__, "--case", f"{name}:{stage}", "--steps", str(args.steps),
                                   "--threads", str(args.threads), "--device", args.device],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name:>6} {stage:>5} failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{r['config']:>6} {r['stage']:>5} {r['params_M']:>8.2f}M {r['tokens']:>7} {r['step_s']:>8.3f} "
                  f"{r['peak_mb']:>9.0f} {r['loss']:>8.4f}")


if __name__ == "__main__":
    main()
