"""Keypoint types: validation, POSE_KEYPOINT (comfyui_controlnet_aux) and JSON round trips, person selection."""
import json

import numpy as np
import pytest

from steadydancer_core.pose.keypoints import (
    LEFT_HAND, RIGHT_HAND, PersonPose, PoseFrame, check_sequence, frames_from_dict, frames_from_pose_keypoint,
    frames_to_dict, frames_to_pose_keypoint, load_pose_json, person_from_official, person_to_official,
    save_pose_json, select_main_people, select_person,
)


def random_person(rng: np.random.Generator, hidden: float = 0.3, **extra) -> PersonPose:
    return PersonPose.create(
        body=rng.random((18, 2)), body_visible=rng.random(18) > hidden, body_score=0.3 + 0.7 * rng.random(18),
        hands=rng.random((2, 21, 2)), hand_visible=rng.random((2, 21)) > hidden, hand_score=0.3 + 0.7 * rng.random((2, 21)),
        face=rng.random((68, 2)), face_visible=rng.random(68) > hidden, face_score=0.3 + 0.7 * rng.random(68), **extra)


def test_create_defaults_and_copy_semantics():
    body = np.full((18, 2), 0.5)
    person = PersonPose.create(body=body)
    assert person.body_visible.all() and np.array_equal(person.body_score, np.ones(18))
    assert not person.hand_visible.any() and not person.face_visible.any()
    assert np.array_equal(person.hand_score, np.zeros((2, 21)))
    body[0] = 9.0  # the person holds its own copy
    assert person.body[0, 0] == 0.5
    partial = PersonPose.create(body=np.zeros((18, 2)), body_visible=np.arange(18) < 5)
    assert np.array_equal(partial.body_score, (np.arange(18) < 5).astype(float))


@pytest.mark.parametrize("field, value, message", [
    ("body", np.zeros((17, 2)), r"PersonPose.body: expected shape \(18, 2\)"),
    ("hands", np.zeros((21, 2)), r"PersonPose.hands: expected shape \(2, 21, 2\)"),
    ("face", np.zeros((70, 2)), r"PersonPose.face: expected shape \(68, 2\)"),
    ("body_visible", np.ones(17, bool), r"PersonPose.body_visible: expected shape \(18,\)"),
])
def test_wrong_shapes_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        PersonPose.create(**{field: value})


def test_non_finite_and_bad_frames_raise():
    with pytest.raises(ValueError, match="finite"):
        PersonPose.create(body=np.full((18, 2), np.nan))
    with pytest.raises(ValueError, match="positive integer width and height"):
        PoseFrame([], 0, 10)
    with pytest.raises(TypeError, match="expected a PersonPose"):
        PoseFrame([np.zeros((18, 2))], 10, 10)
    with pytest.raises(ValueError, match="empty sequence"):
        check_sequence([])
    with pytest.raises(TypeError, match=r"\[1\]: expected a PoseFrame"):
        check_sequence([PoseFrame([], 4, 4), "frame"])


def test_pose_keypoint_from_controlnet_aux_dwpose_dict():
    """A frame as controlnet_aux's DWPose writes it: pixels, [0,0,0] for a missing point, None for a wholly
    missing part, 70 face points (68 + both eyes)."""
    width, height = 640, 480
    body = []
    for j in range(18):
        body += [0.0, 0.0, 0.0] if j == 10 else [10.0 * j + 5, 20.0 + j, 1.0]
    face = []
    for j in range(70):
        face += [100.0 + j, 200.0, 1.0]
    hand_right = []
    for j in range(21):
        hand_right += [300.0 + j, 400.0 - j, 1.0]
    data = [{"people": [{"pose_keypoints_2d": body, "face_keypoints_2d": face, "hand_left_keypoints_2d": None,
                         "hand_right_keypoints_2d": hand_right}], "canvas_height": height, "canvas_width": width}]
    frames = frames_from_pose_keypoint(data)
    person = frames[0].people[0]
    assert (frames[0].width, frames[0].height) == (640, 480)
    assert person.body_visible.sum() == 17 and not person.body_visible[10]
    assert person.body[3, 0] == pytest.approx(35.0 / 640) and person.body[3, 1] == pytest.approx(23.0 / 480)
    assert not person.hand_visible[LEFT_HAND].any() and person.hand_visible[RIGHT_HAND].all()
    assert person.hands[RIGHT_HAND, 20, 0] == pytest.approx(320.0 / 640)
    assert person.face_visible.all() and person.face[67, 0] == pytest.approx(167.0 / 640)  # eyes 68, 69 dropped
    # ... and back: the same dict, in pixels, with the 68 face points
    back = frames_to_pose_keypoint(frames, confidence="binary")[0]
    assert back["canvas_width"] == 640 and back["canvas_height"] == 480
    out = back["people"][0]
    assert out["hand_left_keypoints_2d"] is None
    np.testing.assert_allclose(out["pose_keypoints_2d"], body, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["hand_right_keypoints_2d"], hand_right, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["face_keypoints_2d"], face[:68 * 3], rtol=0, atol=1e-9)


