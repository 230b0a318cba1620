"""Exceptions raised by the DiT checkpoint loader/saver.

All derive from :class:`CheckpointError` (a ``UserError`` and a ``ValueError``) so callers can catch one type; the
subclasses let tests and nodes tell the cases apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used as asked; the message says why and what was expected."""


class CorruptCheckpointError(CheckpointError):
    """A file is missing, unreadable or not a valid safetensors file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read checkpoint {self.path}: {reason}")


class MissingShardError(CheckpointError):
    """A sharded index names a shard file that does not exist."""


class NotSteadyDancerError(CheckpointError):
    """The checkpoint is a DiT of another kind (plain Wan2.1, something else)."""


class StateDictMismatchError(CheckpointError):
    """Checkpoint keys/shapes do not match the model built from the configuration."""

    def __init__(self, missing: Sequence[str], unexpected: Sequence[str],
                 shape_mismatches: Sequence[str], context: str = "") -> None:
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatches = list(shape_mismatches)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {summarize(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {summarize(self.unexpected)}")
        if self.shape_mismatches:
            parts.append(f"{len(self.shape_mismatches)} shape mismatch(es): "
                         f"{summarize(self.shape_mismatches)}")
        prefix = f"{context}: " if context else ""
        super().__init__(prefix + "checkpoint does not match the SteadyDancer DiT — " + "; ".join(parts))


def summarize(items: Sequence[str], limit: int = 8) -> str:
    """``a, b, c ... (+N more)`` — keeps messages readable for 1,345-key models."""
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f" ... (+{len(items) - limit} more)"
    return shown
