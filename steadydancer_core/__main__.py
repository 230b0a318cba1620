"""Command line: ``python -m steadydancer_core {poses,animate,convert,evaluate,download} ...``.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
only the chosen one is imported, so ``poses`` never pays for loading diffusers/transformers.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .cli_help import DefaultsHelpFormatter

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "poses": ("steadydancer_core.pose.cli",
              "driving video + reference image -> aligned positive and negative pose frames"),
    "animate": ("steadydancer_core.cli_animate",
                "reference image + pose frames + prompt -> animated mp4 (standalone inference)"),
    "convert": ("steadydancer_core.cli_convert",
                "DiT checkpoint -> GGUF (F16/BF16/Q8_0, for ComfyUI-GGUF) or one merged safetensors file"),
    "evaluate": ("steadydancer_core.evaluate.cli",
                 "generated vs reference videos -> SSIM/PSNR/LPIPS/FID/FVD, first-frame, pose-following, temporal report"),
    "download": ("steadydancer_core.cli_download", "fetch the model files of a ComfyUI or standalone set-up"),
}


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m steadydancer_core",
                                     description="SteadyDancer: first-frame-preserving human image animation.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


#: What to install when a command's module cannot import PyTorch (the core is written in it).
TORCH_MISSING = ("error: the '{command}' command needs PyTorch, which is not installed in this environment "
                 "({python}). Install it: pip install torch (this project tests torch==2.13.0 on CPU; on a GPU "
                 "machine the build for your CUDA). The mediapipe environment gets it with "
                 "pip install -r requirements-mediapipe.txt.")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        print(TORCH_MISSING.format(command=command, python=sys.executable), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
