"""Flow-matching ODE solvers: UniPC (bh2, order 2, x0-prediction) as the official sampler, and Euler.

Why our own UniPC instead of diffusers' ``UniPCMultistepScheduler``: given the official sigmas explicitly
(``use_flow_sigmas=True, flow_shift=1``, ``set_timesteps(sigmas=...)``) diffusers 0.42 does reproduce the
recorded official trajectory bit for bit (``tests/test_schedule.py`` checks both against each other), but
diffusers is not a runtime dependency inside ComfyUI (only of the standalone extra), and ComfyUI samplers
hand us x0 predictions (``denoised``), which this solver consumes directly instead of round-tripping
through a velocity. The arithmetic follows the official ``FlowUniPCMultistepScheduler``: coefficients are
0-d float32 tensors from the float32 sigmas, multistep history holds x0 predictions.

UniPC in the flow parameterisation: ``alpha = 1 - sigma``, ``lambda = log(alpha) - log(sigma)``,
``h = lambda_next - lambda``. Each step first corrects the current sample (UniC, from step 1 on, with the
order the previous predictor used), then predicts the next one (UniP); the order is
``min(2, steps left, steps done + 1)``, so order 1 at the first and the last step, and the last step
(``sigma_next = 0``) returns the x0 prediction itself.
"""
from __future__ import annotations

from typing import Callable

import torch

from .schedule import FlowSchedule

SOLVER_ORDER = 2

VelocityFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``velocity_fn(sample, timestep, step_index) -> v`` with ``v = noise - x0``."""


def _check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"the last sigma must be 0 (the solver ends at x0), got {float(sigmas[-1])}")
    if bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError("sigmas must be strictly decreasing")
    return sigmas.detach().to("cpu", torch.float32)


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    # log-SNR of the flow path; -inf at sigma = 1 (pure noise), +inf at sigma = 0.
    return torch.log(1 - sigma) - torch.log(sigma)


# A grid starting at sigma 1 (ComfyUI "simple", official DPM++) has log-SNR -inf there; like diffusers,
# move that first point just below 1 so the multistep ratios stay finite.
_SIGMA_ONE_OFFSET = 1e-6


class FlowUniPCSolver:
    """Stateful multistep UniPC-bh2 over a fixed sigma grid; call :meth:`step` once per grid point."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.sigmas = _check_sigmas(sigmas).clone()
        if float(self.sigmas[0]) > 1.0:
            raise ValueError(f"flow sigmas must not exceed 1, got {float(self.sigmas[0])}")
        if float(self.sigmas[0]) > 1.0 - _SIGMA_ONE_OFFSET:
            self.sigmas[0] = 1.0 - _SIGMA_ONE_OFFSET
        self.num_steps = self.sigmas.numel() - 1
        self.step_index = 0
        self._x0_history: list[torch.Tensor] = []  # most recent last, at most SOLVER_ORDER entries
        self._last_sample: torch.Tensor | None = None  # sample the previous predictor started from
        self._last_order = 0

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance one step from a flow-velocity prediction at ``sigmas[step_index]``."""
        sigma = self.sigmas[self.step_index]
        # Python-order as the official: 0-d float32 sigma times v, then sample minus that.
        return self.step_x0(sample - sigma * velocity, sample)

    def step_x0(self, x0_pred: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance one step from an x0 prediction (ComfyUI's ``denoised``) at ``sigmas[step_index]``."""
        if self.step_index >= self.num_steps:
            raise RuntimeError(f"all {self.num_steps} steps are done; build a new solver to sample again")
        i = self.step_index
        if self._last_sample is not None:  # UniC from step 1 on
            sample = self._correct(x0_pred, sample)
        self._x0_history = (self._x0_history + [x0_pred])[-SOLVER_ORDER:]
        order = min(SOLVER_ORDER, self.num_steps - i, len(self._x0_history))
        self._last_sample = sample
        self._last_order = order
        next_sample = self._predict(sample, order)
        self.step_index += 1
        return next_sample

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        i = self.step_index
        sigma_s, sigma_t = self.sigmas[i], self.sigmas[i + 1]
        m0 = self._x0_history[-1]
        if float(sigma_t) == 0.0:
            # The exponential-integrator update tends to x0 as sigma_t -> 0 (order 1 here by
            # lower_order_final); return it directly instead of evaluating log(0).
            return m0
        alpha_t = 1 - sigma_t
        h = _lambda(sigma_t) - _lambda(sigma_s)
        h_phi_1 = torch.expm1(-h)  # bh2: B(h) = expm1(-h) as well
        x_t = sigma_t / sigma_s * sample - alpha_t * h_phi_1 * m0
        if order == 2:
            r = (_lambda(self.sigmas[i - 1]) - _lambda(sigma_s)) / h
            d1 = (self._x0_history[-2] - m0) / r
            # Order-2 UniP uses the fixed weight 1/2 on the divided difference (as the official).
            x_t = x_t - alpha_t * h_phi_1 * (0.5 * d1)
        return x_t.to(sample.dtype)

    def _correct(self, x0_now: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """UniC: re-do the previous step with the new x0 prediction at its end point."""
        i = self.step_index
        order = self._last_order
        sigma_s, sigma_t = self.sigmas[i - 1], self.sigmas[i]
        m0 = self._x0_history[-1]
        alpha_t = 1 - sigma_t
        h = _lambda(sigma_t) - _lambda(sigma_s)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = h_phi_1
        x_t = sigma_t / sigma_s * self._last_sample - alpha_t * h_phi_1 * m0
        d1_t = x0_now - m0
        if order == 1:
            correction = 0.5 * d1_t
        else:
            r = (_lambda(self.sigmas[i - 2]) - _lambda(sigma_s)) / h
            d1 = (self._x0_history[-2] - m0) / r
            # rho solves [[1, 1], [r, 1]] rho = [b1, b2] with b_k = k! * phi_{k+1}(-h) / B(h)
            # (phi_2 = phi_1/hh - 1, phi_3 = phi_2/hh - 1/2): the UniC-2 weights.
            phi_2 = h_phi_1 / hh - 1
            phi_3 = phi_2 / hh - 0.5
            rhs = torch.stack([phi_2 * 1 / b_h, phi_3 * 2 / b_h])
            one = torch.ones_like(r)
            lhs = torch.stack([torch.stack([one, one]), torch.stack([r, one])])
            rho = torch.linalg.solve(lhs, rhs)
            correction = rho[0] * d1 + rho[1] * d1_t
        return (x_t - alpha_t * b_h * correction).to(sample.dtype)


class FlowEulerSolver:
    """First-order Euler on the flow ODE: ``x_next = x + (sigma_next - sigma) * v``."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.sigmas = _check_sigmas(sigmas)
        self.num_steps = self.sigmas.numel() - 1
        self.step_index = 0

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if self.step_index >= self.num_steps:
            raise RuntimeError(f"all {self.num_steps} steps are done; build a new solver to sample again")
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        self.step_index += 1
        return (sample + (sigma_next - sigma) * velocity).to(sample.dtype)

    def step_x0(self, x0_pred: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas[self.step_index]
        return self.step((sample - x0_pred) / sigma, sample)


SOLVERS = {"unipc": FlowUniPCSolver, "euler": FlowEulerSolver}


def make_solver(name: str, sigmas: torch.Tensor) -> FlowUniPCSolver | FlowEulerSolver:
    """Build a solver by name (``"unipc"`` = official, ``"euler"``)."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}")
    return SOLVERS[name](sigmas)


def sample_flow(
    velocity_fn: VelocityFn, noise: torch.Tensor, schedule: FlowSchedule, solver: str = "unipc"
) -> torch.Tensor:
    """Integrate from ``noise`` at ``schedule.sigmas[0]`` to x0; the model sees ``schedule.timesteps``."""
    stepper = make_solver(solver, schedule.sigmas)
    sample = noise
    for index in range(schedule.num_steps):
        velocity = velocity_fn(sample, schedule.timesteps[index], index)
        sample = stepper.step(velocity, sample)
    return sample
