"""Per-frame fidelity against the reference frames: PSNR and SSIM (torchmetrics, no network) and LPIPS
(torchmetrics with its torchvision backbone).

Settings (recorded in the report):

* Frames are RGB uint8 compared at full resolution, on 0..255 (``data_range=255``).
* PSNR: ``10·log10(255² / MSE)`` over all pixels and channels of one frame; identical frames (MSE 0) give
  ``PSNR_CAP`` = 100 dB instead of infinity, the convention of DisCo's ``psnr_eval``, so means stay finite.
* SSIM: Wang et al. (2004) on the RGB channels, Gaussian window 11, σ 1.5, K1 0.01, K2 0.03 — torchmetrics'
  defaults and HumanVid's evaluation setting. (DisCo's script used scikit-image on the grey image with a 7×7
  uniform window; the two give different numbers.)
* ``ssim_disco``: DisCo's SSIM (``tool/metrics/ssim_l1_lpips_psnr.py``) — scikit-image ``structural_similarity``
  on the OpenCV grey image (7×7 uniform window, sample covariance), for comparison with tables made with it.
* LPIPS: torchmetrics' LPIPS (the original linear heads shipped with torchmetrics) on the VGG backbone, as DisCo
  and HumanVid use, inputs scaled to [-1, 1] (``normalize=True``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

PSNR_CAP = 100.0
SSIM_SETTINGS = {"gaussian_kernel": True, "kernel_size": 11, "sigma": 1.5, "k1": 0.01, "k2": 0.03}
# Frames per forward: bounds the memory of SSIM's five filtered maps and of the LPIPS backbone.
CHUNK = 8


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` on 0..255."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def _per_frame(generated: np.ndarray, reference: np.ndarray, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> np.ndarray:
    if generated.shape != reference.shape:
        raise ValueError(f"frame metrics: shapes differ, generated {generated.shape} vs reference {reference.shape}")
    values = [fn(as_tensor(generated[i:i + CHUNK]), as_tensor(reference[i:i + CHUNK]))
              for i in range(0, len(generated), CHUNK)]
    return torch.cat(values).double().numpy()


def psnr_per_frame(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """PSNR in dB of each frame pair, capped at ``PSNR_CAP``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return peak_signal_noise_ratio(a, b, data_range=255.0, reduction="none", dim=(1, 2, 3))

    return np.minimum(_per_frame(generated, reference, fn), PSNR_CAP)


def ssim_per_frame(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """SSIM of each frame pair (``SSIM_SETTINGS``)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # float64: SSIM's variances are E[x²] − μ², which float32 cancels badly on 0..255 data (~1e-4 off on
        # flat regions, where the exact value is known in closed form).
        return structural_similarity_index_measure(a.double(), b.double(), data_range=255.0, reduction="none",
                                                   **SSIM_SETTINGS)

    return _per_frame(generated, reference, fn)


def ssim_disco_per_frame(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """DisCo's SSIM of each frame pair: scikit-image on ``cv2.COLOR_RGB2GRAY`` images, its default window."""
    import cv2
    from skimage.metrics import structural_similarity

    if generated.shape != reference.shape:
        raise ValueError(f"frame metrics: shapes differ, generated {generated.shape} vs reference {reference.shape}")
    return np.array([structural_similarity(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY),
                                           data_range=255) for a, b in zip(generated, reference)])


class Lpips:
    """torchmetrics' LPIPS on ``net`` ("vgg" or "alex"), its backbone loaded from ``models_dir``'s checkpoints."""

    def __init__(self, net: str = "vgg", models_dir: Path | None = None, device: str = "cpu") -> None:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        from .backbones import torch_hub_dir

        with torch_hub_dir(models_dir):
            self.metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none", normalize=True)
        self.metric = self.metric.to(device).eval()
        self.device = device
        self.net = net

    @torch.no_grad()
    def per_frame(self, generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
        def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            self.metric.reset()
            # reduction="none": one distance per frame; inputs in [0, 1] (normalize=True scales them to [-1, 1]).
            self.metric.update(a.to(self.device) / 255.0, b.to(self.device) / 255.0)
            return self.metric.compute().reshape(-1).cpu()

        return _per_frame(generated, reference, fn)
