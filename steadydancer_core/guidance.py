"""DC-CFG: SteadyDancer's decoupled text / pose classifier-free guidance (model_spec §4, DESIGN D5).

Official formula (``image2video_dancer.py``), for step ``i`` of ``N``::

    inside the window (start < i/N < end, both strict):  v = e_t + w_t (e_c - e_t) + w_p (e_c - e_p)
    elsewhere:                                           v = e_t + w_t (e_c - e_t)

``e_c`` = positive text + positive pose, ``e_t`` = negative text + positive pose, ``e_p`` = positive text +
negative (augmented) pose. Defaults w_t = 5.0, w_p = 1.0, window 0.1..0.4 (the authors' README command).
Note the convention: ``w_p`` multiplies a bare difference, so w_p = 1.0 ADDS one full pose term and only
w_p = 0 switches pose guidance off.

The paper's Eq. 8 could not be read here (model_spec §4). The ``"paper"`` option assumes it is written in
the usual CFG convention, where a weight of 1 means "no guidance on that condition"::

    v = e_c + (w_t - 1)(e_c - e_t) + (w_p - 1)(e_c - e_p)

Its text term equals the official one; its pose weight is the official one plus 1 (paper w_p = 2.0 is
official w_p = 1.0; paper w_p = 1.0 switches the pose pass off).

Step index and percent: the official window is on ``i / N`` (fraction of steps done before step ``i``).
ComfyUI calls a guider with a sigma; :func:`pose_window_active_for_sigma` finds ``i`` in the sampling
sigmas (``transformer_options["sample_sigmas"]``) and applies the same rule. A "percent" is taken to be
``i / N``; :func:`pose_window_active_at_percent` snaps it to the step grid when ``N`` is known, because
ComfyUI's own sigma percent (``1 - unshift(sigma)``) is ``0.001 + 0.999 i/N`` on the official grid and
would flip the strict test at boundary steps (step 4 of 40 at start 0.1).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Generic, Literal, Sequence, TypeVar

import torch

Formula = Literal["official", "paper"]
FORMULAS = ("official", "paper")

DEFAULT_TEXT_SCALE = 5.0
DEFAULT_POSE_SCALE = 1.0
DEFAULT_POSE_START = 0.1
DEFAULT_POSE_END = 0.4


# ---- the step window -----------------------------------------------------------------------------

def pose_window_active(
    step_index: int, num_steps: int, start: float = DEFAULT_POSE_START, end: float = DEFAULT_POSE_END
) -> bool:
    """Official test for the pose pass at step ``step_index`` of ``num_steps``: ``start < i/N < end``."""
    if num_steps < 1 or not 0 <= step_index < num_steps:
        raise ValueError(f"step index must be in [0, {num_steps}), got {step_index} (num_steps {num_steps})")
    fraction = step_index / num_steps
    return start < fraction < end


def pose_window_steps(
    num_steps: int, start: float = DEFAULT_POSE_START, end: float = DEFAULT_POSE_END
) -> tuple[int, ...]:
    """Indices of the steps that run the pose pass (40 steps, 0.1..0.4 -> 5..15; 50 steps -> 6..19)."""
    return tuple(i for i in range(num_steps) if pose_window_active(i, num_steps, start, end))


def pose_window_active_at_percent(
    percent: float, start: float = DEFAULT_POSE_START, end: float = DEFAULT_POSE_END,
    num_steps: int | None = None,
) -> bool:
    """Window test on a sampling percent ``i / N``. With ``num_steps`` the percent is first snapped to the
    nearest step so float noise cannot flip the strict comparison at a boundary step."""
    if not 0.0 <= percent <= 1.0:
        raise ValueError(f"percent must be in [0, 1], got {percent}")
    if num_steps is None:
        return start < percent < end
    step_index = min(round(percent * num_steps), num_steps - 1)
    return pose_window_active(step_index, num_steps, start, end)


def step_index_for_sigma(sigma: float | torch.Tensor, sigmas: torch.Tensor) -> int:
    """Index of ``sigma`` in a sampling schedule ``sigmas`` (``[N + 1]``, last 0): the nearest grid point.

    Raises when ``sigma`` is not on the schedule (farther than half the local spacing).
    """
    grid = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten()
    if grid.numel() < 2:
        raise ValueError("sigmas must hold at least two values (N steps + the final sigma)")
    value = float(sigma)
    distances = (grid[:-1] - value).abs()
    index = int(torch.argmin(distances))
    gaps = (grid[:-1] - grid[1:]).abs()
    spacing = float(gaps[index]) if index == 0 else min(float(gaps[index]), float(gaps[index - 1]))
    if float(distances[index]) > 0.5 * spacing:
        raise ValueError(f"sigma {value} is not one of the sampling sigmas (nearest {float(grid[index])})")
    return index


def pose_window_active_for_sigma(
    sigma: float | torch.Tensor, sigmas: torch.Tensor, start: float = DEFAULT_POSE_START,
    end: float = DEFAULT_POSE_END,
) -> bool:
    """The official window test for the step whose sigma is ``sigma`` (ComfyUI guiders get sigmas)."""
    num_steps = torch.as_tensor(sigmas).numel() - 1
    return pose_window_active(step_index_for_sigma(sigma, sigmas), num_steps, start, end)


# ---- the combination -----------------------------------------------------------------------------

def official_pose_scale(paper_pose_scale: float) -> float:
    """Convert a pose weight in the usual CFG convention (1 = off) to the official code's (0 = off)."""
    return paper_pose_scale - 1.0


