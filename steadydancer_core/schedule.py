"""Flow-matching noise schedules: the official SteadyDancer/Wan grids and ComfyUI's conventions.

Flow convention (official and ComfyUI alike): ``x_sigma = (1 - sigma) * x0 + sigma * noise``; the model
predicts the velocity ``v = noise - x0``; ``num_train_timesteps = 1000``.

Two grids exist and they are NOT the same:

* **Official UniPC grid** (``FlowUniPCMultistepScheduler(shift=1).set_timesteps(N, shift=s)``): the base
  table's float32 ``sigma_max = 0.999`` (not 1.0) is linearly spaced to 0 over ``N + 1`` points, the last
  point dropped, then shifted ``s*sigma / (1 + (s - 1)*sigma)`` in float64. The model receives
  ``int64(sigma * 1000)`` (truncation), the solver the float32 sigma; a final sigma 0 is appended.
* **Official DPM++ grid** (``get_sampling_sigmas``): ``linspace(1, 0, N + 1)[:N]`` shifted, so it starts at
  exactly 1.0.
* **ComfyUI** ``ModelSamplingDiscreteFlow(shift)`` (``ModelSamplingSD3``): ``sigma(t) = s*t / (1 + (s - 1)*t)``
  tabulated at ``t = i/1000, i = 1..1000``; the "simple" scheduler picks from that table starting at
  sigma 1.0 and the model receives the float ``sigma * 1000``. To reproduce the authors' numbers inside
  ComfyUI, feed :func:`official_unipc_schedule` ``.sigmas`` as SIGMAS and map each sigma back to its
  integer timestep with :meth:`FlowSchedule.timestep_for_sigma`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
# Official defaults (generate_dancer.py): 40 steps, shift 5, or 3 for the 480p size presets.
DEFAULT_STEPS = 40
DEFAULT_SHIFT = 5.0
SHIFT_480P = 3.0
AREA_480P = 832 * 480


def shift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float) -> np.ndarray | torch.Tensor:
    """Apply the flow time shift ``s*sigma / (1 + (s - 1)*sigma)`` (identity for ``shift == 1``)."""
    _check_shift(shift)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def unshift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`shift_sigmas`: the unshifted time ``t`` with ``shift_sigmas(t) == sigma``."""
    _check_shift(shift)
    return sigmas / (shift - (shift - 1) * sigmas)


def default_shift(width: int, height: int) -> float:
    """The official default shift: 3.0 for the 480p class, 5.0 otherwise.

    The official CLI uses 3.0 exactly when ``--size`` is ``832*480`` or ``480*832`` (a max-area preset).
    Every output size that preset produces (e.g. 832x464 for a landscape 832x480 reference) and the preset
    itself have ``width * height <= 832 * 480``, and every larger preset exceeds it, so deciding by area gives
    the official answer whether the caller passes the preset or the computed output size.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    return SHIFT_480P if width * height <= AREA_480P else DEFAULT_SHIFT


@dataclass(frozen=True)
class FlowSchedule:
    """A sampling grid: ``sigmas`` float32 ``[N + 1]`` ending in 0, model ``timesteps`` int64 ``[N]``."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.timesteps.ndim != 1:
            raise ValueError("sigmas and timesteps must be 1-D")
        if self.sigmas.numel() != self.timesteps.numel() + 1:
            raise ValueError(
                f"expected len(sigmas) == len(timesteps) + 1, got {self.sigmas.numel()} and "
                f"{self.timesteps.numel()}"
            )

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def timestep_for_sigma(self, sigma: float | torch.Tensor) -> int:
        """The model timestep of the grid point nearest to ``sigma`` (exact for any sigma of this grid).

        Looking the timestep up instead of recomputing ``int(sigma * 1000)`` matters: the official value is
        truncated from the float64 sigma, and from the stored float32 sigma the truncation lands one lower
        or higher for a few (steps, shift) pairs (e.g. 198 steps at shift 5, step 19).
        """
        value = float(sigma)
        distances = (self.sigmas[:-1].double() - value).abs()
        index = int(torch.argmin(distances))
        # Tolerant enough for a float32/float16 copy of a grid sigma, never reaching a neighbour.
        tolerance = min(0.5 * _local_spacing(self.sigmas, index), 1e-3)
        if distances[index] > tolerance:
            raise ValueError(
                f"sigma {value} is not on this schedule (nearest grid sigma {float(self.sigmas[index])})"
            )
        return int(self.timesteps[index])


