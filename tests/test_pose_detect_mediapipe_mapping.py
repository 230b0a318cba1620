"""The mediapipe backend's BlazePose -> OpenPose-18 mapping and hand assignment (plain NumPy, runs in the
main environment), and its clear error when mediapipe is absent."""
import importlib.util

import numpy as np
import pytest

from steadydancer_core.pose.detect import create_detector
from steadydancer_core.pose.detect.mediapipe_backend import BackendUnavailable, assign_hands, blazepose_to_body


def _landmarks(visibility: np.ndarray | None = None) -> np.ndarray:
    """BlazePose landmark i at (i/100, i/50) so each index is recognisable after mapping."""
    index = np.arange(33, dtype=np.float64)
    visibility = np.full(33, 0.9) if visibility is None else visibility
    return np.stack([index / 100, index / 50, visibility], -1)


def test_blazepose_to_openpose_mapping() -> None:
    body, score, visible = blazepose_to_body(_landmarks(), threshold=0.5)
    # reference/pose_pipeline.md §7: 0←0, 2←12, 3←14, 4←16, 5←11, 6←13, 7←15, 8←24, 9←26, 10←28,
    # 11←23, 12←25, 13←27, 14←5, 15←2, 16←8, 17←7
    table = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25, 13: 27,
             14: 5, 15: 2, 16: 8, 17: 7}
    for openpose, blazepose in table.items():
        np.testing.assert_allclose(body[openpose], [blazepose / 100, blazepose / 50])
    np.testing.assert_allclose(body[1], [11.5 / 100, 11.5 / 50])  # neck = mean(11, 12)
    assert visible.all() and np.allclose(score, 0.9)


def test_visibility_threshold_and_neck_score() -> None:
    visibility = np.full(33, 0.9)
    visibility[12] = 0.4  # right shoulder
    visibility[0] = 0.51
    body, score, visible = blazepose_to_body(_landmarks(visibility), threshold=0.5)
    assert not visible[2] and visible[0]
    assert score[1] == pytest.approx(0.4) and not visible[1]  # neck takes the weaker shoulder
    with pytest.raises(ValueError, match="33"):
        blazepose_to_body(np.zeros((17, 3)), 0.5)


def test_landmarks_outside_the_image_are_not_visible() -> None:
    # A waist-up frame: BlazePose extrapolates knees/ankles below the image with a confident score.
    landmarks = _landmarks()
    landmarks[[25, 26, 27, 28], 1] = [1.2, 1.25, 1.6, 1.62]  # knees and ankles under the bottom edge
    landmarks[7, 0] = -0.05  # left ear just off the left edge
    _, score, visible = blazepose_to_body(landmarks, threshold=0.5)
    assert np.allclose(score, 0.9)
    hidden = {9, 10, 12, 13, 17}  # R knee, R ankle, L knee, L ankle, L ear
    assert [i for i in range(18) if not visible[i]] == sorted(hidden)


def _body_with_wrists(left: tuple, right: tuple) -> tuple[np.ndarray, np.ndarray]:
    body = np.zeros((18, 2))
    body[7], body[4] = left, right
    return body, np.ones(18, bool)


def test_hands_go_to_the_nearest_wrist() -> None:
    body, visible = _body_with_wrists(left=(0.7, 0.5), right=(0.3, 0.5))
    near_left = np.full((21, 2), 0.69)
    near_right = np.full((21, 2), 0.31)
    # labels deliberately wrong: wrist proximity wins when both wrists are visible
    coords, scores, hand_visible = assign_hands([near_right, near_left], ["Right", "Right"], [0.9, 0.8], body, visible)
    np.testing.assert_allclose(coords[0], near_left)
    np.testing.assert_allclose(coords[1], near_right)
    np.testing.assert_allclose(scores[:, 0], [0.8, 0.9])
    assert hand_visible.all()


def test_hand_labels_are_swapped_without_wrists() -> None:
    body, visible = _body_with_wrists(left=(0.7, 0.5), right=(0.3, 0.5))
    visible[7] = False
    hand = np.full((21, 2), 0.5)
    # mediapipe labels hands for a mirrored image: "Left" is the person's right hand in a normal photo
    coords, _, hand_visible = assign_hands([hand], ["Left"], [0.9], body, visible)
    assert hand_visible[1].all() and not hand_visible[0].any()
    np.testing.assert_allclose(coords[1], hand)


def test_two_hands_on_one_side_split_by_confidence() -> None:
    body, visible = _body_with_wrists(left=(0.7, 0.5), right=(0.3, 0.5))
    first, second = np.full((21, 2), 0.71), np.full((21, 2), 0.72)
    coords, scores, _ = assign_hands([first, second], ["Right", "Right"], [0.6, 0.95], body, visible)
    np.testing.assert_allclose(coords[0], second)  # the more confident hand keeps the nearer side
    np.testing.assert_allclose(coords[1], first)


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None and
                    importlib.util.find_spec("mediapipe").origin is not None,
                    reason="mediapipe is installed here; the missing-package error cannot be observed")
def test_missing_mediapipe_is_one_clear_error() -> None:
    with pytest.raises(BackendUnavailable, match="mediapipe==0.10.21"):
        create_detector("mediapipe")


def test_hand_crop_square_around_blazepose_hand() -> None:
    from steadydancer_core.pose.detect.mediapipe_backend import HAND_CROP_FOREARMS, hand_crop

    landmarks = np.zeros((33, 3))
    landmarks[:, 2] = 0.9
    width, height = 200, 400
    # right arm (slot 1): elbow (100, 200) px, wrist (100, 240) px, finger tips around (100, 250) px
    landmarks[14, :2] = (100 / width, 200 / height)
    landmarks[16, :2] = (100 / width, 240 / height)
    landmarks[[18, 20, 22], :2] = [(96 / width, 250 / height), (100 / width, 250 / height), (104 / width, 250 / height)]
    x0, y0, side = hand_crop(landmarks, 1, width, height)
    assert side == pytest.approx(HAND_CROP_FOREARMS * 40)  # 1.5 forearms beat 4 x the 10 px reach and 24 px
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx((100, 245))  # centred between wrist and tips
    landmarks[16, 2] = 0.1
    assert hand_crop(landmarks, 1, width, height) is None  # BlazePose does not see that wrist
    landmarks[16, 2], landmarks[16, 0] = 0.9, 1.2
    assert hand_crop(landmarks, 1, width, height) is None  # wrist outside the image


def test_native_log_filter_drops_mediapipe_lines_and_passes_the_rest() -> None:
    from steadydancer_core.pose.detect.native_log import filter_chunk

    absl = (b"W0000 00:00:1796171299.424576   24074 inference_feedback_manager.cc:114] Feedback manager "
            b"requires a model with a single signature inference.\n")
    tflite = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    banner = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    ours = b"error: --ref: file not found: r.png\n"
    assert filter_chunk(b"", absl + ours + tflite + banner) == (ours, b"")
    # A line split across reads is held while it could still be a native line, then dropped whole ...
    out, pending = filter_chunk(b"", absl[:30])
    assert out == b"" and pending == absl[:30]
    assert filter_chunk(pending, absl[30:]) == (b"", b"")
    # ... while a progress bar's partial line is forwarded at once.
    assert filter_chunk(b"", b"\rdriving poses:  40%|####") == (b"\rdriving poses:  40%|####", b"")
    assert filter_chunk(b"", b"Warning: something of ours\n") == (b"Warning: something of ours\n", b"")