@dataclass(frozen=True)
class DCCFGConfig:
    """DC-CFG settings. ``w_pose`` is read in the convention of ``formula`` (see module docstring)."""

    w_text: float = DEFAULT_TEXT_SCALE
    w_pose: float = DEFAULT_POSE_SCALE
    start: float = DEFAULT_POSE_START
    end: float = DEFAULT_POSE_END
    formula: Formula = "official"

    def __post_init__(self) -> None:
        if self.formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {self.formula!r}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"pose window must satisfy 0 <= start <= end <= 1, got {self.start}..{self.end}")

    @property
    def pose_coefficient(self) -> float:
        """The factor on ``(e_c - e_p)`` actually applied (official convention)."""
        return self.w_pose if self.formula == "official" else official_pose_scale(self.w_pose)

    @property
    def text_pass_needed(self) -> bool:
        """At w_text == 1 the text term vanishes, so the negative-text pass is skipped."""
        return self.w_text != 1.0

    def pose_active(self, step_index: int, num_steps: int) -> bool:
        """Whether step ``step_index`` runs the negative-pose pass (window and a nonzero pose weight)."""
        return self.pose_coefficient != 0.0 and pose_window_active(step_index, num_steps, self.start, self.end)

    def evaluations(self, step_index: int, num_steps: int) -> int:
        """Model evaluations at that step: 1 (positive) + negative text + negative pose as needed."""
        return 1 + int(self.text_pass_needed) + int(self.pose_active(step_index, num_steps))


def dc_cfg(
    cond: torch.Tensor, uncond_text: torch.Tensor | None, uncond_pose: torch.Tensor | None,
    w_text: float, pose_coefficient: float,
) -> torch.Tensor:
    """``e_t + w_t (e_c - e_t) + k_p (e_c - e_p)`` in the predictions' dtype, in the official order of
    operations (so bf16 predictions round as in the official code). ``uncond_text`` None means the text
    term is off (w_text == 1); ``uncond_pose`` None means the pose term is off."""
    if uncond_text is None:
        if w_text != 1.0:
            raise ValueError(f"the negative-text prediction is required for w_text = {w_text} (only 1.0 skips it)")
        guided = cond
    else:
        guided = uncond_text + w_text * (cond - uncond_text)
    if uncond_pose is not None:
        guided = guided + pose_coefficient * (cond - uncond_pose)
    return guided


def dc_cfg_paper(
    cond: torch.Tensor, uncond_text: torch.Tensor | None, uncond_pose: torch.Tensor | None,
    w_text: float, w_pose: float,
) -> torch.Tensor:
    """The ``"paper"`` form: ``e_c + (w_t - 1)(e_c - e_t) + (w_p - 1)(e_c - e_p)`` (weights: 1 = off)."""
    guided = cond
    if uncond_text is not None:
        guided = guided + (w_text - 1.0) * (cond - uncond_text)
    elif w_text != 1.0:
        raise ValueError(f"the negative-text prediction is required for w_text = {w_text} (only 1.0 skips it)")
    if uncond_pose is not None:
        guided = guided + (w_pose - 1.0) * (cond - uncond_pose)
    return guided


