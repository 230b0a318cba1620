"""Alignment: parity with the official code (recorded fixture), hand-computed cases, missing joints, errors."""
import json

import numpy as np
import pytest

from steadydancer_core.pose.align import SCALE_NAMES, align_sequence, estimate_alignment
from steadydancer_core.pose.keypoints import PersonPose, PoseFrame, person_from_official


@pytest.fixture(scope="module")
def fixture(shared_dir):
    return json.loads((shared_dir / "data/parity/pose_a/fixture.json").read_text())


def fixture_inputs(data):
    ref_w, ref_h = data["ref_resized_for_generation"]
    video_w, video_h = data["video_size"]
    reference = PoseFrame([person_from_official(data["reference_pose"]["body"], data["reference_pose"]["hands"])],
                          ref_w, ref_h)
    driving = [PoseFrame([person_from_official(f["body"], f["hands"])], video_w, video_h) for f in data["driving_poses"]]
    return reference, driving


@pytest.mark.parametrize("robust", [False, True])
def test_parity_with_official_alignment(fixture, robust):
    """All joints are visible in the fixture, so both modes must give the official keypoints; they use the
    official operation order, so they agree to the last bit (the test allows 1e-12)."""
    reference, driving = fixture_inputs(fixture)
    aligned, alignment = align_sequence(reference, driving, robust=robust)
    assert len(aligned) == len(fixture["aligned"])
    for frame, expected in zip(aligned, fixture["aligned"]):
        assert (frame.width, frame.height) == tuple(fixture["ref_resized_for_generation"])
        person = frame.people[0]
        np.testing.assert_allclose(person.body, expected["body"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(person.hands, expected["hands"], rtol=0, atol=1e-12)
        assert person.body_visible.tolist() == [s != -1 for s in expected["subset"][0]]
    assert set(alignment.scales) == set(SCALE_NAMES)
    assert alignment.scales["hand"] == pytest.approx((alignment.scales["arm_upper"] + alignment.scales["arm_lower"]) / 2)


# ------------------------------------------------------------------------------------------------
# A hand-built driving pose (video 200×100, aspect 2) and a reference (canvas 100×200, aspect 0.5) whose
# every bone is the driving bone times a known factor, all in height units.

FACTORS = {"neck": 1.5, "face": 1.5, "shoulder": 2.0, "arm_upper": 1.2, "arm_lower": 0.8, "body_len": 1.25,
           "leg_upper": 0.9, "leg_lower": 1.1}
# (child, parent, factor name); the same chain the official code rebuilds
CHAIN = [(0, 1, "neck"), (14, 0, "face"), (16, 0, "face"), (15, 0, "face"), (17, 0, "face"), (2, 1, "shoulder"),
         (5, 1, "shoulder"), (3, 2, "arm_upper"), (4, 3, "arm_lower"), (6, 5, "arm_upper"), (7, 6, "arm_lower"),
         (8, 1, "body_len"), (11, 1, "body_len"), (9, 8, "leg_upper"), (10, 9, "leg_lower"), (12, 11, "leg_upper"),
         (13, 12, "leg_lower")]
VIDEO_W, VIDEO_H, REF_W, REF_H = 200, 100, 100, 200
# The official transform rounds each pivot to float32 (cv2.getRotationMatrix2D takes a Point2f) and both
# modes keep that arithmetic, so results differ from exact math by up to ~(1 − ratio)·|pivot|·6e-8.
ATOL = 1e-6


def driving_body_hu() -> np.ndarray:
    """Driving body in height units (x already × aspect): a symmetric figure facing the camera."""
    b = np.zeros((18, 2))
    b[1] = (1.0, 0.3)
    b[0] = (1.0, 0.2)
    b[14], b[15], b[16], b[17] = (0.98, 0.18), (1.02, 0.18), (0.96, 0.19), (1.04, 0.19)
    b[2], b[5] = (0.9, 0.3), (1.1, 0.3)
    b[3], b[6] = (0.85, 0.38), (1.15, 0.38)
    b[4], b[7] = (0.83, 0.47), (1.17, 0.47)
    b[8], b[11] = (0.95, 0.6), (1.05, 0.6)
    b[9], b[12] = (0.95, 0.75), (1.05, 0.75)
    b[10], b[13] = (0.96, 0.9), (1.04, 0.9)
    return b


def hand_hu(wrist: np.ndarray) -> np.ndarray:
    return wrist + 0.005 * np.stack([np.arange(21), np.arange(21) % 4], axis=1)


def scaled_copy(body: np.ndarray, hands: np.ndarray, neck_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each bone × its factor, rebuilt from the neck placed at ``neck_to`` (height units)."""
    out = body.copy()
    out[1] = neck_to
    for child, parent, name in CHAIN:
        out[child] = out[parent] + FACTORS[name] * (body[child] - body[parent])
    hand_factor = (FACTORS["arm_upper"] + FACTORS["arm_lower"]) / 2
    out_hands = np.stack([out[7] + hand_factor * (hands[0] - body[7]), out[4] + hand_factor * (hands[1] - body[4])])
    return out, out_hands


def to_normalised(points_hu: np.ndarray, aspect: float) -> np.ndarray:
    return points_hu / np.array([aspect, 1.0])


def make_case():
    body = driving_body_hu()
    hands = np.stack([hand_hu(body[7]), hand_hu(body[4])])  # left hand at the left wrist, right at the right
    ref_body, ref_hands = scaled_copy(body, hands, neck_to=np.array([0.25, 0.35]))
    reference = PersonPose.create(body=to_normalised(ref_body, REF_W / REF_H), hands=to_normalised(ref_hands, REF_W / REF_H))
    driving = PersonPose.create(body=to_normalised(body, VIDEO_W / VIDEO_H), hands=to_normalised(hands, VIDEO_W / VIDEO_H))
    return reference, driving, body, hands


@pytest.mark.parametrize("robust", [False, True])
def test_scaled_copy_reference_is_reproduced(robust):
    """Aligning the calibration frame to a reference that is its per-bone scaled copy gives the reference;
    a later frame shifted by (dx, dy) lands shifted by the same amount in height units (unscaled)."""
    reference, driving, body, hands = make_case()
    dx, dy = 0.05, -0.02  # normalised video units
    shifted = driving.replace(body=driving.body + [dx, dy], hands=driving.hands + [dx, dy])
    frames = [PoseFrame([driving], VIDEO_W, VIDEO_H), PoseFrame([shifted], VIDEO_W, VIDEO_H)]
    aligned, alignment = align_sequence(PoseFrame([reference], REF_W, REF_H), frames, robust=robust)
    expected_scales = {"neck": 1.5, "face_left": 1.5, "face_right": 1.5, "shoulder": 2.0, "arm_upper": 1.2,
                       "arm_lower": 0.8, "hand": 1.0, "body_len": 1.25, "leg_upper": 0.9, "leg_lower": 1.1}
    for name, value in expected_scales.items():
        assert alignment.scales[name] == pytest.approx(value, abs=1e-9), name
    first, second = aligned[0].people[0], aligned[1].people[0]
    np.testing.assert_allclose(first.body, reference.body, atol=ATOL)
    np.testing.assert_allclose(first.hands, reference.hands, atol=ATOL)
    shift = np.array([dx * (VIDEO_W / VIDEO_H) / (REF_W / REF_H), dy])
    np.testing.assert_allclose(second.body, reference.body + shift, atol=ATOL)
    np.testing.assert_allclose(second.hands, reference.hands + shift, atol=ATOL)


def upper_body_case():
    """Reference with hips and legs hidden (upper-body photo), driving video with the full body."""
    body = driving_body_hu()
    hands = np.stack([hand_hu(body[7]), hand_hu(body[4])])
    ref_body, ref_hands = scaled_copy(body, hands, neck_to=np.array([0.25, 0.35]))
    lower = np.zeros(18, bool)
    lower[[8, 9, 10, 11, 12, 13]] = True
    reference = PersonPose.create(body=to_normalised(ref_body, 0.5), body_visible=~lower,
                                  hands=to_normalised(ref_hands, 0.5))
    driving = PersonPose.create(body=to_normalised(body, 2.0), hands=to_normalised(hands, 2.0))
    return reference, driving, body


def test_missing_joints_robust_is_sane_official_is_garbage():
    reference, driving, body = upper_body_case()
    frames = [PoseFrame([driving], VIDEO_W, VIDEO_H)]
    # Official: the hidden reference joints are the (-aspect, -1) sentinel; hip-to-knee of the reference is
    # the distance between two sentinels = 0, so the legs collapse onto the hips, and the neck-to-hip ratio
    # is measured to the sentinel.
    official, official_alignment = align_sequence(PoseFrame([reference], REF_W, REF_H), frames, robust=False)
    assert official_alignment.scales["leg_upper"] == 0.0 and official_alignment.scales["leg_lower"] == 0.0
    sentinel_len = np.linalg.norm(np.array([0.25, 0.35]) - np.array([-0.5, -1.0]))
    assert official_alignment.scales["body_len"] == pytest.approx(sentinel_len / 0.3)
    garbage = official[0].people[0]
    np.testing.assert_allclose(garbage.body[9], garbage.body[8], atol=ATOL)  # knee on the hip
    np.testing.assert_allclose(garbage.body[10], garbage.body[8], atol=ATOL)
    assert garbage.body[8, 1] > 1.5  # the hip far below the canvas
    # Robust: hip and leg ratios fall back to the mean of the measured ones.
    robust, alignment = align_sequence(PoseFrame([reference], REF_W, REF_H), frames, robust=True)
    measured = [1.5, 1.5, 1.5, 2.0, 1.2, 0.8]  # neck, face l/r, shoulder, arm upper/lower
    fallback = float(np.mean(measured))
    for name in ("body_len", "leg_upper", "leg_lower"):
        assert alignment.scales[name] == pytest.approx(fallback), name
    person = robust[0].people[0]
    ref_neck_hu = np.array([0.25, 0.35])
    hip_hu = ref_neck_hu + fallback * (body[8] - body[1])
    knee_hu = hip_hu + fallback * (body[9] - body[8])
    np.testing.assert_allclose(person.body[8], hip_hu / [0.5, 1.0], atol=ATOL)
    np.testing.assert_allclose(person.body[9], knee_hu / [0.5, 1.0], atol=ATOL)
    # the upper body is still exact
    np.testing.assert_allclose(person.body[:8], reference.body[:8], atol=ATOL)


def test_ratios_are_clamped_and_missing_everything_falls_back_to_one():
    reference, driving, _ = make_case()[:3]
    huge = reference.replace(body=reference.body * [1.0, 1.0])
    huge.body[3] = huge.body[2] + 30 * (reference.body[3] - reference.body[2])  # an absurd upper arm
    alignment = estimate_alignment(huge, driving, ref_aspect=0.5, video_aspect=2.0, ratio_range=(0.2, 5.0))
    assert alignment.scales["arm_upper"] == 5.0  # mean(36, 1.2) clamped to the range's top
    assert estimate_alignment(huge, driving, 0.5, 2.0, ratio_range=(0.2, 50.0)).scales["arm_upper"] == pytest.approx(18.6)
    only_neck = PersonPose.create(body=np.full((18, 2), 0.5), body_visible=np.arange(18) == 1)
    alignment = estimate_alignment(only_neck, driving, ref_aspect=0.5, video_aspect=2.0)
    assert all(value == 1.0 for value in alignment.scales.values())
    np.testing.assert_allclose(alignment.offset, np.array([0.25, 0.5]) - driving.body[1] * [2.0, 1.0])


def test_hidden_parent_and_hidden_neck_in_a_driving_frame():
    reference, driving, body, hands = make_case()
    no_elbow = driving.replace(body_visible=np.arange(18) != 3)
    no_neck = driving.replace(body_visible=np.arange(18) != 1)
    frames = [PoseFrame([driving], VIDEO_W, VIDEO_H), PoseFrame([no_elbow], VIDEO_W, VIDEO_H),
              PoseFrame([no_neck], VIDEO_W, VIDEO_H)]
    aligned, _ = align_sequence(PoseFrame([reference], REF_W, REF_H), frames)
    ref_hu = reference.body * [0.5, 1.0]
    # wrist hangs off the shoulder with the mean of the upper and lower arm ratios
    wrist_hu = ref_hu[2] + (1.2 + 0.8) / 2 * (body[4] - body[2])
    np.testing.assert_allclose(aligned[1].people[0].body[4], wrist_hu / [0.5, 1.0], atol=ATOL)
    assert not aligned[1].people[0].body_visible[3]
    # without a neck the shoulder midpoint (= the neck here) is the pivot: same result as with the neck
    visible = np.arange(18) != 1
    np.testing.assert_allclose(aligned[2].people[0].body[visible], aligned[0].people[0].body[visible], atol=ATOL)


def test_frames_without_people_stay_empty_and_errors():
    reference, driving, _, _ = make_case()
    frames = [PoseFrame([driving], VIDEO_W, VIDEO_H), PoseFrame([], VIDEO_W, VIDEO_H)]
    aligned, _ = align_sequence(PoseFrame([reference], REF_W, REF_H), frames)
    assert len(aligned[0].people) == 1 and aligned[1].people == []
    with pytest.raises(ValueError, match="no person detected in the reference"):
        align_sequence(PoseFrame([], REF_W, REF_H), frames)
    with pytest.raises(ValueError, match="no person detected in driving frame 1"):
        align_sequence(PoseFrame([reference], REF_W, REF_H), frames, align_frame=1)
    with pytest.raises(ValueError, match="empty sequence"):
        align_sequence(PoseFrame([reference], REF_W, REF_H), [])
    with pytest.raises(ValueError, match="align_frame must index the 2 driving frames"):
        align_sequence(PoseFrame([reference], REF_W, REF_H), frames, align_frame=5)
    with pytest.raises(ValueError, match="canvas_size"):
        align_sequence(reference, frames)
    with pytest.raises(ValueError, match="no visible body joint"):
        estimate_alignment(PersonPose.create(), driving, 1.0, 1.0)
