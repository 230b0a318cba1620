"""build_pose_conditions: the whole keypoints → pictures path against the official frames, options, errors."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from steadydancer_core.pose.conditions import build_pose_conditions
from steadydancer_core.pose.keypoints import PersonPose, PoseFrame, person_from_official
from steadydancer_core.pose.negative import NegativeDraw


@pytest.fixture(scope="module")
def pose_a(shared_dir):
    folder = shared_dir / "data/parity/pose_a"
    data = json.loads((folder / "fixture.json").read_text())
    width, height = data["ref_resized_for_generation"]
    video_w, video_h = data["video_size"]
    reference = PoseFrame([person_from_official(data["reference_pose"]["body"], data["reference_pose"]["hands"])],
                          width, height)
    driving = [PoseFrame([person_from_official(f["body"], f["hands"])], video_w, video_h) for f in data["driving_poses"]]
    draws = [NegativeDraw(d["scale"], d["aspect"]) for d in data["negative_draws"]]
    return data, folder, reference, driving, draws


def test_conditions_reproduce_official_frames(pose_a):
    data, folder, reference, driving, draws = pose_a
    width, height = data["ref_resized_for_generation"]
    result = build_pose_conditions(reference, driving, width, height, negative_draws=draws, downscale=None)
    assert result.negative_draws == draws and result.alignment is not None
    frames = len(data["aligned"])
    assert len(result.positive_images) == len(result.negative_images) == frames
    for t in range(frames):
        assert np.array_equal(result.positive_images[t], np.asarray(Image.open(folder / f"positive/{t:04d}.png")))
        assert np.array_equal(result.negative_images[t], np.asarray(Image.open(folder / f"negative/{t:04d}.png")))
    # default: drawn at 2× and area-reduced to the generation size
    small = build_pose_conditions(reference, driving, width, height, negative_draws=draws)
    assert small.positive_images.shape == (frames, height, width, 3) and small.positive_images.dtype == np.uint8
    for t in range(frames):
        expected = cv2.resize(np.asarray(Image.open(folder / f"positive/{t:04d}.png")), (width, height),
                              interpolation=cv2.INTER_AREA)
        assert np.array_equal(small.positive_images[t], expected)
        np.testing.assert_allclose(small.aligned[t].people[0].body, data["aligned"][t]["body"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(small.negative[t].people[0].body, data["negative"][t]["body"], rtol=0, atol=1e-12)


def test_seeded_negative_and_no_alignment(pose_a):
    data, _, reference, driving, _ = pose_a
    a = build_pose_conditions(reference, driving, 96, 160, seed=5)
    b = build_pose_conditions(reference, driving, 96, 160, seed=5)
    c = build_pose_conditions(reference, driving, 96, 160, seed=6)
    assert a.negative_draws == b.negative_draws != c.negative_draws
    assert np.array_equal(a.negative_images, b.negative_images)
    assert not np.array_equal(a.negative_images, c.negative_images)
    assert np.array_equal(a.positive_images, c.positive_images)
    plain = build_pose_conditions(None, driving, 96, 160, align=False)
    assert plain.alignment is None
    np.testing.assert_array_equal(plain.aligned[-1].people[0].body, driving[-1].people[0].body)
    assert (plain.aligned[-1].width, plain.aligned[-1].height) == (96, 160)


def test_errors_come_before_work(pose_a):
    _, _, reference, driving, draws = pose_a
    with pytest.raises(ValueError, match="one negative draw per driving frame"):
        build_pose_conditions(reference, driving, 64, 64, negative_draws=draws[:-1])
    with pytest.raises(ValueError, match="needs the reference keypoints"):
        build_pose_conditions(None, driving, 64, 64)
    with pytest.raises(ValueError, match="no person detected in the reference"):
        build_pose_conditions(PoseFrame([], 64, 64), driving, 64, 64)
    with pytest.raises(ValueError, match="empty sequence"):
        build_pose_conditions(reference, [], 64, 64)
    with pytest.raises(ValueError, match="positive integer height"):
        build_pose_conditions(reference, driving, 64, -1)
    empty_driving = [PoseFrame([], 64, 64)] * 3
    with pytest.raises(ValueError, match="no person detected in driving frame 0"):
        build_pose_conditions(reference, empty_driving, 64, 64)
    # frames without a person render black instead of failing
    mixed = [driving[0], PoseFrame([], 540, 960), driving[-1]]
    result = build_pose_conditions(reference, mixed, 64, 112)
    assert not result.positive_images[1].any() and result.positive_images[0].any()
    assert isinstance(result.aligned[0].people[0], PersonPose)
