"""``convert``: a SteadyDancer DiT as GGUF (for city96's ComfyUI-GGUF) or as one merged safetensors file.

    python -m steadydancer_core convert --to gguf --quant Q8_0 models/SteadyDancer-14B steadydancer-Q8_0.gguf
    python -m steadydancer_core convert --to safetensors models/SteadyDancer-14B steadydancer_14b.safetensors

The source is any layout the loaders read (one .safetensors file, the official sharded folder or its
``*.index.json``, scaled fp8 for GGUF). Everything is checked before a tensor is written, and the output
appears only when complete (DESIGN D10, D13). K-quants: quantise a BF16/F16 GGUF written here with
city96's patched llama-quantize. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from .atomic_output import check_output_path
from .errors import InputError, report_user_errors
from .model.convert import GGUF_QUANTS, convert_to_gguf, merge_to_safetensors

TARGETS = ("gguf", "safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("src", help="SteadyDancer DiT: a .safetensors file, the sharded folder or its index json")
    parser.add_argument("dst", help="output file (.gguf or .safetensors)")
    parser.add_argument("--to", required=True, choices=TARGETS,
                        help="gguf: for ComfyUI-GGUF's Unet Loader (GGUF); safetensors: one file for core "
                             "'Load Diffusion Model' (merges the sharded folder, keeps the stored dtypes)")
    parser.add_argument("--quant", choices=GGUF_QUANTS,
                        help="GGUF tensor type (required with --to gguf): F16, BF16 (exact for bf16 weights) or "
                             "Q8_0; K-quants come from llama.cpp (see the README)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST (only once it is complete)")
    return parser


def run(args: argparse.Namespace) -> int:
    return report_user_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if args.to == "gguf" and args.quant is None:
        raise InputError("--to gguf needs --quant (one of " + ", ".join(GGUF_QUANTS) + ")")
    if args.to == "safetensors" and args.quant is not None:
        raise InputError("--quant applies to --to gguf only (a merged safetensors file keeps the stored dtypes)")
    if not src.exists():
        raise InputError(f"SRC {src} does not exist")
    if dst.exists() and src.resolve() == dst.resolve():
        raise InputError(f"DST {dst} is the source itself; write the converted model to another file")
    check_output_path(dst, "DST", folder=False, existing_ok=args.overwrite)
    if args.to == "gguf":
        plans = convert_to_gguf(src, dst, args.quant)
        counts = Counter(plan.qtype for plan in plans)
        print(f"wrote {dst} ({dst.stat().st_size / 1e9:.2f} GB): "
              + ", ".join(f"{count} x {qtype}" for qtype, count in sorted(counts.items())))
    else:
        merge_to_safetensors(src, dst)
        print(f"wrote {dst} ({dst.stat().st_size / 1e9:.2f} GB)")
    return 0
