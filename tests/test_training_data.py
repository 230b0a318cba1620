"""Data preparation end to end: a folder of generated videos -> build_manifest (pose detection + sidecar
prompts) -> precompute with the tiny Diffusers-format encoders (resumable, bad clips reported) -> a stage-3
training step on that cache."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from steadydancer_core.encoders import WanVAE  # noqa: E402
from steadydancer_core.pose.keypoints import PersonPose, PoseFrame  # noqa: E402
from steadydancer_core.video import write_video  # noqa: E402
from steadydancer_train.build_manifest_lib import build_manifest  # noqa: E402
from steadydancer_train.config import config_from_dict  # noqa: E402
from steadydancer_train.data import CachedClips, read_header  # noqa: E402
from steadydancer_train.manifest import read_manifest  # noqa: E402
from steadydancer_train.precompute_clips import precompute  # noqa: E402
from steadydancer_train.synthetic import MICRO, write_arch_json  # noqa: E402
from steadydancer_train.trainer import run_stage  # noqa: E402
from tiny_models import build_tiny_dit_checkpoint, build_tiny_wan_dir  # noqa: E402

SIZE, FRAMES = 64, 9


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class BrightBlobDetector:
    """A real (if simple) detector for the generated clips: the person is the bright blob; its bounding
    box gives a stick figure (head at the top, feet at the bottom)."""

    name = "bright-blob"

    def detect(self, image: np.ndarray) -> PoseFrame:
        h, w = image.shape[:2]
        ys, xs = np.nonzero(image.mean(axis=2) > 128)
        if len(xs) == 0:
            return PoseFrame([], w, h)
        x0, x1, y0, y1 = xs.min() / w, xs.max() / w, ys.min() / h, ys.max() / h
        cx = (x0 + x1) / 2
        body = np.zeros((18, 2))
        body[:, 0] = cx
        body[:, 1] = np.linspace(y0, y1, 18)
        body[2::3, 0], body[5::3, 0] = x0, x1  # spread some joints to the sides
        return PoseFrame([PersonPose.create(body=body)], w, h)


def blob_video(frames: int, shift: int) -> np.ndarray:
    video = np.full((frames, SIZE, SIZE, 3), 20, np.uint8)
    for t in range(frames):
        x = 10 + shift + 2 * t + (8 if t % 2 else 0)  # not linear: interpolating p0..p_T* changes p1
        video[t, 12:52, x:x + 14] = 230
    return video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    videos = root / "videos"
    write_video(blob_video(FRAMES, 0), videos / "dance_a.mp4")
    write_video(blob_video(FRAMES, 4), videos / "dance_b.mp4")
    write_video(np.full((FRAMES, SIZE, SIZE, 3), 20, np.uint8), videos / "empty_room.mp4")  # nobody in it
    write_video(blob_video(5, 0), videos / "short.mp4")  # 5 frames < 9
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    (videos / "dance_a.txt").write_text("a person dances in the park\n")
    (videos / "dance_b.txt").write_text("a person jumps")
    build_tiny_wan_dir(root / "wan", MICRO)
    write_arch_json(root / "arch.json", MICRO)
    return root


def data_cfg(root: Path, **data) -> dict:
    return {"stage": 3, "data": {"manifest": str(root / "metadata.jsonl"), "cache_dir": str(root / "cache"),
                                 "encoders_dir": str(root / "wan"), "encoder_dtype": "fp32", "num_frames": FRAMES,
                                 "min_frames": FRAMES, "max_area": SIZE * SIZE, **data},
            "model": {"arch": str(root / "arch.json")}, "compute": {"device": "cpu", "dtype": "fp32"}}


def test_build_manifest_precompute_and_train(dataset):
    entries, problems = build_manifest(dataset / "videos", dataset / "metadata.jsonl", BrightBlobDetector(),
                                       fps=16, frames=FRAMES, progress=False)
    reasons = {p["id"]: p["reason"] for p in problems}
    assert "unreadable video" in reasons["broken"]
    assert "no prompt file" in reasons["empty_room"]
    assert {e.id for e in entries} == {"dance_a", "dance_b", "empty_room", "short"}
    read_back, bad = read_manifest(dataset / "metadata.jsonl")
    assert not bad and [e.prompt for e in read_back if e.id == "dance_a"] == ["a person dances in the park"]

    cfg = config_from_dict(data_cfg(dataset))
    summary = precompute(cfg, MICRO, read_back, 0, 1, torch.device("cpu"))
    assert sorted(summary.written) == ["dance_a", "dance_b"]
    skipped = {s["id"]: s["reason"] for s in summary.skipped}
    assert skipped["short"].startswith("too short: 5 frames")
    assert skipped["empty_room"] == "no person in frame 0 (the reference)"

    cache = dataset / "cache"
    clip = CachedClips(cache)
    clip.validate(in_dim=MICRO.in_dim, in_dim_c=MICRO.in_dim_c, out_dim=MICRO.out_dim, clip_dim=MICRO.clip_dim,
                  text_dim=MICRO.text_dim, text_len=MICRO.text_len, patch_size=MICRO.patch_size, sim_variants=[2, 3, 4])
    tensors = clip.load(0)
    t = 1 + (FRAMES - 1) // 4
    assert tensors["latents"].shape == (16, t, SIZE // 8, SIZE // 8)
    assert tensors["clip_x"].shape == (257, MICRO.clip_dim) and tensors["context"].shape[1] == MICRO.text_dim
    assert float(tensors["y"][:4, 0].min()) == 1.0 and float(tensors["y"][:4, 1:].abs().max()) == 0.0
    # ref_lat is VAE(frame 0 alone): the causal VAE's first latent of the whole clip.
    torch.testing.assert_close(tensors["ref_lat"], tensors["latents"][:, :1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tensors["pose0_lat"], tensors["pose_lat"][:, :1])
    for t_star in (2, 3, 4):
        sim = tensors[f"pose_lat_sim{t_star}"]
        torch.testing.assert_close(sim[:, :1], tensors["pose_lat"][:, :1])  # p0 untouched
        assert float((sim[:, 1] - tensors["pose_lat"][:, 1]).abs().max()) > 1e-4  # p1 replaced
    head = read_header(cache / "dance_a.safetensors")
    assert head.metadata["prompt"] == "a person dances in the park" and head.metadata["frames"] == str(FRAMES)

    # Resumable: a rerun finds everything done and writes nothing.
    stamp = (cache / "dance_a.safetensors").stat().st_mtime_ns
    again = precompute(cfg, MICRO, read_back, 0, 1, torch.device("cpu"))
    assert sorted(again.existing) == ["dance_a", "dance_b"] and not again.written
    assert (cache / "dance_a.safetensors").stat().st_mtime_ns == stamp

    # Sharding: rank 1 of 2 takes every second entry.
    sharded = precompute(cfg, MICRO, read_back, 1, 2, torch.device("cpu"))
    assert set(sharded.existing) | {s["id"] for s in sharded.skipped} == {e.id for e in read_back[1::2]}

    # A stage-3 step on this cache (Pose-Simulation latents from the precompute).
    train = data_cfg(dataset)
    train["model"]["steadydancer_checkpoint"] = str(build_tiny_dit_checkpoint(dataset / "sd.safetensors", MICRO))
    train.update({"lora": {"rank": 2, "alpha": 2}, "optim": {"steps": 2, "warmup_steps": 0},
                  "run": {"output_dir": str(dataset / "out"), "save_every": 2}})
    records = run_stage(config_from_dict(train))
    assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)


def test_manifest_lines_with_problems_are_reported(tmp_path):
    lines = [{"video": "a.mp4", "prompt": "x", "keypoints": "a.json"}, {"video": "b.mp4", "prompt": "y"},
             {"video": "a.mp4", "keypoints": "a.json"}, {"video": "c.mp4", "keypoints": "c.json", "height": 100, "width": 64},
             {"video": "d.mp4", "keypoints": "d.json", "fps": 16}]
    path = tmp_path / "metadata.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    entries, problems = read_manifest(path)
    assert [e.id for e in entries] == ["a"] and entries[0].video == tmp_path / "a.mp4"
    reasons = [p["reason"] for p in problems]
    assert any("needs 'keypoints'" in r for r in reasons) and any("duplicate id" in r for r in reasons)
    assert any("multiples of 16" in r for r in reasons) and any("unknown fields ['fps']" in r for r in reasons)
    assert any(r.startswith("bad manifest line") and "line 6" in p["id"] for p, r in zip(problems, reasons))


def test_vae_first_latent_is_the_first_frame_alone(dataset):
    """The property precompute relies on for ref_lat (model_spec §8.11), checked on the tiny VAE."""
    vae = WanVAE.from_pretrained(dataset / "wan" / "vae")
    video = torch.rand(1, 3, FRAMES, SIZE, SIZE) * 2 - 1
    torch.testing.assert_close(vae.encode(video)[:, :, :1], vae.encode(video[:, :, :1]), rtol=1e-4, atol=1e-5)
