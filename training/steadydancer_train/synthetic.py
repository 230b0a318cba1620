"""Small generated fixtures: a random Wan2.1-I2V checkpoint and a cache of random clips, shaped for a
given DiT config. Used by the tests and the step benchmark (no downloads, seconds on CPU)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from steadydancer_core.model import DiTConfig, SteadyDancerDiT

from .data import write_cache
from .model_setup import is_pose_key

#: Smaller than ``TINY`` (dim 64, head dim 32) so a CPU training step of a test takes well under a second.
MICRO = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32, text_dim=32, text_len=16, clip_dim=16)


def write_arch_json(path: str | Path, config: DiTConfig) -> Path:
    """An official-style config.json usable as ``model.arch``."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_official_json(), indent=2))
    return path


def write_random_wan_i2v(path: str | Path, config: DiTConfig, seed: int = 0) -> Path:
    """A random DiT of ``config`` without the pose modules: the key layout of an original Wan2.1-I2V file."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SteadyDancerDiT(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not is_pose_key(k)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_random_cache(cache_dir: str | Path, config: DiTConfig, num_clips: int, latent_frames: int = 3,
                       height: int = 8, width: int = 8, sim_variants: tuple[int, ...] = (2, 3, 4),
                       text_tokens: int = 5, clip_tokens: int = 257, seed: int = 0) -> list[Path]:
    """``num_clips`` cache files with random latents; the I2V mask is the real one (frame 0 ones)."""
    generator = torch.Generator().manual_seed(seed)
    t, h, w = latent_frames, height, width
    paths = []
    for i in range(num_clips):
        def rnd(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator)
        latents = rnd(config.out_dim, t, h, w)
        mask = torch.zeros(config.in_dim - 2 * config.out_dim, t, h, w)
        mask[:, 0] = 1.0
        image = torch.zeros(config.out_dim, t, h, w)
        image[:, 0] = latents[:, 0]
        pose = rnd(config.in_dim_c, t, h, w)
        tensors = {
            "latents": latents, "y": torch.cat([mask, image]), "ref_lat": latents[:, :1].clone(),
            "pose_lat": pose, "pose0_lat": pose[:, :1].clone(), "clip_x": rnd(clip_tokens, config.clip_dim),
            "clip_c": rnd(clip_tokens, config.clip_dim), "context": rnd(text_tokens, config.text_dim),
        }
        for t_star in sim_variants:
            sim = pose.clone()
            sim[:, 1:2] = rnd(config.in_dim_c, 1, h, w)
            tensors[f"pose_lat_sim{t_star}"] = sim
        path = Path(cache_dir) / f"clip{i:04d}.safetensors"
        write_cache(path, tensors, {"id": f"clip{i:04d}", "frames": str(4 * (t - 1) + 1)})
        paths.append(path)
    return paths


def write_training_fixture(root: str | Path, config: DiTConfig = MICRO) -> Path:
    """A complete tiny training set-up in ``root``: ``arch.json``, a random Wan2.1-I2V start checkpoint
    ``wan.safetensors`` and a 3-clip latent cache ``cache/`` (what the end-to-end and distributed tests use)."""
    root = Path(root)
    write_arch_json(root / "arch.json", config)
    write_random_wan_i2v(root / "wan.safetensors", config, seed=0)
    write_random_cache(root / "cache", config, num_clips=3, clip_tokens=9, seed=1)
    return root