def test_pose_keypoint_unit_detection():
    normalised = {"people": [{"pose_keypoints_2d": [0.5, 0.25, 1.0] * 18}], "canvas_width": 200, "canvas_height": 100}
    assert frames_from_pose_keypoint(normalised)[0].people[0].body[0, 0] == 0.5
    pixels = {"people": [{"pose_keypoints_2d": [50.0, 25.0, 1.0] * 18}], "canvas_width": 200, "canvas_height": 100}
    assert frames_from_pose_keypoint(pixels)[0].people[0].body[0].tolist() == [0.25, 0.25]
    assert frames_from_pose_keypoint(normalised, units="pixels")[0].people[0].body[0].tolist() == [0.0025, 0.0025]
    with pytest.raises(ValueError, match=r"expected 18 \[x, y, confidence\] triplets \(54 numbers\), got 51"):
        frames_from_pose_keypoint({"people": [{"pose_keypoints_2d": [1.0] * 51}], "canvas_width": 2, "canvas_height": 2})
    with pytest.raises(ValueError, match="canvas_width"):
        frames_from_pose_keypoint([{"people": []}])


def test_pose_keypoint_round_trips_are_lossless():
    rng = np.random.default_rng(0)
    frames = [PoseFrame([random_person(rng), random_person(rng)], 832, 480) for _ in range(3)]
    frames.append(PoseFrame([], 832, 480))
    for units in ("pixels", "normalized"):
        data = frames_to_pose_keypoint(frames, units=units)
        json.dumps(data)  # JSON-serialisable as ComfyUI stores it
        back = frames_from_pose_keypoint(data, units=units)
        assert len(back) == 4 and back[3].people == []
        for frame, other in zip(frames, back):
            assert (frame.width, frame.height) == (other.width, other.height)
            for person, person_back in zip(frame.people, other.people):
                assert person.same_as(person_back, atol=1e-12)
        # POSE_KEYPOINT -> ours -> POSE_KEYPOINT gives the same numbers
        again = frames_to_pose_keypoint(back, units=units)
        for a, b in zip(data, again):
            for pa, pb in zip(a["people"], b["people"]):
                for key in pa:
                    np.testing.assert_allclose(pa[key], pb[key], rtol=0, atol=1e-9)


def test_own_json_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    frames = [PoseFrame([random_person(rng, bbox=[0.1, 0.2, 0.6, 0.9], detection_score=0.87)], 720, 1280),
              PoseFrame([], 720, 1280)]
    path = tmp_path / "poses.json"
    save_pose_json(frames, path)
    loaded = load_pose_json(path)
    person, back = frames[0].people[0], loaded[0].people[0]
    for name, value in person._fields().items():
        other = getattr(back, name)
        assert np.array_equal(value, other) if isinstance(value, np.ndarray) else value == other, name
    assert loaded[1].people == [] and (loaded[1].width, loaded[1].height) == (720, 1280)
    in_memory = frames_from_dict(json.loads(json.dumps(frames_to_dict(frames))))
    assert np.array_equal(in_memory[0].people[0].face, person.face) and in_memory[0].people[0].detection_score == 0.87
    # a POSE_KEYPOINT file loads too
    path_cna = tmp_path / "cna.json"
    path_cna.write_text(json.dumps(frames_to_pose_keypoint(frames)))
    assert load_pose_json(path_cna)[0].people[0].same_as(person, atol=1e-12)
    with pytest.raises(ValueError, match="expected format 'steadydancer-pose'"):
        frames_from_dict({"format": "other"})


def test_person_selection():
    rng = np.random.default_rng(2)
    small_confident = random_person(rng, detection_score=0.95, bbox=[0.4, 0.4, 0.5, 0.5])
    large_less_confident = random_person(rng, detection_score=0.6, bbox=[0.1, 0.1, 0.9, 0.9])
    frame = PoseFrame([large_less_confident, small_confident], 100, 100)
    assert select_person(frame) is small_confident
    assert select_person(frame, by="area") is large_less_confident
    assert select_person(PoseFrame([], 10, 10)) is None
    # without detector scores: mean visible body score; without boxes: extent of the visible joints
    a = PersonPose.create(body=[[0.1 + 0.01 * j, 0.1] for j in range(18)], body_score=np.full(18, 0.9))
    b = PersonPose.create(body=[[0.1 + 0.05 * j, 0.1 + 0.05 * j] for j in range(18)], body_score=np.full(18, 0.5))
    frame = PoseFrame([b, a], 100, 100)
    assert select_person(frame) is a and select_person(frame, by="area") is b
    main = select_main_people([frame, PoseFrame([], 100, 100)])
    assert main[0].people == [a] and main[1].people == []
    with pytest.raises(ValueError, match="by='score' or 'area'"):
        select_person(frame, by="largest")


def test_each_person_keeps_its_own_hands():
    """The official detector stacks all left hands then all right hands; we keep hands per person."""
    rng = np.random.default_rng(3)
    first, second = random_person(rng, hidden=0.0), random_person(rng, hidden=0.0)
    data = frames_to_pose_keypoint([PoseFrame([first, second], 640, 480)])
    back = frames_from_pose_keypoint(data)[0]
    for original, person in zip((first, second), back.people):
        np.testing.assert_allclose(person.hands, original.hands, atol=1e-12)


def test_official_array_conversion():
    body = np.random.default_rng(4).random((18, 2))
    body[[9, 10]] = -1.0
    hands = np.full((2, 21, 2), -1.0)
    hands[1, :5] = 0.25
    person = person_from_official(body, hands)
    assert person.body_visible.tolist() == [j not in (9, 10) for j in range(18)]
    assert person.hand_visible[1, :5].all() and not person.hand_visible[0].any()
    out_body, subset, out_hands = person_to_official(person)
    assert np.array_equal(out_body, body) and np.array_equal(out_hands, hands)
    assert subset.tolist() == [-1.0 if j in (9, 10) else float(j) for j in range(18)]
