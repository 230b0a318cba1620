"""Long videos through the standalone pipeline and the ``animate`` CLI on tiny random models."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from steadydancer_core import cli_animate, pipeline
from steadydancer_core.conditioning import i2v_mask
from steadydancer_core.encoders import CLIPVisionEncoder, WanVAE
from steadydancer_core.pipeline import LongVideoOptions, SamplingSettings, SteadyDancerPipeline
from steadydancer_core.segments import plan_segments, segment_seed
from test_cli_animate import _forbid_loading
from tiny_models import build_tiny_dit_checkpoint, build_tiny_wan_dir

HEIGHT, WIDTH = 32, 48
POSES = 14  # with 5-frame segments carrying 1: segments of 5, 4, 4 and 1 new frames


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_video")
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    reference = np.stack([xx * 255 // WIDTH, yy * 255 // HEIGHT, np.full_like(xx, 96)], -1).astype(np.uint8)
    poses = np.zeros((POSES, HEIGHT, WIDTH, 3), np.uint8)
    for i, pose in enumerate(poses):  # a block walking over the frames, one position per frame
        pose[8:20, 2 + 3 * i: 10 + 3 * i] = rng.integers(64, 255, 3)
    negative = np.roll(poses, 5, axis=2)
    return {"root": root, "wan": build_tiny_wan_dir(root / "wan"), "dit": build_tiny_dit_checkpoint(root / "dit.safetensors"),
            "reference": reference, "poses": poses, "negative": negative}


def _settings(**changes) -> SamplingSettings:
    values = dict(frames=5, max_area=HEIGHT * WIDTH, steps=2, seed=9)
    values.update(changes)
    return SamplingSettings(**values)


def _generate(tiny, total: int, options: LongVideoOptions, pipe: SteadyDancerPipeline | None = None) -> list[np.ndarray]:
    pipe = pipe or SteadyDancerPipeline(tiny["wan"], tiny["dit"])
    chunks: list[np.ndarray] = []
    pipe.generate(tiny["reference"], tiny["poses"], "a person dances", total_frames=total, emit=chunks.append,
                  negative_poses=tiny["negative"], settings=_settings(), options=options, progress=False)
    return chunks


def test_long_video_segment_zero_equals_the_plain_run(tiny):
    chunks = _generate(tiny, POSES, LongVideoOptions(segment_frames=5, carry_frames=1, color_match="none"))
    plain = SteadyDancerPipeline(tiny["wan"], tiny["dit"])(
        tiny["reference"], tiny["poses"], "a person dances", negative_poses=tiny["negative"], settings=_settings(),
        progress=False)
    assert [len(c) for c in chunks] == [5, 4, 4, 1]
    np.testing.assert_array_equal(chunks[0], plain)


def test_long_video_is_deterministic_and_seeds_differ_per_segment(tiny):
    options = LongVideoOptions(segment_frames=5, carry_frames=1)
    first, second = (np.concatenate(_generate(tiny, 9, options)) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert first.shape == (9, HEIGHT, WIDTH, 3)


def _minus_one_to_one(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [F, 3, H, W] in [-1, 1] (the official to_tensor and normalisation)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 * 2 - 1


@pytest.mark.parametrize("anchor, carry", [("reference", 1), ("segment", 1), ("reference", 2)])
def test_long_video_segment_inputs_equal_an_independent_construction(tiny, monkeypatch, anchor, carry):
    total, segment_frames = 13, 5
    pipe = SteadyDancerPipeline(tiny["wan"], tiny["dit"])
    sampled = []
    real_sample = SteadyDancerPipeline.sample

    def recording_sample(self, dit, cond, plan, settings, progress=True, on_step=None):
        sampled.append((cond, plan, settings))
        return real_sample(self, dit, cond, plan, settings, progress, on_step)

    monkeypatch.setattr(SteadyDancerPipeline, "sample", recording_sample)
    chunks = _generate(tiny, total, LongVideoOptions(segment_frames, carry, anchor=anchor, color_match="none"), pipe)
    video = np.concatenate(chunks)
    plan = plan_segments(total, segment_frames, carry, seed=9)
    assert len(video) == total and len(sampled) == len(plan.segments)

    vae = WanVAE.from_pretrained(tiny["wan"] / "vae")
    clip = CLIPVisionEncoder.from_pretrained(tiny["wan"])
    first_cond = sampled[0][0]
    for seg, (cond, run, settings) in zip(plan.segments, sampled):
        latents = cond.latents
        assert settings.seed == segment_seed(9, seg.index) and run.frames == seg.length
        if seg.index == 0:
            continue
        # Kept frames: the last `carry` output frames before the segment, then mid-grey (0 in [-1, 1]).
        kept = video[seg.start: seg.start + carry]
        assert seg.start + carry == seg.output_range.start
        image_clip = torch.zeros(1, 3, seg.length, HEIGHT, WIDTH)
        image_clip[0, :, :carry] = _minus_one_to_one(kept).transpose(0, 1)
        torch.testing.assert_close(latents.image_condition[:, 4:], vae.encode(image_clip), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(latents.image_condition[0, :4], i2v_mask(seg.length, 4, 6, kept_frames=carry))
        # Pose and negative-pose latents of the segment's own frames, the last pose repeated past the end.
        indices = np.minimum(np.arange(seg.start, seg.start + seg.length), total - 1)
        for source, latent in ((tiny["poses"], latents.pose_latents), (tiny["negative"], latents.negative_pose_latents)):
            expected = vae.encode(_minus_one_to_one(source[indices]).transpose(0, 1)[None])
            torch.testing.assert_close(latent, expected, rtol=1e-5, atol=1e-5)
        if anchor == "reference":  # ref tokens and CLIP features stay the reference's and the first pose's
            for name in ("ref_x", "ref_c"):
                torch.testing.assert_close(getattr(latents, name), getattr(first_cond.latents, name), rtol=0, atol=0)
            torch.testing.assert_close(cond.clip_x, first_cond.clip_x, rtol=0, atol=0)
            torch.testing.assert_close(cond.clip_c, first_cond.clip_c, rtol=0, atol=0)
        else:  # the segment's own first frame and first pose, encoded alone
            torch.testing.assert_close(latents.ref_x, vae.encode(_minus_one_to_one(kept[:1]).transpose(0, 1)[None]),
                                       rtol=1e-5, atol=1e-5)
            first_pose = tiny["poses"][seg.start: seg.start + 1]
            torch.testing.assert_close(latents.ref_c, vae.encode(_minus_one_to_one(first_pose).transpose(0, 1)[None]),
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cond.clip_x, clip.encode(_minus_one_to_one(kept[:1])), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cond.clip_c, clip.encode(_minus_one_to_one(first_pose)), rtol=1e-5, atol=1e-5)


def test_long_video_segment_anchor_with_a_reference_larger_than_the_output(tiny):
    # The carried frame is at the output size, the poses at the reference's: CLIP sees both sizes.
    large = np.array(Image.fromarray(tiny["reference"]).resize((2 * WIDTH, 2 * HEIGHT)))
    pipe = SteadyDancerPipeline(tiny["wan"], tiny["dit"])
    chunks: list[np.ndarray] = []
    pipe.generate(large, tiny["poses"], "a person dances", total_frames=9, emit=chunks.append,
                  settings=_settings(), options=LongVideoOptions(5, 1, anchor="segment"), progress=False)
    assert np.concatenate(chunks).shape == (9, HEIGHT, WIDTH, 3)


# ---- the CLI ------------------------------------------------------------------------------------

def _cli_args(tiny, out: Path, *extra: str) -> list[str]:
    root = tiny["root"]
    for name in ("poses", "negative"):
        folder = root / name
        if not folder.exists():
            folder.mkdir()
            for i, frame in enumerate(tiny[name]):
                Image.fromarray(frame).save(folder / f"{i:04d}.png")
    Image.fromarray(tiny["reference"]).save(root / "ref.png")
    return ["--image", str(root / "ref.png"), "--poses", str(root / "poses"), "--negative-poses",
            str(root / "negative"), "--prompt", "a person dances", "--wan-dir", str(tiny["wan"]), "--dit",
            str(tiny["dit"]), "--out", str(out), "--steps", "2", "--max-area", str(HEIGHT * WIDTH),
            "--device", "cpu", "--no-progress", *extra]


def _mp4_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_long_video_cli_writes_exactly_n_frames_over_several_segments(tiny, tmp_path):
    out = tmp_path / "long.mp4"
    code = cli_animate.main(_cli_args(tiny, out, "--frames", "all", "--segment-frames", "5"))
    assert code == 0
    assert _mp4_frames(out) == POSES  # 14 frames: not 4n+1, four segments
    frame0 = np.asarray(Image.open(tmp_path / "long_frame0.png"))
    np.testing.assert_array_equal(frame0, tiny["reference"])
    assert not list(tmp_path.glob(".*partial*"))  # no temporary file left behind


@pytest.mark.parametrize("weights", ["present", "missing"])
def test_long_video_dry_run_prints_the_segment_plan(tiny, tmp_path, monkeypatch, capsys, weights):
    _forbid_loading(monkeypatch)
    args = _cli_args(tiny, tmp_path / "x.mp4", "--frames", "13", "--segment-frames", "5", "--carry-frames", "2",
                     "--dry-run")
    if weights == "missing":
        args[args.index("--wan-dir") + 1] = str(tmp_path / "no_wan")
    assert cli_animate.main(args) == (0 if weights == "present" else 2)
    printed = capsys.readouterr().out
    assert "segments: 4 " in printed  # 5 frames, then 3 new frames a segment: 5 + 3 + 3 + 2
    for line in ("segment 0: output frames 0..4 (5 new), 5 generated, carried 0",
                 "segment 1: output frames 5..7 (3 new), 5 generated, carried 2",
                 "segment 3: output frames 11..12 (2 new), 5 generated, carried 2, 1 padded and trimmed"):
        assert line in printed
    assert not (tmp_path / "x.mp4").exists()


def test_long_video_failed_run_keeps_the_earlier_output(tiny, tmp_path, monkeypatch):
    out = tmp_path / "kept.mp4"
    out.write_bytes(b"an earlier video")
    (tmp_path / "kept_frame0.png").write_bytes(b"an earlier frame")

    def fail_in_segment_two(self, dit, cond, plan, settings, progress=True, on_step=None):
        if settings.seed != 9:
            raise RuntimeError("out of memory in segment 2")
        return real_sample(self, dit, cond, plan, settings, progress, on_step)

    real_sample = pipeline.SteadyDancerPipeline.sample
    monkeypatch.setattr(pipeline.SteadyDancerPipeline, "sample", fail_in_segment_two)
    with pytest.raises(RuntimeError, match="segment 2"):
        cli_animate.main(_cli_args(tiny, out, "--frames", "9", "--segment-frames", "5", "--seed", "9", "--overwrite"))
    assert out.read_bytes() == b"an earlier video"
    assert (tmp_path / "kept_frame0.png").read_bytes() == b"an earlier frame"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4", "kept_frame0.png"]
