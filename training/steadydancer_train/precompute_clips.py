"""Pre-encoding of the clips: everything a training step needs, with the standalone-inference encoders
(diffusers Wan VAE, umT5, CLIP vision from ``steadydancer_core.encoders``) and the same image preparation
(``steadydancer_core.conditioning``), pose rendering (``steadydancer_core.pose.render``) and Pose
Simulation (``steadydancer_core.pose.simulation``) as the rest of the project.

Per clip (reference = the clip's first frame, as in same-source training):
  latents   = VAE(clip frames)
  y         = I2V mask | VAE(frame 0 followed by zero frames)   (the inference image condition)
  ref_lat   = y's image latent at frame 0 (== VAE(frame 0): the causal VAE encodes frame 0 alone)
  pose_lat  = VAE(rendered poses), pose0_lat = its frame 0 (== VAE(first pose frame))
  clip_x/c  = CLIP(frame 0), CLIP(first pose frame), both at native size (official squash resize inside)
  context   = umT5(prompt), unpadded
  pose_lat_sim{T*} = VAE(poses with frame 1 replaced by p0 + (p_T* - p0) / T*), T* in {2, 3, 4}
"""
from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steadydancer_core.atomic_output import atomic_path
from steadydancer_core.conditioning import i2v_mask, output_size, prepare_images
from steadydancer_core.encoders import (CLIPVisionEncoder, T5TextEncoder, WanVAE, missing_wan_components)
from steadydancer_core.errors import InputError
from steadydancer_core.model import DiTConfig
from steadydancer_core.pose.keypoints import PoseFrame, load_pose_json, select_person
from steadydancer_core.pose.render import render_frames
from steadydancer_core.pose.simulation import simulate_variant
from steadydancer_core.video import VideoReadError, read_video

from .config import TrainConfig, require
from .data import sim_key, write_cache
from .distributed import DTYPES
from .manifest import ClipEntry

SIM_T_STARS = (2, 3, 4)


class SkipClip(Exception):
    """A clip that cannot be used (too short, unreadable, no person ...): reported, then skipped."""


@dataclass
class Encoders:
    vae: WanVAE
    text: T5TextEncoder
    clip: CLIPVisionEncoder

    @classmethod
    def load(cls, folder: str, dtype: torch.dtype, device: torch.device, config: DiTConfig) -> "Encoders":
        problems = missing_wan_components(folder)
        if problems:
            raise InputError("data.encoders_dir is not a Diffusers-format Wan2.1-I2V folder: " + "; ".join(problems))
        vae = WanVAE.from_pretrained(Path(folder) / "vae", torch.float32, device)  # the VAE runs in fp32 (official)
        text = T5TextEncoder.from_pretrained(folder, dtype, device)
        clip = CLIPVisionEncoder.from_pretrained(folder, dtype, device)
        text_dim = int(text.model.config.d_model)
        clip_dim = int(clip.model.config.hidden_size)
        if (text_dim, clip_dim, vae.z_dim) != (config.text_dim, config.clip_dim, config.out_dim):
            raise InputError(f"encoders in {folder} give text {text_dim} / CLIP {clip_dim} / latent {vae.z_dim} channels; "
                             f"model.arch expects {config.text_dim} / {config.clip_dim} / {config.out_dim}")
        return cls(vae, text, clip)


