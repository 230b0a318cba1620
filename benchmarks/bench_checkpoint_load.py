"""Peak memory of loading a DiT checkpoint: ``load_dit`` vs the naive way, each in a fresh process.

Writes a random SteadyDancer-structured checkpoint of >= 2 GB (dim 2048, fp32 by default) into a
temporary folder (deleted afterwards), then for each case starts a fresh Python process that imports
torch and the core, loads the file, touches every parameter (so memory-mapped pages are really
resident) and reports ``VmHWM`` (peak resident set, file-backed mapped pages included) and the
RSS before loading. Printed: file and loaded-model sizes, peak RSS, RSS before loading (interpreter +
torch), peak / file, and the load's own growth (peak - before) relative to the file and to the model.

Cases:
  load_dit same dtype   — zero-copy: parameters are the memory-mapped tensors (target <= 1.15 x file);
  load_dit -> bfloat16  — tensor-by-tensor conversion through one scratch buffer (expect ~0.5 x file);
  fp8-scaled -> bfloat16 — Kijai-style file dequantised tensor by tensor (result ~2 x file);
  naive                 — build the fp32 model normally, safetensors ``load_file``, ``load_state_dict``
                          (the two-copies baseline this loader avoids).

Usage: .venv/bin/python benchmarks/bench_checkpoint_load.py [--dim 2048] [--layers 8] [--keep-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGET_RATIO = 1.15
FP32_NAME = "bench_dit_fp32.safetensors"
FP8_NAME = "bench_dit_fp8_e4m3fn_scaled.safetensors"


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def bench_config(dim: int, layers: int):
    from steadydancer_core.model.config import DiTConfig
    return DiTConfig(dim=dim, ffn_dim=4 * dim, num_heads=dim // 128, num_layers=layers, text_dim=1024,
                     clip_dim=1280)


def write_checkpoint(path: Path, dim: int, layers: int) -> None:
    import torch
    from steadydancer_core.model.checkpoint import save_dit
    from steadydancer_core.model.dit import SteadyDancerDiT

    config = bench_config(dim, layers)
    shapes = {k: t.shape for k, t in SteadyDancerDiT(config, device="meta").state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shapes.items()}
    save_dit(state, path, config=config)
    # Kijai-style scaled fp8: every Linear weight (the 2-D ``.weight`` tensors here) as float8_e4m3fn
    # with a per-tensor float32 ``scale_weight``.
    fp8_max = torch.finfo(torch.float8_e4m3fn).max
    for key in [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 2]:
        scale = state[key].abs().max() / fp8_max
        state[key] = (state[key] / scale).to(torch.float8_e4m3fn)
        state[key[: -len("weight")] + "scale_weight"] = scale
    state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_dit(state, path.with_name(FP8_NAME), config=config)


def child(path: str, case: str) -> None:
    """Runs in a fresh interpreter: load, touch every parameter, report memory as JSON."""
    import torch
    from steadydancer_core.model.checkpoint import load_dit, read_checkpoint_config

    rss_before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    if case == "naive":
        from safetensors.torch import load_file
        from steadydancer_core.model.dit import SteadyDancerDiT
        model = SteadyDancerDiT(read_checkpoint_config(path))
        model.load_state_dict(load_file(path))
    else:
        model = load_dit(path, dtype=getattr(torch, case))
    load_s = time.perf_counter() - start
    checksum = 0.0
    with torch.no_grad():
        for param in model.parameters():  # page every weight in
            checksum += float(param.sum())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"rss_before_kib": rss_before, "peak_kib": proc_status_kib("VmHWM"), "load_s": load_s,
                      "model_bytes": model_bytes, "checksum": checksum}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--keep-dir", type=Path, default=None, help="write the checkpoint here and keep it")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_checkpoint(args.write, args.dim, args.layers)
        return
    if args.child:
        child(*args.child)
        return

    with tempfile.TemporaryDirectory(prefix="bench_ckpt_") as tmp:
        folder = args.keep_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FP32_NAME
        if not path.exists() or not (folder / FP8_NAME).exists():
            start = time.perf_counter()
            # In a child too, so this process stays small.
            subprocess.run([sys.executable, __file__, "--write", str(path), "--dim", str(args.dim),
                            "--layers", str(args.layers)], check=True, cwd=REPO_ROOT)
            print(f"wrote the checkpoints in {time.perf_counter() - start:.1f} s")
        print(f"checkpoint: dim {args.dim}, {args.layers} layers; fp32 file {path.stat().st_size:,} bytes, "
              f"scaled-fp8 file {(folder / FP8_NAME).stat().st_size:,} bytes")
        print(f"{'case':<28}{'file GiB':>9}{'model GiB':>10}{'peak RSS':>9}{'before':>8}{'peak/file':>10}"
              f"{'(peak-before)/file':>19}{'(peak-before)/model':>20}{'load s':>7}")
        ratios = {}
        for name, case, label in ((FP32_NAME, "float32", "load_dit fp32 (mmap)"),
                                  (FP32_NAME, "bfloat16", "load_dit fp32 -> bf16"),
                                  (FP8_NAME, "bfloat16", "load_dit fp8-scaled -> bf16"),
                                  (FP32_NAME, "naive", "naive fp32 load_state_dict")):
            file = folder / name
            out = subprocess.run([sys.executable, __file__, "--child", str(file), case], check=True,
                                 capture_output=True, text=True, cwd=REPO_ROOT).stdout
            r = json.loads(out.strip().splitlines()[-1])
            size = file.stat().st_size
            peak, before, model = r["peak_kib"] * 1024, r["rss_before_kib"] * 1024, r["model_bytes"]
            ratios[label] = peak / size
            print(f"{label:<28}{size / 2**30:>9.2f}{model / 2**30:>10.2f}{peak / 2**30:>9.2f}{before / 2**30:>8.2f}"
                  f"{peak / size:>10.3f}{(peak - before) / size:>19.3f}{(peak - before) / model:>20.3f}"
                  f"{r['load_s']:>7.2f}")
        same = ratios["load_dit fp32 (mmap)"]
        verdict = "meets" if same <= TARGET_RATIO else "MISSES"
        print(f"load_dit same-dtype peak RSS = {same:.3f} x file size: {verdict} the <= {TARGET_RATIO} x target; "
              f"naive loading = {ratios['naive fp32 load_state_dict']:.3f} x")


if __name__ == "__main__":
    main()
