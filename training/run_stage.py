"""Train one SteadyDancer stage.

    python training/run_stage.py --stage 1 --config training/configs/stage1.yaml [--resume auto]
    torchrun --nproc_per_node=8 training/run_stage.py --stage 2 --config training/configs/stage2.yaml

Stage 1 Action Supervision, stage 2 Condition-Decoupled Distillation, stage 3 Motion Discontinuity
Mitigation; see training/steadydancer_train/trainer.py and the shipped configs for what each does.

An output_dir that holds an earlier run is refused unless --resume continues it or --overwrite replaces
it; a run stopped by --max_steps before optim.steps leaves a checkpoint but no final/.
"""
from __future__ import annotations

import argparse

import _script  # noqa: E402  (puts the repository root and training/ on sys.path)

from steadydancer_core.cli_help import DefaultsHelpFormatter  # noqa: E402
from steadydancer_train.config import load_config  # noqa: E402
from steadydancer_train.trainer import StageRunner  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), required=True,
                        help="1 Action Supervision, 2 Condition-Decoupled Distillation, 3 Motion Discontinuity Mitigation")
    parser.add_argument("--config", required=True, help="YAML / TOML / JSON config")
    parser.add_argument("--resume", default="",
                        help="'auto' (latest checkpoint of output_dir, if any) or a step folder (default: '' = start "
                             "fresh)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier run in output_dir (its metrics, checkpoints and exports; other files "
                             "stay): set aside in .replaced_run/ once every check has passed, deleted when this run "
                             "ends well, put back if it fails")
    parser.add_argument("--max_steps", "--max-steps", dest="max_steps", type=int, default=None,
                        help="stop after this many steps (a partial run: checkpoint, no final/; resume later; "
                             "default: run to optim.steps)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML syntax), repeatable (default: none)")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                        help="run every check (config, cache, checkpoints) and stop")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set, stage=args.stage)
    runner = StageRunner(cfg, args.resume, args.max_steps, args.overwrite)
    if args.dry_run:
        runner.check_only()
        print(f"stage {cfg.stage}: config, cache ({len(runner.clips)} clips) and checkpoints are valid")
        return 0
    runner.run()
    return 0


if __name__ == "__main__":
    _script.run(main)