def _local_spacing(sigmas: torch.Tensor, index: int) -> float:
    gaps = [abs(float(sigmas[index]) - float(sigmas[index + 1]))]
    if index > 0:
        gaps.append(abs(float(sigmas[index - 1]) - float(sigmas[index])))
    return min(gaps)


def truncated_timesteps(sigmas: np.ndarray) -> torch.Tensor:
    """``int64(sigma * 1000)``: the official model timesteps (truncation toward zero, from float64 sigma)."""
    return torch.from_numpy(np.asarray(sigmas, dtype=np.float64) * NUM_TRAIN_TIMESTEPS).to(torch.int64)


def official_sigma_max() -> float:
    """The first entry of the official base table: float32(0.999) = 0.9990000128746033.

    The table is ``1 - linspace(1, 1/1000, 1000)[::-1]`` cast to float32; its first value is 1 - 1/1000.
    """
    return float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def official_unipc_schedule(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT) -> FlowSchedule:
    """The official UniPC grid (see module docstring): starts at shift(0.999), timesteps truncated."""
    _check_steps(steps)
    unshifted = np.linspace(official_sigma_max(), 0.0, steps + 1)[:-1]
    sigmas = shift_sigmas(unshifted, shift)
    return FlowSchedule(
        sigmas=torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)),
        timesteps=truncated_timesteps(sigmas),
    )


def official_dpmpp_sigmas(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT) -> np.ndarray:
    """Official ``get_sampling_sigmas``: ``shift(linspace(1, 0, N + 1)[:N])`` in float64, first value 1.0."""
    _check_steps(steps)
    return shift_sigmas(np.linspace(1.0, 0.0, steps + 1)[:steps], shift)


def official_dpmpp_schedule(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT) -> FlowSchedule:
    """The official DPM++ grid as a schedule: float32 sigmas plus a final 0, timesteps truncated (first 1000)."""
    sigmas = official_dpmpp_sigmas(steps, shift)
    return FlowSchedule(
        sigmas=torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)),
        timesteps=truncated_timesteps(sigmas),
    )


def official_sigmas(steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT, solver: str = "unipc") -> torch.Tensor:
    """The official grid as a ComfyUI SIGMAS list (float32, ``N + 1`` values, final 0).

    ``solver="unipc"`` (official default, starts at shift(0.999)) or ``"dpm++"`` (starts at 1.0). Pair it
    with :meth:`FlowSchedule.timestep_for_sigma` to feed the model the official integer timesteps.
    """
    builders = {"unipc": official_unipc_schedule, "dpm++": official_dpmpp_schedule}
    if solver not in builders:
        raise ValueError(f"unknown official solver grid {solver!r}; expected one of {sorted(builders)}")
    return builders[solver](steps, shift).sigmas


def comfy_flow_sigma_table(shift: float, timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """ComfyUI ``ModelSamplingDiscreteFlow``'s ascending float32 table ``sigma(i/1000)``, i = 1..1000."""
    _check_shift(shift)
    t = torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps
    return shift_sigmas(t, shift)


def comfy_simple_sigmas(steps: int, shift: float) -> torch.Tensor:
    """What ComfyUI's "simple" scheduler gives for ``ModelSamplingSD3(shift)``: starts at 1.0, ends in 0.

    Entry k is the table value at index ``-(1 + int(k * 1000 / steps))``, i.e. unshifted ``t = 1 - k/steps``
    when ``steps`` divides 1000. Compare with :func:`official_unipc_schedule`, which starts at shift(0.999).
    """
    _check_steps(steps)
    table = comfy_flow_sigma_table(shift)
    stride = table.numel() / steps
    picked = [float(table[-(1 + int(k * stride))]) for k in range(steps)]
    return torch.tensor(picked + [0.0], dtype=torch.float32)


def comfy_timestep(sigma: float | torch.Tensor) -> float | torch.Tensor:
    """ComfyUI's model timestep for a flow sigma: the float ``sigma * 1000`` (no truncation)."""
    return sigma * NUM_TRAIN_TIMESTEPS


def comfy_percent_for_sigma(sigma: float, shift: float) -> float:
    """ComfyUI's sampling percent of a sigma (inverse of ``percent_to_sigma``): ``1 - unshift(sigma)``."""
    return 1.0 - float(unshift_sigmas(torch.tensor(float(sigma), dtype=torch.float64), shift))


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _check_shift(shift: float) -> None:
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")
