"""Rectified-flow conventions of Wan2.1 for training.

sigma in [0, 1], sigma = 1 is pure noise: ``x_sigma = (1 - sigma) x0 + sigma eps``; the model predicts the
velocity ``v* = eps - x0`` (so ``x0 = x_sigma - sigma v``); the DiT receives ``t = 1000 sigma`` as a float
(DiffSynth feeds exactly this; Wan inference truncates to int, a difference below one grid step).
"""
from __future__ import annotations

import math

import torch

from .config import FlowConfig

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 time shift ``s sigma / (1 + (s - 1) sigma)`` (monotone, keeps 0 and 1 fixed)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def wan_sigma_grid(shift: float, size: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The DiffSynth Wan training grid: ``shift(linspace(1, 0, size + 1)[:-1])``, float64, descending."""
    return shift_sigma(torch.linspace(1.0, 0.0, size + 1, dtype=torch.float64)[:-1], shift)


def sample_sigma(cfg: FlowConfig, generator: torch.Generator) -> float:
    """One sigma per training sample, drawn from ``generator`` (CPU) so a step is reproducible."""
    if cfg.sampler == "wan_grid":
        grid = wan_sigma_grid(cfg.shift, cfg.grid_size)
        index = int(torch.randint(0, cfg.grid_size, (1,), generator=generator))
        return float(grid[index])
    if cfg.sampler == "uniform":
        return float(torch.rand((1,), generator=generator, dtype=torch.float64))
    normal = float(torch.randn((1,), generator=generator, dtype=torch.float64))
    sigma = 1.0 / (1.0 + math.exp(-(cfg.logit_mean + cfg.logit_std * normal)))
    if cfg.sampler == "logit_normal":
        return sigma
    if cfg.sampler == "shift":
        return float(shift_sigma(torch.tensor(sigma, dtype=torch.float64), cfg.shift))
    raise ValueError(f"unknown flow.sampler {cfg.sampler!r}")


def ds_bell_weight(sigma: float, shift: float, size: int = NUM_TRAIN_TIMESTEPS) -> float:
    """DiffSynth's loss weight: a Gaussian bell over ``t = 1000 sigma`` centred at 500, minus its minimum
    over the training grid, normalised to mean 1 over that grid (zero weight at the grid ends)."""
    def bell(t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-2.0 * ((t - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)

    grid_t = wan_sigma_grid(shift, size) * NUM_TRAIN_TIMESTEPS
    values = bell(grid_t)
    low = values.min()
    mean = (values - low).mean()
    return float((bell(torch.tensor(sigma * NUM_TRAIN_TIMESTEPS, dtype=torch.float64)) - low) / mean)


def loss_weight(cfg: FlowConfig, sigma: float) -> float:
    if cfg.weighting == "none":
        return 1.0
    if cfg.weighting == "ds_bell":
        return ds_bell_weight(sigma, cfg.shift, cfg.grid_size)
    raise ValueError(f"unknown flow.weighting {cfg.weighting!r}")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    return (1.0 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def timestep_from_sigma(sigma: float, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.full((batch,), sigma * NUM_TRAIN_TIMESTEPS, dtype=torch.float32, device=device)
