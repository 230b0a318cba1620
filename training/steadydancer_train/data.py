"""The pre-encoded clip cache and the stateless, resumable sample order.

One ``<id>.safetensors`` per clip holds everything a training step needs, so training never loads the
VAE, T5 or CLIP. Tensor keys and shapes (``T`` latent frames, ``h, w`` latent size):

==================  ==================  ====================================================
key                 shape               content
==================  ==================  ====================================================
latents             [16, T, h, w]       VAE(clip)  -> x0
y                   [20, T, h, w]       I2V input: 4-ch first-frame mask | VAE(frame0 + zeros)
ref_lat             [16, 1, h, w]       VAE(frame 0), the reference image (-> ref_x)
pose_lat            [16, T, h, w]       VAE(rendered pose video)
pose0_lat           [16, 1, h, w]       VAE(first pose frame) (-> ref_c)
clip_x, clip_c      [257, clip_dim]     CLIP-vision penultimate tokens of frame 0 / pose frame 0
context             [L, text_dim]       T5 tokens of the prompt, unpadded (L <= text_len)
pose_lat_sim{2,3,4} [16, T, h, w]       stage 3: VAE(pose video with frame 1 replaced by the
                                        Pose-Simulation interpolation for T* = 2, 3, 4)
==================  ==================  ====================================================
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steadydancer_core.atomic_output import atomic_path
from steadydancer_core.errors import InputError

FORMAT_VERSION = "steadydancer-train-cache-1"
REQUIRED_KEYS = ("latents", "y", "ref_lat", "pose_lat", "pose0_lat", "clip_x", "clip_c", "context")


def sim_key(t_star: int) -> str:
    return f"pose_lat_sim{t_star}"


def write_cache(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write one clip atomically (a killed precompute never leaves a half file that a resumed run would
    take as finished). NaN/Inf is an error: it would poison training silently."""
    missing = [k for k in REQUIRED_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"cache for {path} lacks {missing}")
    for key, value in tensors.items():
        if not torch.isfinite(value.float()).all():
            raise ValueError(f"cache tensor {key!r} for {path} contains NaN/Inf")
    meta = {"format": FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}}
    with atomic_path(path) as temporary:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary), metadata=meta)


@dataclass(frozen=True)
class ClipHeader:
    path: Path
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]


def read_header(path: Path) -> ClipHeader:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    return ClipHeader(path, shapes, dict(meta))


class CachedClips:
    """The clips of a cache folder in a fixed (sorted) order."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir)
        if not self.root.is_dir():
            raise InputError(f"cache folder not found: {self.root} (run training/precompute.py first)")
        # Hidden files are the partial writes of a killed precompute, never clips.
        self.files = sorted(p for p in self.root.glob("*.safetensors") if not p.name.startswith("."))
        if not self.files:
            raise InputError(f"no *.safetensors clips in cache folder {self.root} (run training/precompute.py first)")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> dict[str, torch.Tensor]:
        with safe_open(str(self.files[index]), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}

    def validate(self, *, in_dim: int, in_dim_c: int, out_dim: int, clip_dim: int, text_dim: int,
                 text_len: int, patch_size: tuple[int, int, int], sim_variants: list[int] | None) -> None:
        """Check every file's header against the model before any weights are loaded."""
        image_ch = in_dim - out_dim  # mask + image latent channels of the I2V input
        for path in self.files:
            try:
                head = read_header(path)
            except Exception as exc:  # a truncated file must name itself
                raise InputError(f"unreadable cache file {path}: {exc}") from exc
            if head.metadata.get("format") != FORMAT_VERSION:
                raise InputError(f"{path}: cache format {head.metadata.get('format')!r}, expected {FORMAT_VERSION!r}")
            missing = [k for k in REQUIRED_KEYS if k not in head.shapes]
            if missing:
                raise InputError(f"{path}: missing cache tensors {missing}")
            s = head.shapes
            c, t, h, w = s["latents"]
            expected = {
                "latents": (out_dim, t, h, w), "y": (image_ch, t, h, w), "ref_lat": (out_dim, 1, h, w),
                "pose_lat": (in_dim_c, t, h, w), "pose0_lat": (in_dim_c, 1, h, w),
            }
            if sim_variants:
                for t_star in sim_variants:
                    if sim_key(t_star) not in s:
                        raise InputError(
                            f"{path}: stage 3 needs {sim_key(t_star)!r} (Pose-Simulation latents) but the cache has none; "
                            "give the clips 'keypoints' in the manifest and rerun precompute with data.pose_sim_variants: true")
                    expected[sim_key(t_star)] = (in_dim_c, t, h, w)
            for key, shape in expected.items():
                if s[key] != shape:
                    raise InputError(f"{path}: tensor {key!r} has shape {list(s[key])}, expected {list(shape)} for this model config")
            if h % patch_size[1] or w % patch_size[2]:
                raise InputError(f"{path}: latent size {h}x{w} is not divisible by the patch size {patch_size[1:]}")
            for key in ("clip_x", "clip_c"):
                if len(s[key]) != 2 or s[key][1] != clip_dim:
                    raise InputError(f"{path}: {key} has shape {list(s[key])}, expected [257, {clip_dim}]")
            ctx = s["context"]
            if len(ctx) != 2 or ctx[1] != text_dim or ctx[0] > text_len:
                raise InputError(f"{path}: context has shape {list(ctx)}, expected [L <= {text_len}, {text_dim}]")


# ---- stateless sample order ---------------------------------------------------------------
# Global sample number g counts micro-batches over the whole run and all ranks:
#   g = (step * grad_accum + micro) * world + rank
# so a 1-process run with grad_accum = 2 and a 2-process run with grad_accum = 1 see the same samples
# in each optimizer step, and a resumed run only needs the step number.


def global_sample_number(step: int, micro: int, rank: int, world: int, grad_accum: int) -> int:
    return (step * grad_accum + micro) * world + rank


def _seed_int(*parts: int | str) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def clip_index(seed: int, g: int, num_clips: int) -> int:
    """Epoch-wise permutation: each clip once per epoch, a fresh order every epoch."""
    epoch, position = divmod(g, num_clips)
    order = torch.randperm(num_clips, generator=torch.Generator().manual_seed(_seed_int(seed, "order", epoch)))
    return int(order[position])


def sample_generator(seed: int, stage: int, g: int) -> torch.Generator:
    """CPU generator for everything random about sample g (sigma, noise, pose-simulation choice)."""
    return torch.Generator().manual_seed(_seed_int(seed, "sample", stage, g))


def sample_torch_seed(seed: int, stage: int, g: int) -> int:
    """Seed for torch's global RNG around sample g's forward (dropout in the pose alignment unit)."""
    return _seed_int(seed, "dropout", stage, g)
