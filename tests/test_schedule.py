"""Schedules and solvers against the official recordings (data/parity/schedules.json) and analytic ODEs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from steadydancer_core.schedule import (
    FlowSchedule,
    comfy_flow_sigma_table,
    comfy_percent_for_sigma,
    comfy_simple_sigmas,
    default_shift,
    official_dpmpp_schedule,
    official_dpmpp_sigmas,
    official_sigmas,
    official_unipc_schedule,
    shift_sigmas,
    unshift_sigmas,
)
from steadydancer_core.solvers import FlowEulerSolver, FlowUniPCSolver, make_solver, sample_flow


@pytest.fixture(scope="module")
def recorded(shared_dir):
    return json.loads((shared_dir / "data" / "parity" / "schedules.json").read_text())


def _recorded_velocity(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    # The field the fixture was recorded with: tanh(x) * (t / 1000) + 0.1 * x, t the integer timestep.
    return torch.tanh(sample) * (timestep / 1000) + 0.1 * sample


#: The solvers a grid entry may name, and how each is compared (data/parity/README.md).
RECORDED_SOLVERS = ("unipc", "dpm++")


def test_every_recorded_grid_matches_official(recorded):
    """Each entry of ``grids``, whatever its steps, shift and solver, is compared in full."""
    grids = recorded["grids"]
    assert grids, "the fixture records no grid"
    unknown = {g["solver"] for g in grids} - set(RECORDED_SOLVERS)
    assert not unknown, f"grids for solvers this test does not know: {unknown}"
    for grid in grids:
        (_check_unipc_grid if grid["solver"] == "unipc" else _check_dpmpp_grid)(grid)


def _check_unipc_grid(grid: dict) -> None:
    where = (grid["steps"], grid["shift"], grid["solver"])
    schedule = official_unipc_schedule(grid["steps"], grid["shift"])
    assert schedule.timesteps.dtype == torch.int64
    assert len(grid["timesteps"]) == grid["steps"] and len(grid["sigmas"]) == grid["steps"] + 1, where
    assert schedule.timesteps.tolist() == grid["timesteps"], where
    expected = torch.tensor(grid["sigmas"], dtype=torch.float32)
    assert torch.equal(schedule.sigmas, expected), where
    assert torch.equal(official_sigmas(grid["steps"], grid["shift"]), expected), where


def _check_dpmpp_grid(grid: dict) -> None:
    where = (grid["steps"], grid["shift"], grid["solver"])
    sigmas = official_dpmpp_sigmas(grid["steps"], grid["shift"])
    assert len(sigmas) == len(grid["sigmas"]), where
    np.testing.assert_allclose(sigmas, grid["sigmas"], rtol=0, atol=1e-15, err_msg=str(where))
    if "timesteps" in grid:
        assert official_dpmpp_schedule(grid["steps"], grid["shift"]).timesteps.tolist() == grid["timesteps"], where
    as_comfy_sigmas = official_sigmas(grid["steps"], grid["shift"], solver="dpm++")
    assert torch.equal(as_comfy_sigmas[:-1], torch.tensor(grid["sigmas"], dtype=torch.float32)), where
    assert float(as_comfy_sigmas[-1]) == 0.0, where


def test_40_steps_shift_5_timesteps_as_documented():
    timesteps = official_unipc_schedule(40, 5.0).timesteps.tolist()
    assert timesteps[:4] == [999, 994, 989, 983]
    assert timesteps[-2:] == [208, 113]
    assert len(timesteps) == 40


#: The velocity field the trajectory was recorded with, as the fixture names it.
RECORDED_VELOCITY = "tanh(x) * (t / 1000) + 0.1 * x, t = the integer model timestep"


def test_unipc_reproduces_recorded_trajectory(recorded):
    """Every recorded latent, exactly (same float32 operations as the official solver)."""
    trajectory = recorded["trajectory"]
    assert trajectory["velocity"] == RECORDED_VELOCITY
    schedule = official_unipc_schedule(trajectory["steps"], trajectory["shift"])
    latents = [torch.tensor(v, dtype=torch.float32).reshape(trajectory["shape"]) for v in trajectory["latents"]]
    assert len(latents) == trajectory["steps"] + 1
    solver = FlowUniPCSolver(schedule.sigmas)
    sample = latents[0].clone()
    for index, timestep in enumerate(schedule.timesteps):
        sample = solver.step(_recorded_velocity(sample, timestep), sample)
        torch.testing.assert_close(sample, latents[index + 1], rtol=0, atol=0, msg=f"step {index}")


def test_unipc_agrees_with_diffusers_given_official_sigmas():
    diffusers = pytest.importorskip("diffusers")
    schedule = official_unipc_schedule(20, 3.0)
    reference = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=1.0, predict_x0=True, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
    )
    reference.set_timesteps(sigmas=schedule.sigmas[:-1].double().numpy())
    reference.set_begin_index(0)
    ours = FlowUniPCSolver(schedule.sigmas)
    x_ours = x_ref = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    for timestep in schedule.timesteps:
        x_ours = ours.step(_recorded_velocity(x_ours, timestep), x_ours)
        x_ref = reference.step(_recorded_velocity(x_ref, timestep), timestep, x_ref).prev_sample
        torch.testing.assert_close(x_ours, x_ref, rtol=0, atol=1e-6)


def test_step_x0_equals_velocity_step():
    schedule = official_unipc_schedule(6, 5.0)
    by_velocity, by_x0 = FlowUniPCSolver(schedule.sigmas), FlowUniPCSolver(schedule.sigmas)
    x_v = x_0 = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for index, timestep in enumerate(schedule.timesteps):
        v_v, v_0 = _recorded_velocity(x_v, timestep), _recorded_velocity(x_0, timestep)
        x_v = by_velocity.step(v_v, x_v)
        x_0 = by_x0.step_x0(x_0 - schedule.sigmas[index] * v_0, x_0)
        torch.testing.assert_close(x_v, x_0, rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_straight_path_to_fixed_x0_is_exact(solver):
    # v(x, sigma) = (x - x0) / sigma is the exact velocity of the straight path to x0; both solvers are
    # exact on it (first-order exponential / Euler updates follow straight lines) and end at x0.
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 16, 3, 6, 6, generator=generator)
    noise = torch.randn(1, 16, 3, 6, 6, generator=generator)
    schedule = official_unipc_schedule(12, 5.0)
    start = (1 - schedule.sigmas[0]) * x0 + schedule.sigmas[0] * noise
    sigmas = schedule.sigmas

    def velocity(sample, timestep, index):
        return (sample - x0) / sigmas[index]

    torch.testing.assert_close(sample_flow(velocity, start, schedule, solver), x0, rtol=0, atol=1e-5)


def _gaussian_flow(mean: torch.Tensor, std: float):
    """Data N(mean, std^2): exact posterior-mean velocity and the exact PF-ODE end point."""

    def marginal(sigma: float) -> tuple[torch.Tensor, float]:
        return (1 - sigma) * mean, math.sqrt(((1 - sigma) * std) ** 2 + sigma**2)

    def velocity_at(sample: torch.Tensor, sigma: float) -> torch.Tensor:
        centre, spread = marginal(sigma)
        x0_mean = mean + (1 - sigma) * std**2 / spread**2 * (sample - centre)
        return (sample - x0_mean) / sigma

    def exact_end(start: torch.Tensor, sigma_start: float) -> torch.Tensor:
        # The affine ODE flow keeps the standardised coordinate: x0 = mean + std * (x - m) / s.
        centre, spread = marginal(sigma_start)
        return mean + std * (start - centre) / spread

    return velocity_at, exact_end


def test_gaussian_data_reaches_exact_answer_with_expected_order():
    # Data N(mean, 0.25): the exact PF-ODE end point is known in closed form. On the unshifted grid the
    # last step (which returns the x0 prediction, a first-order step) is small, so both solvers must reach
    # it, UniPC at second order (error / 4 per halving) and Euler at first order (error / 2).
    generator = torch.Generator().manual_seed(2)
    mean = torch.randn(1, 16, 2, 4, 4, generator=generator, dtype=torch.float64)
    start = torch.randn(1, 16, 2, 4, 4, generator=generator, dtype=torch.float64)
    velocity_at, exact_end = _gaussian_flow(mean, std=0.5)
    errors = {}
    for steps in (50, 100):
        schedule = official_unipc_schedule(steps, 1.0)
        expected = exact_end(start, float(schedule.sigmas[0]))
        for solver in ("unipc", "euler"):
            result = sample_flow(
                lambda x, t, i: velocity_at(x, float(schedule.sigmas[i])), start, schedule, solver
            )
            errors[solver, steps] = float((result - expected).abs().max())
    assert errors["unipc", 100] < 1e-3
    assert errors["euler", 100] < 3e-2
    assert errors["unipc", 50] / errors["unipc", 100] > 3.0
    assert 1.7 < errors["euler", 50] / errors["euler", 100] < 2.3
    assert errors["unipc", 100] < errors["euler", 100] / 20


def test_solver_misuse_raises_clear_errors():
    schedule = official_unipc_schedule(2, 5.0)
    solver = FlowUniPCSolver(schedule.sigmas)
    x = torch.zeros(1, 2, 1, 2, 2)
    solver.step(x, x)
    solver.step(x, x)
    with pytest.raises(RuntimeError, match="all 2 steps are done"):
        solver.step(x, x)
    with pytest.raises(ValueError, match="last sigma must be 0"):
        FlowEulerSolver(torch.tensor([0.9, 0.5]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        FlowUniPCSolver(torch.tensor([0.5, 0.9, 0.0]))
    with pytest.raises(ValueError, match="unknown solver"):
        make_solver("heun", schedule.sigmas)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        official_unipc_schedule(0, 5.0)
    with pytest.raises(ValueError, match="shift must be"):
        official_unipc_schedule(10, 0.0)
    with pytest.raises(ValueError, match="unknown official solver grid"):
        official_sigmas(10, 5.0, solver="euler")


def test_unipc_accepts_grids_starting_at_sigma_one():
    # ComfyUI's "simple" grid starts at sigma 1 (log-SNR -inf); the solver must still end finite at x0.
    generator = torch.Generator().manual_seed(4)
    x0 = torch.randn(1, 4, 1, 3, 3, generator=generator)
    sigmas = comfy_simple_sigmas(8, 5.0)
    assert float(sigmas[0]) == 1.0
    solver = FlowUniPCSolver(sigmas)
    sample = torch.randn(1, 4, 1, 3, 3, generator=generator)
    for index in range(8):
        sample = solver.step((sample - x0) / solver.sigmas[index], sample)
    torch.testing.assert_close(sample, x0, rtol=0, atol=1e-5)


def test_default_shift_follows_official_presets():
    assert default_shift(832, 480) == 3.0
    assert default_shift(480, 832) == 3.0
    assert default_shift(832, 464) == 3.0  # what the 832*480 preset yields for a landscape 832x480 image
    assert default_shift(1024, 576) == 5.0
    assert default_shift(1280, 720) == 5.0
    with pytest.raises(ValueError):
        default_shift(0, 480)


def test_comfy_conventions_differ_from_official_as_documented():
    table = comfy_flow_sigma_table(5.0)
    assert table.numel() == 1000 and float(table[-1]) == 1.0
    torch.testing.assert_close(table[499], torch.tensor(5 * 0.5 / (1 + 4 * 0.5)))
    simple = comfy_simple_sigmas(40, 5.0)
    official = official_unipc_schedule(40, 5.0).sigmas
    assert simple.shape == official.shape == (41,)
    # ComfyUI simple = shift(1 - k/N); the official grid = shift(0.999 * (1 - k/N)).
    k = torch.arange(40, dtype=torch.float64)
    torch.testing.assert_close(simple[:-1].double(), shift_sigmas(1 - k / 40, 5.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        official[:-1].double(), shift_sigmas(0.999 * (1 - k / 40), 5.0), rtol=0, atol=1e-6
    )
    assert float(simple[0]) == 1.0 and float(official[0]) < 1.0
    # The shift and its inverse round-trip; ComfyUI percent of the official step i is ~ i/N.
    torch.testing.assert_close(unshift_sigmas(shift_sigmas(k / 40, 3.0), 3.0), k / 40)
    assert comfy_percent_for_sigma(float(official[10]), 5.0) == pytest.approx(0.001 + 0.999 * 10 / 40, abs=1e-6)


def test_timestep_lookup_from_float32_sigma_is_exact():
    # Truncating the float32 sigma would give 978 instead of the official 979 here (198 steps, shift 5).
    schedule = official_unipc_schedule(198, 5.0)
    sigma32 = float(schedule.sigmas[19])
    assert int(np.float32(sigma32) * np.float32(1000)) != int(schedule.timesteps[19])
    assert schedule.timestep_for_sigma(sigma32) == int(schedule.timesteps[19])
    for steps, shift in ((40, 5.0), (40, 3.0), (111, 3.5), (4, 5.0)):
        grid = official_unipc_schedule(steps, shift)
        looked_up = [grid.timestep_for_sigma(s) for s in grid.sigmas[:-1]]
        assert looked_up == grid.timesteps.tolist()
    with pytest.raises(ValueError, match="not on this schedule"):
        official_unipc_schedule(4, 5.0).timestep_for_sigma(0.95)  # 0.013 off


def test_flow_schedule_validates_lengths():
    with pytest.raises(ValueError, match="len\\(sigmas\\) == len\\(timesteps\\) \\+ 1"):
        FlowSchedule(sigmas=torch.tensor([0.9, 0.0]), timesteps=torch.tensor([900, 0]))
