"""Rank-0 metrics: one JSON line per logged step plus a tqdm bar with loss and step time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from steadydancer_core.atomic_output import atomic_path


def _step_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:  # the torn last line of a killed run
        return None
    return record.get("step") if isinstance(record, dict) else None


def keep_steps_until(path: Path, step: int) -> None:
    """Drop the records after ``step`` (a killed run logged steps past its last checkpoint; the resumed run
    logs them again), so the file holds each step once."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if (_step_of(line) or 0) in range(1, step + 1)]
    with atomic_path(path) as temporary:
        temporary.write_text("".join(line + "\n" for line in kept))


class MetricsLog:
    """Appends to ``path`` after the records up to ``initial`` (the step the run starts from)."""

    def __init__(self, path: Path, enabled: bool, total: int, initial: int) -> None:
        self.enabled = enabled
        self.handle = None
        self.bar = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            keep_steps_until(path, initial)
            self.handle = path.open("a", buffering=1)
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.bar.set_postfix(loss=f"{record['loss']:.4g}", s_per_step=f"{record['step_time_s']:.2f}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.handle is not None:
            self.handle.close()
