"""Rank-0 metrics: one JSON line per logged step plus a tqdm bar with loss and step time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLog:
    def __init__(self, path: Path, enabled: bool, total: int, initial: int) -> None:
        self.enabled = enabled
        self.handle = None
        self.bar = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
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
