"""Pre-encode the clips of a manifest into one safetensors file per clip (training never loads VAE/T5/CLIP).

    python training/precompute.py --config training/configs/stage1.yaml
    torchrun --nproc_per_node=8 training/precompute.py --config training/configs/stage1.yaml

Rank r encodes manifest[r::world]; finished clips are skipped, so a rerun resumes. Unusable clips (too short,
unreadable, no person, bad manifest line) are skipped and listed in <cache_dir>/precompute_summary.rank<r>.json.
"""
from __future__ import annotations

import argparse
import os

import _script  # noqa: E402  (puts the repository root and training/ on sys.path)

from steadydancer_core.atomic_output import check_output_path  # noqa: E402
from steadydancer_core.cli_help import DefaultsHelpFormatter  # noqa: E402
from steadydancer_core.encoders import missing_wan_components  # noqa: E402
from steadydancer_core.errors import InputError  # noqa: E402
from steadydancer_train.config import load_config, require  # noqa: E402
from steadydancer_train.distributed import resolve_device  # noqa: E402
from steadydancer_train.manifest import read_manifest  # noqa: E402
from steadydancer_train.model_setup import resolve_arch  # noqa: E402
from steadydancer_train.precompute_clips import precompute, write_summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML / TOML / JSON config (data.manifest, data.cache_dir)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML syntax), repeatable (default: none)")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                        help="check the config, the manifest and the cache folder, print what would be encoded, stop")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    require(cfg, "data.manifest", "data.cache_dir")
    # The cache is resumable (finished clips are skipped), so an existing one is continued, not refused.
    check_output_path(cfg.data.cache_dir, "data.cache_dir", folder=True, existing_ok=True)
    config = resolve_arch(cfg.model.arch)
    entries, problems = read_manifest(cfg.data.manifest)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.compute.device, int(os.environ.get("LOCAL_RANK", "0")))
    if args.dry_run:
        require(cfg, "data.encoders_dir")
        problems_found = missing_wan_components(cfg.data.encoders_dir)  # what loading them would refuse
        if problems_found:
            raise InputError("data.encoders_dir is not a Diffusers-format Wan2.1-I2V folder: " + "; ".join(problems_found))
        print(f"rank {rank}/{world}: {len(entries[rank::world])} clips to encode into {cfg.data.cache_dir} "
              f"({len(problems)} unusable manifest lines); dry run, nothing encoded")
        return 0
    summary = precompute(cfg, config, entries, rank, world, device)
    path = write_summary(cfg.data.cache_dir, rank, summary, problems)
    skipped = summary.skipped + (problems if rank == 0 else [])
    print(f"rank {rank}/{world}: {len(summary.written)} written, {len(summary.existing)} already done, "
          f"{len(skipped)} skipped (details: {path})")
    for item in skipped:
        print(f"  skipped {item['id']}: {item['reason']}")
    return 0


if __name__ == "__main__":
    _script.run(main)