def _to_model(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> [F, 3, height, width] in [-1, 1] (official normalise-then-bicubic)."""
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255.0)
    return prepare_images(images, height, width)


def _native(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(255.0).mul(2).sub(1)


def _person_frames(poses: list[PoseFrame]) -> int:
    return sum(select_person(f) is not None and bool(select_person(f).body_visible.any()) for f in poses)


def load_clip_inputs(entry: ClipEntry, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, list[PoseFrame] | None]:
    """Video frames, pose images (same count and size) and keypoints; SkipClip for unusable clips."""
    try:
        frames, info = read_video(entry.video, fps=cfg.data.fps, max_frames=cfg.data.num_frames)
    except (VideoReadError, OSError, ValueError) as exc:
        raise SkipClip(f"unreadable video {entry.video}: {exc}") from None
    if len(frames) < cfg.data.min_frames:
        raise SkipClip(f"too short: {len(frames)} frames at {cfg.data.fps:g} fps, data.min_frames is {cfg.data.min_frames}")
    count = len(frames)
    keypoints = None
    if entry.keypoints is not None:
        try:
            keypoints = load_pose_json(entry.keypoints)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SkipClip(f"unreadable keypoints {entry.keypoints}: {exc}") from None
        if len(keypoints) < count:
            raise SkipClip(f"keypoints hold {len(keypoints)} frames, the video {count} (at {cfg.data.fps:g} fps)")
        keypoints = keypoints[:count]
        if select_person(keypoints[0]) is None or not select_person(keypoints[0]).body_visible.any():
            raise SkipClip("no person in frame 0 (the reference)")
        with_person = _person_frames(keypoints)
        if with_person < count / 2:
            raise SkipClip(f"no person in {count - with_person} of {count} frames")
    if entry.pose_video is not None:
        try:
            poses, _ = read_video(entry.pose_video, fps=cfg.data.fps, max_frames=cfg.data.num_frames)
        except (VideoReadError, OSError, ValueError) as exc:
            raise SkipClip(f"unreadable pose video {entry.pose_video}: {exc}") from None
        if len(poses) < count:
            raise SkipClip(f"pose video has {len(poses)} frames, the video {count}")
        poses = poses[:count]
    else:
        poses = render_frames(keypoints, width=frames.shape[2], height=frames.shape[1])
    return frames, poses, keypoints


def encode_clip(entry: ClipEntry, cfg: TrainConfig, enc: Encoders, config: DiTConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    frames, poses, keypoints = load_clip_inputs(entry, cfg)
    native_h, native_w = frames.shape[1:3]
    height, width = (entry.height, entry.width) if entry.height else output_size(native_h, native_w, cfg.data.max_area)
    device = enc.vae.device
    count = len(frames)

    def vae(images: torch.Tensor) -> torch.Tensor:  # [F, 3, h, w] -> [16, T, h/8, w/8]
        return enc.vae.encode(images.transpose(0, 1)[None].to(device))[0].cpu()

    video = _to_model(frames, height, width)
    latents = vae(video)
    image_clip = torch.zeros_like(video)
    image_clip[0] = video[0]
    image_latent = vae(image_clip)
    mask = i2v_mask(count, image_latent.shape[2], image_latent.shape[3])
    pose_lat = vae(_to_model(poses, height, width))
    clip_feats = enc.clip.encode(torch.cat([_native(frames[:1]), _native(poses[:1])]).to(device)).float().cpu()
    context = enc.text.encode([entry.prompt], max_length=config.text_len)[0].float().cpu()
    tensors = {
        "latents": latents, "y": torch.cat([mask, image_latent]), "ref_lat": image_latent[:, :1].clone(),
        "pose_lat": pose_lat, "pose0_lat": pose_lat[:, :1].clone(), "clip_x": clip_feats[0], "clip_c": clip_feats[1],
        "context": context,
    }
    notes = {}
    if cfg.data.pose_sim_variants:
        if keypoints is None:
            notes["pose_sim"] = "no keypoints: no stage-3 variants"
        else:
            for t_star in SIM_T_STARS:
                simulated = simulate_variant(keypoints, t_star)
                images = render_frames(simulated, width=native_w, height=native_h)
                tensors[sim_key(t_star)] = vae(_to_model(images, height, width))
    # Storage dtypes: latents fp32 (small), CLIP/T5 features bf16 like the encoders' own outputs.
    for key in ("clip_x", "clip_c", "context"):
        tensors[key] = tensors[key].to(torch.bfloat16)
    meta = {"id": entry.id, "video": str(entry.video), "frames": str(count), "height": str(height), "width": str(width),
            "fps": str(cfg.data.fps), "prompt": entry.prompt, **notes}
    return tensors, meta


@dataclass
class Summary:
    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"written": self.written, "already_done": self.existing, "skipped": self.skipped, "notes": self.notes}


def precompute(cfg: TrainConfig, config: DiTConfig, entries: list[ClipEntry], rank: int, world: int,
               device: torch.device, encoders: Encoders | None = None) -> Summary:
    """Encode ``entries[rank::world]`` into ``data.cache_dir``; clips whose file exists are skipped
    (files are written atomically, so an existing file is complete)."""
    cache = Path(cfg.data.cache_dir)
    summary = Summary()
    todo = []
    for entry in entries[rank::world]:
        if (cache / f"{entry.id}.safetensors").is_file():
            summary.existing.append(entry.id)
        else:
            todo.append(entry)
    if todo and encoders is None:
        require(cfg, "data.encoders_dir")
        encoders = Encoders.load(cfg.data.encoders_dir, DTYPES[cfg.data.encoder_dtype], device, config)
    cache.mkdir(parents=True, exist_ok=True)  # only once the encoders loaded: a failed start writes nothing
    from tqdm import tqdm

    for entry in tqdm(todo, desc=f"precompute rank {rank}", unit="clip", disable=rank != 0):
        try:
            tensors, meta = encode_clip(entry, cfg, encoders, config)
        except SkipClip as exc:
            summary.skipped.append({"id": entry.id, "reason": str(exc)})
            continue
        except Exception as exc:  # never abort the other clips; the traceback goes to the summary
            summary.skipped.append({"id": entry.id, "reason": f"error: {exc!r}", "traceback": traceback.format_exc()})
            continue
        write_cache(cache / f"{entry.id}.safetensors", tensors, meta)
        summary.written.append(entry.id)
        if "pose_sim" in meta:
            summary.notes.append({"id": entry.id, "note": meta["pose_sim"]})
    return summary


def write_summary(cache_dir: str | Path, rank: int, summary: Summary, manifest_problems: list[dict[str, str]]) -> Path:
    path = Path(cache_dir) / f"precompute_summary.rank{rank}.json"
    data = summary.as_dict()
    if rank == 0:
        data["manifest_problems"] = manifest_problems
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2))
    return path
