"""Long videos as a chain of I2V segments (DESIGN D11), planned once here for the CLI and the ComfyUI node.

A video of ``N`` frames is cut into segments of ``segment_frames`` (4n+1) frames; consecutive segments
overlap by ``carry_frames``. Segment 0 is the plain first-frame run on the reference. Segment ``s >= 1`` is
an I2V run whose kept first frame(s) are the last ``carry_frames`` *output* frames of segment ``s - 1``
(decoded pixels, re-encoded as the image clip with the keep mask on those frames, exactly as segment 0 keeps
the reference), driven by its own slice of the pose and negative-pose frames. Its first ``carry_frames``
frames are the carried ones again and are not output twice, so every output frame is generated once.

The last segment only needs to be a valid length: it is the shortest 4n+1 that holds its new frames, the
pose frames past ``N`` are the last pose repeated, and the frames past ``N`` are trimmed.

Identity anchor (``anchor``):

- ``reference`` (default): ``ref_x``, ``ref_c`` and both CLIP features stay those of segment 0 (the reference
  image and the global first pose) in every segment, so identity is pinned to the user's image however long
  the chain gets. It is *out of distribution* in one respect: the released weights were trained with
  ``ref_x`` equal to the clip's own kept frame 0 and ``ref_c`` equal to its pose, while here the kept frame
  of a later segment is a generated frame that differs from ``ref_x``.
- ``segment``: each segment's own first frame and first pose (and their CLIP features), which is exactly the
  training distribution, but any drift of a segment becomes the next one's anchor and accumulates.

Colour matching (``color_match``), applied to the new frames of each segment ``s >= 1`` (segment 0 is the
plain run and stays untouched): ``reference`` maps the segment's pooled colour histogram onto the reference
image's, bounding drift; ``previous`` maps it onto the previous segment's output, giving the smoothest joins
but carrying any drift forward; ``none`` keeps the decode. The default is ``reference``: every carried frame
passes through one more VAE round trip, which nudges colours a little per join (Wan2GP#2132), and a
SteadyDancer video is one scene that should keep the reference's look. The histogram matching is
scikit-image's ``match_histograms``, one mapping per segment (so frames within a segment do not flicker).

Frames are ``uint8`` ``[F, H, W, 3]`` arrays here, for the CLI and the node alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from .conditioning import VAE_TEMPORAL_STRIDE, validate_frame_count

Anchor = Literal["reference", "segment"]
ColorMatch = Literal["none", "reference", "previous"]
ANCHORS: tuple[str, ...] = ("reference", "segment")
COLOR_MATCH_MODES: tuple[str, ...] = ("none", "reference", "previous")
DEFAULT_SEGMENT_FRAMES = 81
DEFAULT_CARRY_FRAMES = 1
DEFAULT_ANCHOR: Anchor = "reference"
DEFAULT_COLOR_MATCH: ColorMatch = "reference"


def shortest_valid_length(frames: int) -> int:
    """The smallest ``4n + 1`` frame count holding ``frames`` frames."""
    return 1 + -(-(frames - 1) // VAE_TEMPORAL_STRIDE) * VAE_TEMPORAL_STRIDE


def segment_seed(seed: int, index: int) -> int:
    """Noise seed of segment ``index``: the run seed for segment 0 (so it equals the plain run), then seeds
    drawn deterministically from ``(seed, index)`` with NumPy's SeedSequence (independent streams)."""
    if index == 0:
        return seed
    state = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


@dataclass(frozen=True)
class Segment:
    """One I2V run of the chain.

    It generates ``length`` frames standing for output frames ``start .. start + length - 1``; its first
    ``carried`` frames are the previous segment's last output frames (kept), the next ``emitted`` frames are
    new output, anything after that is padding past the end of the video (trimmed).
    """

    index: int
    start: int
    length: int
    carried: int
    emitted: int
    seed: int

    @property
    def output_range(self) -> range:
        """The output frame indices this segment contributes."""
        first = self.start + self.carried
        return range(first, first + self.emitted)

    def pose_indices(self, total_frames: int) -> np.ndarray:
        """Indices into the pose sequence for the segment's frames, the last pose repeated past the end."""
        return np.minimum(np.arange(self.start, self.start + self.length), total_frames - 1)


@dataclass(frozen=True)
class SegmentPlan:
    """All segments of an ``total_frames``-frame video."""

    total_frames: int
    segment_frames: int
    carry_frames: int
    segments: tuple[Segment, ...]

    def describe(self, evaluations_per_step_run: Callable[[int], int] | None = None) -> list[str]:
        """``segments: K`` and one line per segment; ``evaluations_per_step_run(length)`` gives its DiT
        evaluations when known."""
        lines = [f"segments: {len(self.segments)} ({self.segment_frames} frames each, "
                 f"{self.carry_frames} carried, {self.total_frames} output frames)"]
        for seg in self.segments:
            out = seg.output_range
            text = (f"segment {seg.index}: output frames {out.start}..{out.stop - 1} ({seg.emitted} new), "
                    f"{seg.length} generated, carried {seg.carried}")
            if seg.length - seg.carried > seg.emitted:
                text += f", {seg.length - seg.carried - seg.emitted} padded and trimmed"
            if evaluations_per_step_run is not None:
                text += f", DiT evaluations {evaluations_per_step_run(seg.length)}"
            lines.append(text)
        return lines


