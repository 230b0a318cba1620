"""Set-level metrics over every clip of the evaluation: FID on frames and FVD on 16-frame clips.

* FID: torchmetrics' ``FrechetInceptionDistance`` on torch-fidelity's InceptionV3 (the TF FID weights), 2048-d
  pool features of every generated frame against every reference frame (DisCo computes its TikTok FID over the
  frames of the whole test set, with clean-fid's antialiased resize; torchmetrics' ``antialias=True`` resize is
  the matching choice).
* FVD: cd-fvd with its I3D (``i3d_pretrained_400.pt``, Kinetics-400 logits — the network and weights of DisCo's
  ``FVD-3DInception``), on consecutive non-overlapping clips of ``FVD_CLIP_FRAMES`` = 16 frames (DisCo's
  ``--sample_duration 16``; a remainder shorter than 16 frames is left out), resized by cd-fvd to 224×224
  (bilinear; DisCo used PIL bicubic), Fréchet distance between the generated and the reference clip sets.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .frame_metrics import CHUNK

FVD_CLIP_FRAMES = 16


class Fid:
    """Accumulates Inception features of generated and reference frames; ``compute()`` gives the FID."""

    def __init__(self, weights: Path, device: str = "cpu", feature: int = 2048) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        # feature: the Inception layer (2048 = pool3, the standard FID; 64/192/768 exist for quick checks).
        self.metric = FrechetInceptionDistance(feature=feature, normalize=False, antialias=True,
                                               feature_extractor_weights_path=str(weights)).to(device)
        self.device = device
        self.counts = {"generated": 0, "reference": 0}

    @torch.no_grad()
    def update(self, frames: np.ndarray, *, real: bool) -> None:
        for i in range(0, len(frames), CHUNK):
            batch = torch.from_numpy(np.ascontiguousarray(frames[i:i + CHUNK])).permute(0, 3, 1, 2)
            self.metric.update(batch.to(self.device), real=real)
        self.counts["reference" if real else "generated"] += len(frames)

    def compute(self) -> float:
        short = [f"{side} {count}" for side, count in self.counts.items() if count < 2]
        if short:
            raise ValueError(f"FID needs at least 2 frames on each side, got {', '.join(short)}")
        return float(self.metric.compute())


def clips_of(frames: np.ndarray, length: int = FVD_CLIP_FRAMES) -> np.ndarray:
    """``[T, H, W, 3]`` -> ``[T // length, length, H, W, 3]`` consecutive clips (the remainder left out)."""
    count = len(frames) // length
    return frames[:count * length].reshape(count, length, *frames.shape[1:])


class Fvd:
    """Accumulates I3D statistics of generated and reference clips; ``compute()`` gives the FVD."""

    def __init__(self, weights: Path, device: str = "cpu") -> None:
        from cdfvd import fvd

        self.evaluator = fvd.cdfvd("i3d", n_real="full", n_fake="full", ckpt_path=str(weights), device=device)
        self.counts = {"generated": 0, "reference": 0}

    @torch.no_grad()
    def update(self, frames: np.ndarray, *, real: bool) -> None:
        clips = clips_of(frames)
        if len(clips) == 0:
            return
        if real:
            self.evaluator.add_real_stats(clips)
        else:
            self.evaluator.add_fake_stats(clips)
        self.counts["reference" if real else "generated"] += len(clips)

    def compute(self) -> float:
        short = [f"{side} {count}" for side, count in self.counts.items() if count < 2]
        if short:
            raise ValueError(f"FVD needs at least 2 clips of {FVD_CLIP_FRAMES} frames on each side, got {', '.join(short)}")
        return float(self.evaluator.compute_fvd_from_stats())
