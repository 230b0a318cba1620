"""The standalone pipeline on several processes: rank 0 drives, the other ranks serve the DiT.

Rank 0 runs :class:`~steadydancer_core.pipeline.SteadyDancerPipeline` unchanged except for two methods: it
alone loads the umT5, CLIP and VAE encoders, encodes, decodes, writes the video and prints progress. When it
loads the DiT or samples a segment it first sends the command (and the segment's conditioning, ~45 MB at
832x480x81, once per segment) to the workers, and then every rank runs the same ``load_dit`` / ``sample``
code: the seeded CPU noise and the solver are the same everywhere and each DiT call returns the whole
prediction on every rank, so all ranks step the same latent. Workers only ever hold the DiT (or its shard).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from ..pipeline import Conditioning, RunPlan, SamplingSettings, SteadyDancerPipeline
from .session import ParallelSession


def move_conditioning(cond: Conditioning, device: torch.device | str) -> Conditioning:
    """A copy of ``cond`` with every tensor on ``device`` (CPU to send it, the rank's device after)."""
    def move(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.to(device)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.replace(obj, **{f.name: move(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                               if f.init})
        return obj

    return move(cond)


class DistributedPipeline(SteadyDancerPipeline):
    """Rank 0's pipeline: ``load_dit`` and ``sample`` become collectives over the session."""

    def __init__(self, *args: Any, session: ParallelSession, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session = session
        self.device = session.device

    def load_dit(self) -> torch.nn.Module:
        self.session.send("load_dit", path=str(self.dit_path), dtype=self.dit_dtype)
        return self.session.build_dit(self.dit_path, self.dit_dtype)

    def sample(self, dit: torch.nn.Module, cond: Conditioning, plan: RunPlan, settings: SamplingSettings,
               progress: bool = True, on_step: Callable[[], object] | None = None) -> torch.Tensor:
        self.session.send("sample", cond=move_conditioning(cond, "cpu"), plan=plan, settings=settings)
        return super().sample(dit, cond, plan, settings, progress=progress, on_step=on_step)


def serve(session: ParallelSession) -> int:
    """A worker's life: run what rank 0 sends until it says stop; returns rank 0's exit code."""
    dit: torch.nn.Module | None = None
    pipeline: SteadyDancerPipeline | None = None
    while True:
        command, payload = session.receive()
        if command == "stop":
            return int(payload["code"])
        if command == "load_dit":
            dit = session.build_dit(payload["path"], payload["dtype"])
            pipeline = SteadyDancerPipeline("", payload["path"], device=session.device, dit_dtype=payload["dtype"])
        elif command == "sample":
            if dit is None or pipeline is None:
                raise RuntimeError("rank 0 asked to sample before loading the DiT")
            cond = move_conditioning(payload["cond"], session.device)
            pipeline.sample(dit, cond, payload["plan"], payload["settings"], progress=False)
        else:
            raise RuntimeError(f"unknown command from rank 0: {command!r}")
