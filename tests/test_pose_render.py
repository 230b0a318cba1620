"""Rendering: pixel parity with the official pictures, the official palette and stick width measured on an
official example, hand-computed single limbs and hands, downscale and threading equivalences, errors."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from steadydancer_core.pose.align import align_sequence
from steadydancer_core.pose.keypoints import PersonPose, PoseFrame, person_from_official
from steadydancer_core.pose.negative import NegativeDraw, negative_poses
from steadydancer_core.pose.render import render_frame, render_frames


@pytest.fixture(scope="module")
def pose_a(shared_dir):
    folder = shared_dir / "data/parity/pose_a"
    data = json.loads((folder / "fixture.json").read_text())
    positive = np.stack([np.asarray(Image.open(folder / f"positive/{t:04d}.png")) for t in range(len(data["aligned"]))])
    negative = np.stack([np.asarray(Image.open(folder / f"negative/{t:04d}.png")) for t in range(len(data["aligned"]))])
    return data, positive, negative


def test_official_keypoints_render_pixel_exact(pose_a):
    data, positive, negative = pose_a
    width, height = data["ref_resized_for_generation"]
    for key, expected in (("aligned", positive), ("negative", negative)):
        frames = [PoseFrame([person_from_official(f["body"], f["hands"])], width, height) for f in data[key]]
        images = render_frames(frames, width, height, supersample=2, downscale=None)
        assert images.shape == expected.shape == (len(data[key]), 2 * height, 2 * width, 3)
        assert np.array_equal(images, expected), f"{key}: max diff {np.abs(images.astype(int) - expected).max()}"


def test_full_chain_from_detections_renders_pixel_exact(pose_a):
    """Reference + driving detections → our alignment → our negative (recorded draws) → our renderer equals
    the official frames pixel for pixel (measured max difference 0, mean 0)."""
    data, positive, negative = pose_a
    width, height = data["ref_resized_for_generation"]
    video_w, video_h = data["video_size"]
    reference = PoseFrame([person_from_official(data["reference_pose"]["body"], data["reference_pose"]["hands"])],
                          width, height)
    driving = [PoseFrame([person_from_official(f["body"], f["hands"])], video_w, video_h) for f in data["driving_poses"]]
    aligned, _ = align_sequence(reference, driving)
    draws = [NegativeDraw(d["scale"], d["aspect"]) for d in data["negative_draws"]]
    perturbed, _ = negative_poses(aligned, draws=draws)
    assert np.array_equal(render_frames(aligned, width, height, downscale=None), positive)
    assert np.array_equal(render_frames(perturbed, width, height, downscale=None), negative)


def stick_profile(image: np.ndarray, x: int, rows: slice) -> tuple[int, np.ndarray]:
    """Length of the run of lit pixels in column ``x`` within ``rows`` and the median colour of its middle."""
    column = image[rows, x].astype(int)
    lit = np.nonzero(column.sum(axis=1) > 60)[0]
    middle = column[lit[len(lit) // 2 - 1: len(lit) // 2 + 2]]
    return len(lit), np.median(middle, axis=0)


def test_palette_and_stick_width_match_official_example(shared_dir):
    """positive/0000.jpg of the official example (2× canvas, 1152×2016, JPEG): the neck (≈641, 1088) to
    right-shoulder (≈335, 1095) limb is blue (0, 0, ~153), ~9-10 px thick. We draw the same limb and compare
    with JPEG tolerances (colour ±15, thickness ±2 px)."""
    official = np.asarray(Image.open(shared_dir / "data/official_examples/video00002_img00002/positive/0000.jpg"))
    height, width = official.shape[0] // 2, official.shape[1] // 2
    body = np.zeros((18, 2))
    body[1] = (641 / 1152, 1088 / 2016)
    body[2] = (335 / 1152, 1095 / 2016)
    person = PersonPose.create(body=body, body_visible=np.isin(np.arange(18), [1, 2]))
    ours = render_frame(PoseFrame([person], width, height), width, height, downscale=None)
    standard = render_frame(PoseFrame([person], width, height), width, height, palette="openpose", downscale=None)
    for x in (400, 490, 560):
        official_len, official_colour = stick_profile(official, x, slice(1070, 1115))
        our_len, our_colour = stick_profile(ours, x, slice(1070, 1115))
        assert abs(official_len - our_len) <= 2, (x, official_len, our_len)
        assert np.abs(official_colour - our_colour).max() <= 15, (x, official_colour, our_colour)
        assert our_colour.tolist() == [0, 0, 153]
        _, standard_colour = stick_profile(standard, x, slice(1070, 1115))
        assert standard_colour.tolist() == [153, 0, 0]  # the usual OpenPose picture is red there


def test_single_limb_and_joints_hand_computed():
    """Neck (40, 50) → right shoulder (80, 50) on a 120×100 canvas drawn 1:1: an ellipse centred (60, 50) with
    semi-axes (20, 4), colour floor(0.6 · (255, 0, 0)) R↔B swapped = (0, 0, 153); joints radius 4 in full
    colour: neck (255, 85, 0) → (0, 85, 255), right shoulder (255, 170, 0) → (0, 170, 255)."""
    body = np.zeros((18, 2))
    body[1], body[2] = (40 / 120, 50 / 100), (80 / 120, 50 / 100)
    frame = PoseFrame([PersonPose.create(body=body, body_visible=np.isin(np.arange(18), [1, 2]))], 120, 100)
    image = render_frame(frame, 120, 100, supersample=1)
    assert image.shape == (100, 120, 3) and image.dtype == np.uint8
    lit_rows = np.nonzero(image[:, 60].any(axis=1))[0]
    assert lit_rows.tolist() == list(range(46, 55))  # 2 × 4 + 1 px
    assert image[50, 60].tolist() == [0, 0, 153]
    lit_cols = np.nonzero(image[50].any(axis=1))[0]
    assert lit_cols.min() == 36 and lit_cols.max() == 84  # joint circles reach 4 px past the ends
    assert image[50, 40].tolist() == [0, 85, 255] and image[50, 80].tolist() == [0, 170, 255]
    assert image[45:56, 57:64].reshape(-1, 3).tolist().count([0, 0, 153]) == 7 * 9
    standard = render_frame(frame, 120, 100, supersample=1, palette="openpose")
    assert standard[50, 60].tolist() == [153, 0, 0] and standard[50, 40].tolist() == [255, 85, 0]
    assert not image[:40].any() and not image[60:].any()  # nothing else drawn


def test_hands_lines_joints_and_official_border_rule():
    hands = np.zeros((2, 21, 2))
    hands[1, 0], hands[1, 1] = (20 / 100, 30 / 100), (60 / 100, 30 / 100)
    hands[1, 2] = (0.004, 0.5)  # integer pixel x = 0: the official code skips it
    visible = np.zeros((2, 21), bool)
    visible[1, :3] = True
    frame = PoseFrame([PersonPose.create(hands=hands, hand_visible=visible)], 100, 100)
    image = render_frame(frame, 100, 100, supersample=1)
    # edge 0 colour hsv(0, 1, 1) = (255, 0, 0) read as BGR → blue in the picture; joints (0, 0, 255) BGR → red
    assert image[30, 40].tolist() == [0, 0, 255]
    assert np.nonzero(image[:, 40].any(axis=1))[0].tolist() == [29, 30, 31]  # thickness 2 → 3 rows
    assert image[30, 20].tolist() == [255, 0, 0] and image[30, 60].tolist() == [255, 0, 0]
    assert not image[40:].any()  # the border point and its edge are not drawn
    standard = render_frame(frame, 100, 100, supersample=1, palette="openpose")
    assert standard[30, 40].tolist() == [255, 0, 0] and standard[30, 20].tolist() == [0, 0, 255]
    hidden = PoseFrame([PersonPose.create(hands=hands, hand_visible=np.zeros((2, 21), bool))], 100, 100)
    assert not render_frame(hidden, 100, 100, supersample=1).any()


def test_region_downscale_and_threads_match_whole_canvas(pose_a):
    data, positive, negative = pose_a
    width, height = data["ref_resized_for_generation"]
    frames = [PoseFrame([person_from_official(f["body"], f["hands"])], width, height)
              for f in data["aligned"][:2] + data["negative"][4:6]]
    frames.insert(2, PoseFrame([], width, height))  # the reused scratch canvas must come back black
    big = render_frames(frames, width, height, downscale=None, threads=1)
    area = np.stack([cv2.resize(b, (width, height), interpolation=cv2.INTER_AREA) for b in big])
    bicubic = np.stack([np.asarray(Image.fromarray(b).resize((width, height), Image.Resampling.BICUBIC)) for b in big])
    for threads in (1, 2):
        assert np.array_equal(render_frames(frames, width, height, threads=threads), area)
    assert np.array_equal(render_frames(frames, width, height, downscale="bicubic"), bicubic)
    assert not render_frames(frames[2:3], width, height).any()
    # the two downscales differ only slightly (bicubic is a little sharper)
    assert np.abs(area.astype(int) - bicubic).mean() < 1.0


def test_render_errors():
    frame = PoseFrame([], 10, 10)
    with pytest.raises(ValueError, match="palette 'steadydancer' or 'openpose'"):
        render_frame(frame, 10, 10, palette="rgb")
    with pytest.raises(ValueError, match="positive integer width"):
        render_frame(frame, 0, 10)
    with pytest.raises(ValueError, match="downscale 'area', 'bicubic' or None"):
        render_frame(frame, 10, 10, downscale="nearest")
    with pytest.raises(ValueError, match="empty sequence"):
        render_frames([], 10, 10)
