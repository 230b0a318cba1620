"""DWPoseDetector end to end on onnxruntime with tiny constant-output YOLOX/DWPose graphs (real tensor
names and shapes), checked against boxes and keypoints computed by hand from those constants."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_pose_detect_models import build_dwpose, build_yolox, simcc_for_keypoints, yolox_raw_output

from steadydancer_core.pose.detect import DWPoseDetector, OnnxModelError, create_detector
from steadydancer_core.pose.detect.dwpose_ops import WHOLEBODY_FLIP_INDICES
from steadydancer_core.pose.detect.models import DETECTOR_FILE, POSE_FILE

IMAGE_HW = (480, 832)
# Boxes in the letterboxed 640×640 YOLOX input: two people, a duplicate of person B (IoU 0.667 > 0.65),
# a low-score box and a confident box of another class.
PERSON_A = (100, 50, 200, 400)  # score 0.9, smaller
PERSON_B = (300, 60, 500, 420)  # score 0.8, larger
BOXES = [PERSON_A, PERSON_B, (340, 60, 540, 420), (550, 100, 600, 200), (20, 300, 80, 400)]
OBJECTNESS = [0.9, 0.8, 0.7, 0.4, 0.95]
CLASSES = [0, 0, 0, 0, 3]

X_BINS = (3 * np.arange(133) + 11) % 576
Y_BINS = (5 * np.arange(133) + 7) % 768
PEAKS = np.full(133, 0.9, np.float32)
PEAKS[0] = 0.2  # nose below the 0.35 threshold
PEAKS[100] = 0.3  # a left-hand point below it


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dwpose_models")
    simcc_x, simcc_y = simcc_for_keypoints(X_BINS, Y_BINS, PEAKS)
    return {
        "yolox": build_yolox(folder / DETECTOR_FILE, yolox_raw_output(BOXES, OBJECTNESS, other_class=CLASSES)),
        "yolox_empty": build_yolox(folder / "empty.onnx", yolox_raw_output([], [])),
        "pose": build_dwpose(folder / POSE_FILE, simcc_x, simcc_y),
        "pose_batch1": build_dwpose(folder / "b1.onnx", simcc_x, simcc_y, batch=1),
        "pose_batch5": build_dwpose(folder / "b5.onnx", simcc_x, simcc_y, batch=5),
        "pose_unnamed": build_dwpose(folder / "unnamed.onnx", simcc_x, simcc_y, names=("out_a", "out_b"), y_first=True),
    }


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (*IMAGE_HW, 3), dtype=np.uint8)


def _expected_person(box_640: tuple, work_wh: tuple[int, int]) -> dict[str, np.ndarray]:
    """Normalised keypoints the constant pose graph must produce for this box, computed from the formulas."""
    ratio = min(640 / work_wh[1], 640 / work_wh[0])
    x0, y0, x1, y1 = np.array(box_640, np.float64) / ratio
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * 1.25, (y1 - y0) * 1.25
    w, h = (w, w * 4 / 3) if w > h * 0.75 else (h * 0.75, h)
    x = (X_BINS / 2.0) / 288 * w + cx - w / 2
    y = (Y_BINS / 2.0) / 384 * h + cy - h / 2
    points = np.stack([x / work_wh[0], y / work_wh[1]], -1)
    return {"points": points, "bbox": np.array([x0, y0, x1, y1]) / np.tile(work_wh, 2)}


def _check_person(person, box_640: tuple, work_wh: tuple[int, int]) -> None:
    expected = _expected_person(box_640, work_wh)
    points = expected["points"]
    np.testing.assert_allclose(person.bbox, expected["bbox"], atol=1e-6)
    np.testing.assert_allclose(person.body[2], points[6], atol=1e-6)  # right shoulder = COCO 6
    np.testing.assert_allclose(person.body[13], points[15], atol=1e-6)  # left ankle = COCO 15
    np.testing.assert_allclose(person.body[1], (points[5] + points[6]) / 2, atol=1e-6)
    np.testing.assert_allclose(person.hands[0], points[91:112], atol=1e-6)
    np.testing.assert_allclose(person.hands[1], points[112:133], atol=1e-6)
    np.testing.assert_allclose(person.face, points[23:91], atol=1e-6)
    assert not person.body_visible[0] and person.body_visible[1:].all()
    assert not person.hand_visible[0, 100 - 91] and person.hand_visible[1].all()
    np.testing.assert_allclose(person.body_score[2], 0.9, atol=1e-6)


def test_two_people_best_score_first_each_with_own_hands(models: dict[str, Path]) -> None:
    detector = DWPoseDetector(models["yolox"], models["pose"], detect_short_side=None)
    frame = detector.detect(_image())
    assert (frame.width, frame.height) == (832, 480)
    assert len(frame.people) == 2  # duplicate suppressed, low score / other class dropped
    assert [p.detection_score for p in frame.people] == pytest.approx([0.9, 0.8])
    _check_person(frame.people[0], PERSON_A, (832, 480))
    _check_person(frame.people[1], PERSON_B, (832, 480))


def test_largest_box_order_and_max_people(models: dict[str, Path]) -> None:
    by_area = DWPoseDetector(models["yolox"], models["pose"], detect_short_side=None, person_order="area")
    frame = by_area.detect(_image())
    assert [p.detection_score for p in frame.people] == pytest.approx([0.8, 0.9])
    _check_person(frame.people[0], PERSON_B, (832, 480))
    one = DWPoseDetector(models["yolox"], models["pose"], detect_short_side=None, person_order="area", max_people=1)
    assert [p.detection_score for p in one.detect(_image()).people] == pytest.approx([0.8])


@pytest.mark.parametrize("pose_model", ["pose_batch1", "pose_batch5", "pose_unnamed"])
def test_fixed_batch_and_unnamed_outputs_match_the_dynamic_model(models: dict[str, Path], pose_model: str) -> None:
    detector = DWPoseDetector(models["yolox"], models[pose_model], detect_short_side=None)
    if pose_model == "pose_batch1":
        assert detector.pose.fixed_batch == 1
    frame = detector.detect(_image())
    assert len(frame.people) == 2
    _check_person(frame.people[0], PERSON_A, (832, 480))
    _check_person(frame.people[1], PERSON_B, (832, 480))


def test_official_detection_resolution_keeps_normalised_coordinates(models: dict[str, Path]) -> None:
    detector = DWPoseDetector(models["yolox"], models["pose"])  # short side 1024 -> 1792×1024 working image
    frame = detector.detect(_image())
    assert (frame.width, frame.height) == (832, 480)
    _check_person(frame.people[0], PERSON_A, (1792, 1024))


def test_no_box_whole_image_fallback_or_empty(models: dict[str, Path]) -> None:
    fallback = DWPoseDetector(models["yolox_empty"], models["pose"], detect_short_side=None)
    frame = fallback.detect(_image())
    assert len(frame.people) == 1 and frame.people[0].detection_score is None
    np.testing.assert_allclose(frame.people[0].bbox, [0, 0, 1, 1])
    # whole image as the box: in letterbox units that box is the 640-scaled image
    ratio = 640 / 832
    _check_person(frame.people[0], (0, 0, 832 * ratio, 480 * ratio), (832, 480))
    empty = DWPoseDetector(models["yolox_empty"], models["pose"], detect_short_side=None, no_box="empty")
    assert empty.detect(_image()).people == []


def _mirror_symmetric_simcc() -> tuple[np.ndarray, np.ndarray]:
    """SimCC of a left/right symmetric figure: twins at mirrored x bins and equal y; a self-mirrored point
    (nose, ...) on a two-bin plateau around the centre so its mirror image is itself."""
    simcc_x = np.full((133, 576), -0.5, np.float32)
    simcc_y = np.full((133, 768), -0.5, np.float32)
    for k in range(133):
        twin = WHOLEBODY_FLIP_INDICES[k]
        if twin == k:
            simcc_x[k, [287, 288]] = 0.9
        else:
            x_bin = 100 + (min(k, twin) * 7) % 150  # the lower index sits on the left half
            simcc_x[k, x_bin if k < twin else 575 - x_bin] = 0.9
        simcc_y[k, (min(k, twin) * 11) % 768] = 0.9
    return simcc_x, simcc_y


def test_flip_test_averages_with_the_mirrored_crop(tmp_path: Path, models: dict[str, Path]) -> None:
    symmetric = build_dwpose(tmp_path / "symmetric.onnx", *_mirror_symmetric_simcc())
    plain = DWPoseDetector(models["yolox"], symmetric, detect_short_side=None).detect(_image())
    flipped = DWPoseDetector(models["yolox"], symmetric, detect_short_side=None, flip_test=True).detect(_image())
    # mirrored SimCC, un-flipped (sides swapped, x reversed), equals the original: averaging changes nothing
    for a, b in zip(plain.people, flipped.people):
        assert a.same_as(b, atol=1e-9)
        assert a.body_visible.all()
    # a figure that is not symmetric loses its peaks in the average: scores halve, so nothing stays visible
    asymmetric = DWPoseDetector(models["yolox"], models["pose"], detect_short_side=None, flip_test=True)
    person = asymmetric.detect(_image()).people[0]
    assert person.body_score[2] == pytest.approx((0.9 - 0.5) / 2)


def test_bad_model_files_and_images(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match="YOLOX"):
        DWPoseDetector(models["pose"], models["yolox"])  # swapped files: the pose slot gets a one-output model
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"<html>not a model</html>")
    with pytest.raises(OnnxModelError, match="fetch it again"):
        DWPoseDetector(broken, models["pose"])
    detector = DWPoseDetector(models["yolox"], models["pose"], detect_short_side=None)
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        detector.detect(np.zeros((64, 64), np.uint8))


def test_create_detector_from_models_folder(models: dict[str, Path]) -> None:
    detector = create_detector("dwpose", models_dir=models["yolox"].parent, download=False, detect_short_side=None)
    assert detector.name == "dwpose" and len(detector.detect(_image()).people) == 2
    with pytest.raises(ValueError, match="dwpose"):
        create_detector("openpose")
