"""SteadyDancer Load Video in real ComfyUI (needs COMFYUI_PATH; skips otherwise)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.comfyui import harness

from steadydancer_core.video import write_video


@pytest.fixture(scope="module", autouse=True)
def video_nodes():
    return harness.pack_module("nodes.video")


def test_resamples_to_16_fps_and_trims_to_4n_plus_1(video_nodes, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path))
    # 2 s at 32 fps, frame k filled with the value 4k: resampling to 16 fps keeps frames 0, 2, 4, ...
    frames = np.stack([np.full((32, 48, 3), 4 * k, np.uint8) for k in range(64)])
    write_video(frames, tmp_path / "clip.mp4", fps=32.0, crf=0)
    assert "clip.mp4" in video_nodes.SteadyDancerLoadVideo.define_schema().inputs[0].options

    images, count, fps = video_nodes.SteadyDancerLoadVideo.execute("clip.mp4", 16.0, 21).result
    assert (count, fps) == (21, 16.0)
    assert images.shape == (21, 32, 48, 3)
    means = images.mean(dim=(1, 2, 3)).numpy() * 255
    np.testing.assert_allclose(means, 8 * np.arange(21), atol=3)
    # 32 source frames at 16 fps = 32 frames: the largest 4n+1 count is 29.
    assert video_nodes.SteadyDancerLoadVideo.execute("clip.mp4", 16.0, 81).result[1] == 29
