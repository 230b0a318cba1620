"""``download``: fetch exactly the model files one set-up needs from the Hugging Face hub.

    python -m steadydancer_core download --comfyui ~/ComfyUI          # the workflows' files
    python -m steadydancer_core download --dir models                 # what animate and poses read

The files and their destinations come from ``downloads.FILES``. ``--dry-run`` lists repo, file, size and
destination; without the hub it fails at once with that list.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import downloads
from .errors import InputError, report_user_errors


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--comfyui", type=Path, metavar="PATH",
                        help="a ComfyUI folder: each file goes into PATH/models/<folder>/ under the name the "
                             "workflows load")
    target.add_argument("--dir", type=Path, metavar="DIR",
                        help="standalone layout for animate/poses: DIR/Wan2.1-I2V-14B-480P-Diffusers (--wan-dir), "
                             "the DiT (--dit), DIR/steadydancer_pose (DWPose)")
    parser.add_argument("--dit", choices=downloads.DIT_CHOICES, default=None,
                        help="DiT variant: fp8 = Kijai's fp8-scaled file (the workflows' file), fp16 = Kijai's fp16 "
                             "file, official = the authors' fp32 shards (a folder for animate --dit; for ComfyUI "
                             "they are merged into one file afterwards), none = skip. Default: fp8 with --comfyui, "
                             "official with --dir")
    parser.add_argument("--no-wan", action="store_true",
                        help="skip the Wan2.1 VAE, umT5 text encoder and CLIP vision")
    parser.add_argument("--no-pose", action="store_true", help="skip the DWPose ONNX pair")
    parser.add_argument("--lora", action="store_true",
                        help="also the lightx2v 4-step LoRA of workflow (b) (ComfyUI layout only)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="list repo, file, size and destination; fetch nothing")
    return parser


def run(args: argparse.Namespace, hub: downloads.Hub | None = None) -> int:
    return report_user_errors(lambda: _run(args, hub or downloads.HuggingFaceHub()))


def _run(args: argparse.Namespace, hub: downloads.Hub) -> int:
    layout = "comfyui" if args.comfyui is not None else "standalone"
    root = args.comfyui if args.comfyui is not None else args.dir
    dit = args.dit or downloads.DEFAULT_DIT[layout]
    if layout == "comfyui" and not (root / "models").is_dir():
        raise InputError(f"--comfyui {root}: no models/ folder there; expected the ComfyUI folder "
                         "(the one holding main.py and models/)")
    if root.exists() and not root.is_dir():
        raise InputError(f"--dir {root} is a file; expected a folder")
    try:
        keys = downloads.keys_for(layout, dit, wan=not args.no_wan, pose=not args.no_pose, lora=args.lora)
    except ValueError as error:
        raise InputError(f"--lora: {error}") from None
    if not keys:
        raise InputError("nothing to fetch: --dit none with --no-wan and --no-pose")

    reason = hub.unreachable_reason()
    transfers = downloads.plan(keys, layout, root, None if reason else hub)
    lines = downloads.describe(transfers)
    if reason:
        if args.dry_run:
            print(f"(the hub is not reachable: {reason}; folders are listed, not their files)")
            print("\n".join(lines))
            return 0
        raise downloads.unreachable_error(reason, lines)
    print("\n".join(lines))
    todo = [t for t in transfers if not t.present]
    known = [t.size for t in todo if t.size is not None]
    print(f"{len(todo)} of {len(transfers)} file(s) to fetch"
          + (f", {downloads.format_size(sum(known))}" + (" + unknown" if len(known) < len(todo) else "")
             if todo else ""))
    if args.dry_run:
        return 0
    downloads.fetch_all(transfers, root, hub)
    print(f"done: {len(todo)} file(s) fetched into {root}")
    if dit == "official" and layout == "comfyui":
        shards = downloads.destination(downloads.BY_KEY["dit_official"], layout, root)
        merged = root / "models" / "diffusion_models" / downloads.MERGED_DIT_NAME
        print("ComfyUI's Load Diffusion Model needs one file; merge the shards with\n"
              f"  python -m steadydancer_core convert --to safetensors {shards} {merged}\n"
              f"and then delete {shards}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadydancer_core.cli_download", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return run(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