def plan_segments(total_frames: int, segment_frames: int = DEFAULT_SEGMENT_FRAMES,
                  carry_frames: int = DEFAULT_CARRY_FRAMES, seed: int = 0) -> SegmentPlan:
    """Segments for ``total_frames`` output frames (any count >= 1, not only 4n+1)."""
    if not isinstance(total_frames, (int, np.integer)) or total_frames < 1:
        raise ValueError(f"the video needs at least 1 frame, got {total_frames!r}")
    try:
        validate_frame_count(segment_frames)
    except ValueError as err:
        raise ValueError(f"segment_frames: {err}") from None
    if segment_frames == 1 and total_frames > 1:
        raise ValueError(f"segment_frames 1 holds no frame besides the carried one; use at least 5 for "
                         f"{total_frames} frames")
    # Later segments need at least one new frame; a 1-frame segment is only a plain 1-frame run.
    most = max(segment_frames - 1, 1)
    if not isinstance(carry_frames, (int, np.integer)) or not 1 <= carry_frames <= most:
        raise ValueError(f"carry_frames must be between 1 and segment_frames - 1 = {most} "
                         f"(frames kept from the previous segment), got {carry_frames!r}")
    first_length = min(segment_frames, shortest_valid_length(total_frames))
    segments = [Segment(0, 0, first_length, 0, min(first_length, total_frames), segment_seed(seed, 0))]
    done = segments[0].emitted
    while done < total_frames:
        index = len(segments)
        new = min(segment_frames - carry_frames, total_frames - done)
        length = shortest_valid_length(carry_frames + new)
        segments.append(Segment(index, done - carry_frames, length, carry_frames, new, segment_seed(seed, index)))
        done += new
    return SegmentPlan(total_frames, segment_frames, carry_frames, tuple(segments))


# ---- colour ---------------------------------------------------------------------------------------

def match_colors(frames: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``frames`` (uint8 ``[F, H, W, 3]``) with their pooled per-channel histogram mapped onto ``target``'s
    (uint8 ``[H, W, 3]`` or ``[F', H, W, 3]``): one mapping for the whole segment."""
    from skimage.exposure import match_histograms

    for name, array in (("frames", frames), ("target", target)):
        if array.dtype != np.uint8 or array.shape[-1] != 3 or array.ndim not in (3, 4):
            raise ValueError(f"{name} must be uint8 RGB [.., H, W, 3], got {array.dtype} {tuple(array.shape)}")
    # match_histograms stores its interpolated values in the input's dtype, truncating them: on uint8 that
    # darkens every segment by half a level on average, which ``previous`` would accumulate. Values scaled
    # by 256 into uint16 keep 8 fractional bits, so the result below is rounded, not truncated.
    scale = np.uint16(256)
    # Stacks of images are one "image" to match_histograms: it pools every axis but the channel axis.
    matched = match_histograms(frames.reshape(-1, frames.shape[-2], 3).astype(np.uint16) * scale,
                               target.reshape(-1, 1, 3).astype(np.uint16) * scale, channel_axis=-1)
    return ((matched.astype(np.uint32) + scale // 2) // scale).astype(np.uint8).reshape(frames.shape)


# ---- the chain ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentRequest:
    """What a segment renderer needs beyond the plan: the carried frames and the anchor to condition on."""

    segment: Segment
    kept_frames: np.ndarray  # uint8 [C, H, W, 3]: the reference (segment 0) or the previous output's tail
    pose_indices: np.ndarray  # into the pose / negative-pose sequences, padded with the last pose
    anchor_frame: np.ndarray  # uint8 [H, W, 3]: the image whose latent is ref_x and whose CLIP is clip_x
    anchor_pose_index: int  # the pose frame whose latent is ref_c and whose CLIP is clip_c
    anchor_is_reference: bool  # True when the anchor is segment 0's (renderers may reuse its encodings)


#: Renders one segment: returns its decoded frames, uint8 [segment.length, H, W, 3].
SegmentRenderer = Callable[[SegmentRequest], np.ndarray]


def check_chain_options(anchor: str, color_match: str) -> None:
    """Raise unless ``anchor`` and ``color_match`` name one of the modes above."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    if color_match not in COLOR_MATCH_MODES:
        raise ValueError(f"color_match must be one of {COLOR_MATCH_MODES}, got {color_match!r}")


def generate_long_video(plan: SegmentPlan, reference_frame: np.ndarray, render: SegmentRenderer,
                        emit: Callable[[np.ndarray], None], *, anchor: str = DEFAULT_ANCHOR,
                        color_match: str = DEFAULT_COLOR_MATCH) -> None:
    """Run the segments in order, handing each segment's new output frames to ``emit`` as soon as it ends.

    ``reference_frame`` is the reference at the output size (uint8 ``[H, W, 3]``): segment 0's kept frame and
    anchor. Only one segment's frames are held at a time (plus the carried tail).
    """
    check_chain_options(anchor, color_match)
    tail = reference_frame[None]
    previous_output = None
    for seg in plan.segments:
        indices = seg.pose_indices(plan.total_frames)
        own_anchor = anchor == "segment" and seg.index > 0
        request = SegmentRequest(
            segment=seg, kept_frames=tail, pose_indices=indices,
            anchor_frame=tail[0] if own_anchor else reference_frame,
            anchor_pose_index=int(indices[0]) if own_anchor else 0,
            anchor_is_reference=not own_anchor)
        frames = render(request)
        if frames.shape[0] != seg.length or frames.dtype != np.uint8:
            raise ValueError(f"segment {seg.index} renderer returned {frames.dtype} {tuple(frames.shape)}; "
                             f"expected uint8 [{seg.length}, H, W, 3]")
        new = frames[seg.carried: seg.carried + seg.emitted]
        if seg.index > 0 and color_match != "none":
            new = match_colors(new, reference_frame if color_match == "reference" else previous_output)
        emit(new)
        previous_output = new
        tail = np.concatenate([tail, new])[-plan.carry_frames:]
