"""The multi-GPU options of ``animate`` and the per-rank entry point under ``torchrun``.

    torchrun --nproc_per_node=4 -m steadydancer_core animate ... --ulysses 2 --cfg-parallel

Every rank parses the same command line. Layout problems (process count, a head count that does not divide,
nccl without CUDA, ...) are found before any process group or weight exists; rank 0 alone reports them
(the others exit with the same code, silently). Rank 0 then runs the ordinary ``animate`` path with a
:class:`~.pipeline.DistributedPipeline` and prints progress; the other ranks serve the DiT and log only
warnings.
"""
from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from ..errors import USER_ERROR_EXIT, InputError, UserError
from .session import BACKENDS, CFG_DEGREES, LaunchEnv, ParallelLayout, ParallelSession, check_layout, rank_device
from .session import resolve_backend

RunFn = Callable[..., int]


def add_parallel_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("multi-GPU (run under torchrun --nproc_per_node=N)")
    group.add_argument("--ulysses", type=int, default=1, metavar="N",
                       help="Ulysses sequence parallel over N processes: the video tokens are split, self-attention "
                            "exchanges heads with all-to-all (N must divide the DiT's 40 heads)")
    group.add_argument("--cfg-parallel", type=int, nargs="?", const=2, default=1, choices=(1, *CFG_DEGREES),
                       metavar="K", help="run the DC-CFG passes of a step on K process groups (default K = 2); "
                                         "processes = ulysses x K")
    group.add_argument("--dit-fsdp", action="store_true",
                       help="shard the DiT weights over all processes with FSDP2 (33 GB of bf16 weights -> 33/N)")
    group.add_argument("--dist-backend", choices=BACKENDS, default="auto",
                       help="torch.distributed backend: nccl on GPUs, gloo on the CPU (default: by --device)")
    return parser


def layout_from_args(args: argparse.Namespace) -> ParallelLayout:
    return ParallelLayout(ulysses=args.ulysses, cfg=args.cfg_parallel, fsdp=args.dit_fsdp, backend=args.dist_backend)


def parallel_requested(args: argparse.Namespace, env: LaunchEnv) -> bool:
    """Under torchrun, or any multi-GPU option given (then checked: none is ever silently ignored)."""
    return env.world > 1 or layout_from_args(args) != ParallelLayout()


def _dit_heads(args: argparse.Namespace) -> int | None:
    """The checkpoint's head count from its header, or None without a --dit file (reported elsewhere)."""
    from ..model.checkpoint import read_checkpoint_config
    from ..model.checkpoint_errors import CheckpointError

    if not args.dit or not Path(args.dit).exists():
        return None
    try:
        return read_checkpoint_config(args.dit).num_heads
    except CheckpointError:
        return None  # the animate checks report a bad --dit with their own message


def check_parallel_args(args: argparse.Namespace, env: LaunchEnv) -> tuple[ParallelLayout, torch.device]:
    """The layout and this rank's device, or an InputError, before anything is started."""
    from ..cli_animate import parse_device

    layout = layout_from_args(args)
    if args.dry_run:  # a plan for the layout, also without torchrun
        env = LaunchEnv(env.rank, layout.world, env.local_rank)
    check_layout(layout, env, batched_conditions=not args.sequential_conditions, num_heads=_dit_heads(args))
    if layout.cfg > 1 and args.w_text == 1.0 and args.w_pose == 0.0:
        raise InputError("--cfg-parallel splits the DC-CFG passes of a step, but --w-text 1 --w-pose 0 leaves one pass "
                         "per step; use --ulysses for these ranks instead")
    if args.offload != "none" or args.dtype == "fp8":
        # The ranks build their DiT (or its FSDP shard) themselves; block offloading and fp8 storage are
        # single-process placements, and --dit-fsdp is what makes the 14B model fit smaller cards here.
        raise InputError("--offload blocks and --dtype fp8 are for one process; with --ulysses/--cfg-parallel use "
                         "--dit-fsdp to fit the DiT on smaller cards (and --dtype bf16)")
    device = rank_device(parse_device(args.device), env)
    resolve_backend(layout, device.type)
    return layout, device


def run_parallel(args: argparse.Namespace, run_single: RunFn) -> int:
    """``animate`` on this rank: plain ``run_single(args)`` when nothing parallel is asked for."""
    env = LaunchEnv.from_environ()
    if not parallel_requested(args, env):
        return run_single(args)
    try:
        layout, device = check_parallel_args(args, env)
    except UserError:
        if env.rank != 0:
            return USER_ERROR_EXIT
        raise
    if args.dry_run:
        return _dry_run(args, layout, run_single) if env.rank == 0 else 0
    session = ParallelSession(layout, env, device)
    try:
        if not session.is_main:
            logging.getLogger().setLevel(logging.WARNING)
            from .pipeline import serve

            return serve(session)
        return _drive(args, session, run_single)
    finally:
        session.close()


def _drive(args: argparse.Namespace, session: ParallelSession, run_single: RunFn) -> int:
    """Rank 0: the ordinary run, then tell the workers to stop with its exit code.

    A user error (exit 2) stops the workers cleanly; an unexpected exception leaves them in their
    collective and ends the process with an error, which makes torchrun stop the whole group.
    """
    from .pipeline import DistributedPipeline

    logging.getLogger(__name__).info(session.layout.describe())
    try:
        code = run_single(args, pipeline_class=partial(DistributedPipeline, session=session))
    except UserError:
        session.send("stop", code=USER_ERROR_EXIT)
        raise
    session.send("stop", code=code)
    return code


def _dry_run(args: argparse.Namespace, layout: ParallelLayout, run_single: RunFn) -> int:
    code = run_single(args)
    for line in memory_lines(args, layout):
        print(line)
    return code


def memory_lines(args: argparse.Namespace, layout: ParallelLayout) -> list[str]:
    """The layout and its computed memory per GPU for the planned output (``--dry-run``)."""
    from ..cli_animate import prepare
    from ..model import OFFICIAL_14B
    from ..model.checkpoint import read_checkpoint_config
    from .memory import memory_per_gpu, token_count

    job = prepare(args)
    config = read_checkpoint_config(args.dit) if args.dit and Path(args.dit).exists() else OFFICIAL_14B
    _, t, h, w = job.plan.runs[0].latent_shape
    tokens = token_count(config, t, h, w)
    dtype_bytes = torch.empty((), dtype=job.dtype).element_size()
    memory = memory_per_gpu(config, layout, tokens, dtype_bytes)
    return [f"parallel: {layout.describe()}",
            f"  per GPU (computed): DiT weights {memory.weights:.2f} GiB + activations {memory.activations:.2f} GiB "
            f"({tokens} tokens, {-(-tokens // layout.ulysses)} per rank) = {memory.total:.2f} GiB; rank 0 also "
            "holds the VAE and loads umT5 and CLIP before the DiT"]
