"""Temporal smoothness and the jump at the start.

The per-frame change is the mean absolute difference of consecutive frames, ``d_t = mean|f_{t+1} − f_t|`` over
all pixels and channels, on 0..255. The step from frame 0 (the kept reference) to frame 1 is reported on its
own — ``temporal_step_0_1`` — because that is where a first-frame-preserving model shows a start gap (the
discontinuity the paper's stage 3 trains away); ``temporal_mean_step`` is the mean of the later steps
(1→2, 2→3, …) and ``temporal_start_ratio`` = step 0→1 / mean later step (about 1 for a smooth start). The same
numbers for the reference clip give the motion of the real video to compare with.
"""
from __future__ import annotations

import numpy as np


def frame_steps(frames: np.ndarray) -> np.ndarray:
    """``d_t`` for t = 0 … T−2 (float64)."""
    if len(frames) < 2:
        raise ValueError(f"temporal metrics need at least 2 frames, got {len(frames)}")
    return np.array([np.abs(frames[t + 1].astype(np.int16) - frames[t].astype(np.int16)).mean()
                     for t in range(len(frames) - 1)])


def temporal_summary(frames: np.ndarray, prefix: str = "temporal") -> dict[str, float]:
    steps = frame_steps(frames)
    later = steps[1:]
    mean_later = float(later.mean()) if len(later) else float("nan")
    ratio = float(steps[0] / mean_later) if len(later) and mean_later > 0 else float("nan")
    return {f"{prefix}_step_0_1": float(steps[0]), f"{prefix}_mean_step": mean_later,
            f"{prefix}_start_ratio": ratio}
