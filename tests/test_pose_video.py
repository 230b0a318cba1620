"""Video I/O: fps resampling by timestamp, 4n+1 trimming, odd sizes, clear errors."""
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from steadydancer_core.video import (
    VideoReadError,
    frame_count_for_rule,
    read_image,
    read_video,
    write_video,
)

LEVEL_STEP = 4  # grey level per source frame index: robust to H.264 rounding (errors are ~1 level)
LEVEL_BASE = 16


def _indexed_clip(count: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Flat grey frames whose level encodes the frame index."""
    levels = LEVEL_BASE + LEVEL_STEP * np.arange(count)
    assert levels.max() < 256
    return np.broadcast_to(levels[:, None, None, None], (count, *size, 3)).astype(np.uint8)


def _decoded_indices(frames: np.ndarray) -> list[int]:
    levels = frames.reshape(len(frames), -1).mean(axis=1)
    return [int(round((level - LEVEL_BASE) / LEVEL_STEP)) for level in levels]


def _nearest_source_indices(source_fps: int, source_count: int, target_fps: int, target_count: int) -> list[int]:
    """Hand rule in integer arithmetic: argmin_i |k/target - i/source|, ties to the earlier frame."""
    chosen = []
    for k in range(target_count):
        distances = [abs(k * source_fps - i * target_fps) for i in range(source_count)]
        chosen.append(int(np.argmin(distances)))  # argmin returns the first (earliest) minimum
    return chosen


@pytest.fixture()
def clip_30fps(tmp_path: Path) -> Path:
    path = tmp_path / "clip30.mp4"
    write_video(_indexed_clip(45), path, fps=30, crf=0)
    return path


def test_native_fps_reads_every_frame(clip_30fps: Path) -> None:
    frames, info = read_video(clip_30fps, fps=None)
    assert frames.shape == (45, 48, 64, 3) and frames.dtype == np.uint8
    assert _decoded_indices(frames) == list(range(45))
    assert info.source_indices == tuple(range(45))
    assert info.source_fps == pytest.approx(30.0)
    assert info.frames_decoded == 45 and info.output_frames == 45


def test_resample_to_16fps_selects_nearest_frames_and_trims_to_4n_plus_1(clip_30fps: Path) -> None:
    frames, info = read_video(clip_30fps, fps=16)
    # 45 frames at 30 fps last 1.5 s: targets k/16 up to the last frame + half a period -> k = 0..23 (24 frames).
    assert info.resampled_frames == 24
    assert info.output_frames == 21 == len(frames)  # largest 4n+1 <= 24
    expected = _nearest_source_indices(30, 45, 16, 21)
    assert list(info.source_indices) == expected
    assert _decoded_indices(frames) == expected
    assert expected[:6] == [0, 2, 4, 6, 7, 9]  # 1.875 source frames per output frame; 7.5 ties to 7
    assert "trimmed to 21" in info.summary()


def test_upsampling_repeats_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip8.mp4"
    write_video(_indexed_clip(8), path, fps=8, crf=0)
    frames, info = read_video(path, fps=16, frame_count_rule="any")
    assert list(info.source_indices) == [i // 2 for i in range(16)]
    assert _decoded_indices(frames) == [i // 2 for i in range(16)]


def test_max_frames_caps_and_must_follow_the_rule(clip_30fps: Path) -> None:
    frames, info = read_video(clip_30fps, fps=16, max_frames=9)
    assert len(frames) == 9
    assert list(info.source_indices) == _nearest_source_indices(30, 45, 16, 9)
    with pytest.raises(ValueError, match="4n\\+1"):
        read_video(clip_30fps, max_frames=10)


@pytest.mark.parametrize("count, rule, expected", [(1, "4n+1", 1), (4, "4n+1", 1), (5, "4n+1", 5), (84, "4n+1", 81), (84, "any", 84), (0, "4n+1", 0)])
def test_frame_count_rule(count: int, rule: str, expected: int) -> None:
    assert frame_count_for_rule(count, rule) == expected


def test_write_video_pads_odd_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(3, 17, 33, 3), dtype=np.uint8)
    assert write_video(frames, tmp_path / "odd.mp4", fps=16) == (34, 18)
    read, _ = read_video(tmp_path / "odd.mp4", fps=None, frame_count_rule="any")
    assert read.shape == (3, 18, 34, 3)


def test_write_video_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="\\[N, H, W, 3\\]"):
        write_video(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="0 frames"):
        write_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "a.mp4")


def test_read_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(VideoReadError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty"):
        read_video(empty)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError, match="corrupt"):
        read_video(corrupt)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(800) / 5) * 1000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoReadError, match="no video stream"):
        read_video(path)


def test_read_image_drops_alpha_and_reports_errors(tmp_path: Path) -> None:
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()  # alpha dropped, not composited
    with pytest.raises(VideoReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(VideoReadError, match="cannot read"):
        read_image(tmp_path / "bad.png")


@pytest.mark.parametrize("degrees, turns", [(90, 1), (-90, 3), (180, 2)])
def test_display_rotation_is_applied(tmp_path: Path, degrees: int, turns: int) -> None:
    """Phone videos store landscape pixels plus a display matrix; frames must come out as players show them."""
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :8] = 255  # white stripe on the stored image's left edge
    stored[:4, 8:] = 128  # grey stripe on its top edge
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.options = {"crf": "0"}
        stream.set_display_rotation(degrees)  # counter-clockwise
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames, info = read_video(path, fps=None, frame_count_rule="any")
    assert info.rotation == turns * 90 and "rotated" in info.summary()
    upright = frames[0].astype(int)
    expected = {1: (64, 32), 2: (32, 64), 3: (64, 32)}[turns]
    assert upright.shape[:2] == expected
    # where the stored left edge (white) ends up after a counter-clockwise rotation by `degrees`
    white_edge = {1: upright[-4:, :], 2: upright[:, -4:], 3: upright[:4, :]}[turns]
    assert white_edge.mean() > 240
    grey_edge = {1: upright[:-8, :2], 2: upright[-2:, :-8], 3: upright[8:, -2:]}[turns]  # stored top edge
    assert abs(grey_edge.mean() - 128) < 6