def combine_predictions(
    config: DCCFGConfig, step_index: int, num_steps: int, cond: torch.Tensor,
    uncond_text: torch.Tensor | None, uncond_pose: torch.Tensor | None = None,
) -> torch.Tensor:
    """The guided prediction at a step. ``uncond_pose`` is used only inside the window; missing inside the
    window (no negative pose available) the pose term is off with a warning, never an error."""
    use_pose = config.pose_active(step_index, num_steps)
    if use_pose and uncond_pose is None:
        warnings.warn(
            "DC-CFG: no negative-pose prediction inside the pose window; pose guidance is off for this step",
            stacklevel=2,
        )
        use_pose = False
    return _combine(config, cond, uncond_text, uncond_pose if use_pose else None)


def _combine(
    config: DCCFGConfig, cond: torch.Tensor, uncond_text: torch.Tensor | None, uncond_pose: torch.Tensor | None
) -> torch.Tensor:
    if config.formula == "paper":
        return dc_cfg_paper(cond, uncond_text, uncond_pose, config.w_text, config.w_pose)
    return dc_cfg(cond, uncond_text, uncond_pose, config.w_text, config.pose_coefficient)


# ---- the per-step driver -------------------------------------------------------------------------

Cond = TypeVar("Cond")
ModelFn = Callable[[torch.Tensor, torch.Tensor, Sequence[Cond]], torch.Tensor]
"""``model_fn(x, timestep, conditions) -> predictions`` stacked along dim 0 in the order of
``conditions`` (``len(conditions) * B`` rows); a condition is whatever the callable understands
(e.g. :class:`~steadydancer_core.conditioning.PassInputs` with ``conditioning.call_dit``)."""


class DCCFGGuidance(Generic[Cond]):
    """Runs the model passes of one DC-CFG step and combines them.

    Per step: the positive pass, the negative-text pass unless w_text == 1, and the negative-pose pass
    inside the window (2 / 3 evaluations, 1 / 2 at w_text == 1). ``batched=True`` sends the passes of a
    step as ONE ``model_fn`` call. Without a negative pose the pose term is off, with a warning.
    """

    def __init__(
        self, model_fn: ModelFn, positive: Cond, negative_text: Cond | None, negative_pose: Cond | None,
        config: DCCFGConfig = DCCFGConfig(), *, batched: bool = False,
    ) -> None:
        if negative_text is None and config.text_pass_needed:
            raise ValueError(f"negative_text conditions are required for w_text = {config.w_text}")
        if negative_pose is None and config.pose_coefficient != 0.0:
            warnings.warn(
                "DC-CFG: no negative pose given; the pose guidance term is off (text CFG only). "
                "Generate one with the pose augmentation to enable it.",
                stacklevel=2,
            )
        self.model_fn = model_fn
        self.positive = positive
        self.negative_text = negative_text
        self.negative_pose = negative_pose
        self.config = config
        self.batched = batched

    def pose_active(self, step_index: int, num_steps: int) -> bool:
        return self.negative_pose is not None and self.config.pose_active(step_index, num_steps)

    def conditions_for_step(self, step_index: int, num_steps: int) -> list[Cond]:
        """The condition sets evaluated at that step, in the order positive, negative text, negative pose."""
        conditions = [self.positive]
        if self.config.text_pass_needed:
            conditions.append(self.negative_text)
        if self.pose_active(step_index, num_steps):
            conditions.append(self.negative_pose)
        return conditions

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, step_index: int, num_steps: int) -> torch.Tensor:
        conditions = self.conditions_for_step(step_index, num_steps)
        if self.batched:
            predictions = list(self.model_fn(x, timestep, conditions).chunk(len(conditions), dim=0))
            if len(predictions) != len(conditions) or predictions[0].shape[0] != x.shape[0]:
                raise ValueError(
                    f"model_fn returned a batch that does not split into {len(conditions)} x {x.shape[0]} rows"
                )
        else:
            predictions = [self.model_fn(x, timestep, [condition]) for condition in conditions]
        cond = predictions.pop(0)
        uncond_text = predictions.pop(0) if self.config.text_pass_needed else None
        uncond_pose = predictions.pop(0) if predictions else None
        return _combine(self.config, cond, uncond_text, uncond_pose)
