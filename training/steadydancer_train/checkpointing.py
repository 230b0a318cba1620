"""Resumable checkpoints with torch.distributed.checkpoint (sharded, reshardable across world sizes).

Layout: ``<output_dir>/ckpt/step_000123/`` (DCP files + ``meta.json``) and ``<output_dir>/ckpt/latest``
(a text pointer). Only trainable parameters and the optimizer are stored; frozen weights come from the
start checkpoint. Data order and per-sample randomness are derived from the step number, so the step is
the whole remaining state. ``meta.json`` is written last (atomically): a step folder without it is an
unfinished save. It records the ``run_id`` of the run (kept across resumes), so pruning to
``run.keep_last`` removes only this run's own checkpoints.
"""
from __future__ import annotations

import json
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from steadydancer_core.atomic_output import atomic_path
from steadydancer_core.errors import InputError

from .distributed import DistInfo, barrier

_OPTIONS = StateDictOptions(ignore_frozen_params=True)
# Loading only the trainable tensors: frozen keys are absent on purpose (they come from the start weights).
_LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


@contextmanager
def _single_process_ok():
    """DCP warns that it 'assumes a single process' when no group exists; that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "ckpt" / f"step_{step:06d}"


def save_checkpoint(output_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any], info: DistInfo, keep_last: int) -> Path:
    """Save step ``step``; ``meta`` must hold the ``run_id``. Keeps this run's newest ``keep_last`` (0: all)."""
    target = step_dir(output_dir, step)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    with _single_process_ok():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(target))
    barrier(info)
    if info.is_main:
        with atomic_path(target / "meta.json") as temporary:
            temporary.write_text(json.dumps({**meta, "step": step}, indent=2))
        with atomic_path(target.parent / "latest") as temporary:
            temporary.write_text(target.name)
        if keep_last > 0:
            own = [p for p in _run_checkpoints(target.parent, meta["run_id"]) if p != target]
            for stale in own[: max(0, len(own) - (keep_last - 1))]:
                shutil.rmtree(stale, ignore_errors=True)
    barrier(info)
    return target


def _run_checkpoints(folder: Path, run_id: str) -> list[Path]:
    """The finished step folders of run ``run_id`` in ``folder``, oldest first."""
    own = []
    for path in sorted(folder.glob("step_*")):
        try:
            if read_meta(path).get("run_id") == run_id:
                own.append(path)
        except InputError:  # an unfinished save or a folder of someone else's: not ours to delete
            continue
    return own


def find_resume(output_dir: str | Path, resume: str) -> Path | None:
    """``auto``: the latest checkpoint of this run or None; otherwise an explicit step folder."""
    if not resume:
        return None
    if resume == "auto":
        pointer = Path(output_dir) / "ckpt" / "latest"
        if not pointer.is_file():
            return None
        path = pointer.parent / pointer.read_text().strip()
    else:
        path = Path(resume)
    read_meta(path)
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``; InputError when the folder is not a finished checkpoint."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise InputError(f"not a training checkpoint (no meta.json): {path}") from None
    except (OSError, ValueError) as error:
        raise InputError(f"checkpoint {path}: unreadable meta.json ({error})") from None
    if not isinstance(meta, dict):
        raise InputError(f"checkpoint {path}: meta.json does not hold an object")
    return meta


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_LOAD_OPTIONS)
    return read_meta(path)
