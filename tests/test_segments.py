"""The long-video segment plan, keep mask, seeds, colour matching and chain (``steadydancer_core.segments``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steadydancer_core.conditioning import i2v_mask
from steadydancer_core.segments import (
    SegmentRequest,
    generate_long_video,
    match_colors,
    plan_segments,
    segment_seed,
    shortest_valid_length,
)

CASES = [(n, s, c) for n in (1, 2, 4, 5, 6, 33, 50, 81, 82, 85, 160, 161, 162, 241, 300, 321)
         for s, c in ((5, 1), (9, 1), (9, 4), (81, 1), (81, 5), (21, 20))]


@pytest.mark.parametrize("total, segment_frames, carry", CASES)
def test_segment_plan_invariants(total, segment_frames, carry):
    plan = plan_segments(total, segment_frames, carry, seed=4)
    segments = plan.segments
    # Every output frame is generated exactly once, in order.
    covered = [i for seg in segments for i in seg.output_range]
    assert covered == list(range(total))
    # Segment count: one segment holds S frames, every further one S - C new frames.
    expected = 1 if total <= segment_frames else 1 + math.ceil((total - segment_frames) / (segment_frames - carry))
    assert len(segments) == expected
    for seg in segments:
        assert (seg.length - 1) % 4 == 0 and seg.length <= segment_frames
        assert seg.carried + seg.emitted <= seg.length
        # The shortest valid length: 4 frames fewer would not hold the carried and new frames.
        is_last = seg.index == len(segments) - 1
        if is_last:
            assert seg.length - 4 < seg.carried + seg.emitted
        else:
            assert seg.length == segment_frames and seg.carried + seg.emitted == segment_frames
        indices = seg.pose_indices(total)
        assert len(indices) == seg.length
        real = min(seg.length, total - seg.start)
        np.testing.assert_array_equal(indices[:real], np.arange(seg.start, seg.start + real))
        assert (indices[real:] == total - 1).all()  # padded with the last pose
    first = segments[0]
    assert (first.start, first.carried, first.seed) == (0, 0, 4)
    for previous, seg in zip(segments, segments[1:]):
        # The kept frames are the last C output frames before this segment.
        assert seg.carried == carry
        assert seg.start == previous.output_range.stop - carry


def test_segment_plan_describe_lists_every_segment():
    lines = plan_segments(241, 81, 1).describe(lambda length: 3 * length)
    assert lines[0].startswith("segments: 3 ")
    assert lines[1:] == [
        "segment 0: output frames 0..80 (81 new), 81 generated, carried 0, DiT evaluations 243",
        "segment 1: output frames 81..160 (80 new), 81 generated, carried 1, DiT evaluations 243",
        "segment 2: output frames 161..240 (80 new), 81 generated, carried 1, DiT evaluations 243",
    ]
    # 82 frames: a 5-frame last segment, its 3 padded frames trimmed.
    assert plan_segments(82, 81, 1).describe()[2] == (
        "segment 1: output frames 81..81 (1 new), 5 generated, carried 1, 3 padded and trimmed")


@pytest.mark.parametrize("args, message", [
    ((0,), "at least 1 frame"),
    ((100, 80), "segment_frames: frame count must be 4n\\+1"),
    ((100, 81, 0), "carry_frames must be between 1 and segment_frames - 1 = 80"),
    ((100, 81, 81), "carry_frames must be between 1 and segment_frames - 1 = 80"),
    ((3, 1, 1), "segment_frames 1 holds no frame"),
])
def test_segment_plan_rejects_bad_values(args, message):
    with pytest.raises(ValueError, match=message):
        plan_segments(*args)


def test_shortest_valid_length():
    assert [shortest_valid_length(n) for n in (1, 2, 5, 6, 9, 80, 81, 82)] == [1, 5, 5, 9, 9, 81, 81, 85]


def test_segment_seeds_are_deterministic_and_distinct():
    assert segment_seed(123, 0) == 123
    seeds = [segment_seed(123, i) for i in range(1, 50)]
    assert len(set(seeds)) == len(seeds) and 123 not in seeds
    assert seeds == [segment_seed(123, i) for i in range(1, 50)]
    assert segment_seed(124, 1) != segment_seed(123, 1)
    assert all(0 <= s < 2**64 for s in seeds)
    torch.Generator().manual_seed(max(seeds))  # every seed is usable by torch


def _official_mask(num_frames: int, kept: int, h: int, w: int) -> torch.Tensor:
    """The official per-pixel-frame mask construction (image2video_dancer.py), generalised to ``kept``."""
    msk = torch.ones(1, num_frames, h, w)
    msk[:, kept:] = 0
    msk = torch.cat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, h, w)
    return msk.transpose(1, 2)[0]


@pytest.mark.parametrize("num_frames, kept", [(5, 1), (9, 1), (9, 2), (9, 5), (13, 7), (81, 1), (81, 5), (9, 9)])
def test_segment_keep_mask_equals_the_official_fold(num_frames, kept):
    torch.testing.assert_close(i2v_mask(num_frames, 3, 2, kept_frames=kept), _official_mask(num_frames, kept, 3, 2),
                               rtol=0, atol=0)


def _scene(frames: int = 6, height: int = 24, width: int = 32) -> np.ndarray:
    """A smooth scene with a block travelling over it (its colour distribution barely changes)."""
    yy, xx = np.mgrid[0:height, 0:width]
    video = []
    for t in range(frames):
        image = np.stack([xx * 200 // width + 20, yy * 180 // height + 30, (xx + yy) * 150 // (width + height) + 40], -1)
        image[6:14, 2 + 3 * t: 10 + 3 * t] = (220, 60, 40)
        video.append(image)
    return np.asarray(video, dtype=np.uint8)


def test_segment_color_match_removes_a_synthetic_colour_shift():
    video = _scene()
    # A red tint and darker blue, as a drifting segment might come out.
    tinted = np.clip(video.astype(int) * (1.1, 1.0, 0.8) + (10, -5, 0), 0, 255).astype(np.uint8)
    matched = match_colors(tinted[1:], video[:1])
    before = np.abs(tinted[1:].astype(int) - video[1:]).mean(axis=(0, 1, 2))
    after = np.abs(matched.astype(int) - video[1:]).mean(axis=(0, 1, 2))
    assert before.max() > 15
    assert (after < 5).all(), after
    # Channel means move onto the target's.
    np.testing.assert_allclose(matched.mean(axis=(0, 1, 2)), video[1:].mean(axis=(0, 1, 2)), atol=6)
    assert matched.dtype == np.uint8 and matched.shape == tinted[1:].shape
    # Matching to oneself is the identity.
    np.testing.assert_array_equal(match_colors(video, video), video)


class _RecordingRenderer:
    """Returns a distinct, known picture stack per segment and records what it was asked."""

    def __init__(self, height: int = 8, width: int = 12):
        self.requests: list[SegmentRequest] = []
        self.outputs: list[np.ndarray] = []
        self.shape = (height, width)

    def __call__(self, request: SegmentRequest) -> np.ndarray:
        self.requests.append(request)
        seg = request.segment
        rng = np.random.default_rng(seg.index)
        frames = rng.integers(0, 255, (seg.length, *self.shape, 3), dtype=np.uint8)
        self.outputs.append(frames)
        return frames


@pytest.mark.parametrize("anchor", ["reference", "segment"])
@pytest.mark.parametrize("carry", [1, 3])
def test_segment_chain_hands_on_the_last_output_frames(anchor, carry):
    total = 23
    plan = plan_segments(total, 9, carry, seed=0)
    reference = np.full((8, 12, 3), 77, np.uint8)
    renderer = _RecordingRenderer()
    chunks: list[np.ndarray] = []
    generate_long_video(plan, reference, renderer, chunks.append, anchor=anchor, color_match="none")
    video = np.concatenate(chunks)
    assert len(video) == total and len(chunks) == len(plan.segments)
    for seg, request, rendered, chunk in zip(plan.segments, renderer.requests, renderer.outputs, chunks):
        # Without colour matching the output is the rendered frames, carried ones and padding cut.
        np.testing.assert_array_equal(chunk, rendered[seg.carried: seg.carried + seg.emitted])
        np.testing.assert_array_equal(request.pose_indices, seg.pose_indices(total))
        if seg.index == 0:
            np.testing.assert_array_equal(request.kept_frames, reference[None])
        else:
            np.testing.assert_array_equal(request.kept_frames, video[seg.start: seg.start + carry])
        if anchor == "reference" or seg.index == 0:
            assert request.anchor_is_reference and request.anchor_pose_index == 0
            np.testing.assert_array_equal(request.anchor_frame, reference)
        else:
            assert not request.anchor_is_reference and request.anchor_pose_index == seg.start
            np.testing.assert_array_equal(request.anchor_frame, video[seg.start])


@pytest.mark.parametrize("mode", ["reference", "previous"])
def test_segment_chain_colour_matches_later_segments_only(mode):
    plan = plan_segments(17, 9, 1)
    reference = _scene(1)[0]
    renderer = _RecordingRenderer(*reference.shape[:2])
    chunks: list[np.ndarray] = []
    generate_long_video(plan, reference, renderer, chunks.append, color_match=mode)
    np.testing.assert_array_equal(chunks[0], renderer.outputs[0])  # segment 0 is the plain run, untouched
    target = reference if mode == "reference" else chunks[0]
    np.testing.assert_array_equal(chunks[1], match_colors(renderer.outputs[1][1:9], target))
    # The next segment keeps the colour-matched frame, the one the viewer saw.
    np.testing.assert_array_equal(renderer.requests[1].kept_frames, chunks[0][-1:])


def test_segment_chain_rejects_a_renderer_of_the_wrong_length():
    plan = plan_segments(9, 9, 1)
    with pytest.raises(ValueError, match="expected uint8 \\[9, H, W, 3\\]"):
        generate_long_video(plan, np.zeros((4, 4, 3), np.uint8), lambda r: np.zeros((5, 4, 4, 3), np.uint8),
                            lambda frames: None)


def test_segment_color_match_rounds_instead_of_truncating():
    # Truncated matching (scikit-image's on uint8 input) would lower every channel by about half a level
    # per segment; ``previous`` chains the matches, so that bias would accumulate over a long video.
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 30, 40, 3), dtype=np.uint8)
    target = rng.normal(128, 30, (50, 40, 3)).clip(0, 255).round().astype(np.uint8)
    matched = match_colors(frames, target)
    np.testing.assert_allclose(matched.mean(axis=(0, 1, 2)), target.mean(axis=(0, 1)), atol=0.2)
    chained = matched
    for _ in range(10):  # matching onto its own histogram again must not move anything
        chained = match_colors(chained, matched)
    np.testing.assert_array_equal(chained, matched)
