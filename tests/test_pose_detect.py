"""DWPose pre/post-processing, function by function, against hand-computed values."""
import cv2
import numpy as np
import pytest

from steadydancer_core.pose.detect import dwpose_ops as ops


def test_letterbox_scales_to_fit_and_pads_bottom_right_with_114() -> None:
    image = np.full((320, 480, 3), (10, 20, 30), np.uint8)
    batch, ratio = ops.letterbox(image)
    assert ratio == pytest.approx(4 / 3)  # min(640/320, 640/480)
    assert batch.shape == (1, 3, 640, 640) and batch.dtype == np.float32
    content_h = int(320 * 4 / 3)  # 426; width fills all 640
    assert (batch[0, :, :content_h, :] == np.array([10, 20, 30], np.float32)[:, None, None]).all()
    assert (batch[0, :, content_h:, :] == 114).all()


def test_resize_for_detection_short_side_1024_multiple_of_64() -> None:
    resized = ops.resize_for_detection(np.zeros((480, 832, 3), np.uint8), 1024)
    # 832 * 1024/480 = 1774.9 -> 28 * 64 = 1792
    assert resized.shape == (1024, 1792, 3)
    same = np.zeros((1024, 1792, 3), np.uint8)
    assert ops.resize_for_detection(same, 1024) is same
    assert ops.resize_for_detection(same, None) is same


def test_yolox_grids_layout() -> None:
    grids, strides = ops.yolox_grids()
    assert grids.shape == (8400, 2) and strides.shape == (8400, 1)
    # stride 8: row-major, x fastest
    assert grids[81].tolist() == [1, 1] and strides[81, 0] == 8
    # first stride-16 anchor, then stride-32 cell (x=3, y=2)
    assert strides[6400, 0] == 16 and grids[6400].tolist() == [0, 0]
    assert grids[8000 + 2 * 20 + 3].tolist() == [3, 2] and strides[8000 + 2 * 20 + 3, 0] == 32


def test_decode_yolox_box_and_score() -> None:
    output = np.zeros((1, 8400, 85), np.float32)
    anchor = 8000 + 2 * 20 + 3  # stride 32, cell (3, 2)
    output[0, anchor, :5] = [0.5, 0.25, np.log(2.0), np.log(4.0), 0.8]
    output[0, anchor, 5] = 0.5
    boxes, scores = ops.decode_yolox(output, ratio=2.0)
    # centre ((3.5*32, 2.25*32)) = (112, 72); size (64, 128); then /ratio 2
    np.testing.assert_allclose(boxes[anchor], [(112 - 32) / 2, (72 - 64) / 2, (112 + 32) / 2, (72 + 64) / 2], rtol=1e-6)
    assert scores[anchor] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="8400"):
        ops.decode_yolox(np.zeros((1, 100, 85), np.float32), 1.0)


def test_nms_suppresses_by_iou_and_keeps_score_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.95, 0.8, 0.5], np.float32)
    # IoU(box1, box0) = 90/110 = 0.82 > 0.65 -> box0 goes; IoU(box1, box2) = 60/140 = 0.43 -> box2 stays
    assert ops.nms(boxes, scores, 0.65).tolist() == [1, 2, 3]
    # at 0.4, box2 (IoU 0.43 with box1) goes too
    assert ops.nms(boxes, scores, 0.4).tolist() == [1, 3]


def test_person_boxes_threshold_before_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [100, 0, 110, 10]], np.float32)
    scores = np.array([0.51, 0.49], np.float32)
    kept, kept_scores = ops.select_person_boxes(boxes, scores, ops.DetectionThresholds.preset("official"))
    assert kept.tolist() == [[0, 0, 10, 10]] and kept_scores.tolist() == pytest.approx([0.51])
    kept, _ = ops.select_person_boxes(boxes, scores, ops.DetectionThresholds.preset("controlnet_aux"))
    assert len(kept) == 2


@pytest.mark.parametrize("box, center, scale", [
    ((0, 0, 100, 100), (50, 50), (125, 125 / 0.75)),  # square box: height grows to the 3:4 aspect
    ((10, 20, 310, 120), (160, 70), (375, 500)),  # wide box: 300*1.25 = 375 wide, height 375/0.75
])
def test_box_to_center_scale_pads_and_fixes_aspect(box, center, scale) -> None:
    c, s = ops.box_to_center_scale(np.array(box, np.float64))
    np.testing.assert_allclose(c, center)
    np.testing.assert_allclose(s, scale)


def test_crop_samples_the_box_and_normalises() -> None:
    # R = x, G = y: bilinear sampling of a linear ramp is exact, so every crop pixel is predictable.
    height, width = 250, 240
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs, ys, np.full_like(xs, 7)], -1).astype(np.uint8)
    box = np.array([[100.0, 100.0, 124.0, 132.0]])  # padded crop stays inside the image
    batch, centers, scales = ops.pose_inputs(image, box)
    assert batch.shape == (1, 3, 384, 288) and batch.dtype == np.float32
    center, scale = ops.box_to_center_scale(box[0])
    np.testing.assert_allclose(centers[0], center)
    np.testing.assert_allclose(scales[0], scale)
    zoom = 288 / scale[0]
    for u, v in [(0, 0), (144, 192), (287, 383), (50, 300)]:
        source_x, source_y = (u - 144) / zoom + center[0], (v - 192) / zoom + center[1]
        expected = (np.array([source_x, source_y, 7.0]) - ops.POSE_MEAN) / ops.POSE_STD
        np.testing.assert_allclose(batch[0, :, v, u], expected, atol=0.6 / 57)  # uint8 rounding of the warp
    swapped, _, _ = ops.pose_inputs(image, box, swap_channels=True)
    expected_blue_as_red = (7.0 - ops.POSE_MEAN[0]) / ops.POSE_STD[0]
    np.testing.assert_allclose(swapped[0, 0], expected_blue_as_red, atol=1e-5)


def test_decode_simcc_argmax_and_min_score() -> None:
    simcc_x = np.zeros((1, 3, 576), np.float32)
    simcc_y = np.zeros((1, 3, 768), np.float32)
    simcc_x[0, 0, 101], simcc_y[0, 0, 300] = 0.9, 0.6
    simcc_x[0, 1, 7], simcc_y[0, 1, 767] = 0.2, 0.8
    simcc_x[0, 2], simcc_y[0, 2] = -1.0, -1.0  # nothing positive -> location -1
    locations, scores = ops.decode_simcc(simcc_x, simcc_y)
    np.testing.assert_allclose(locations[0, 0], [50.5, 150.0])
    np.testing.assert_allclose(locations[0, 1], [3.5, 383.5])
    np.testing.assert_allclose(locations[0, 2], [-1, -1])
    np.testing.assert_allclose(scores[0], [0.6, 0.2, -1.0])


def test_crop_to_image_inverts_the_crop_matrix() -> None:
    center, scale = np.array([[200.0, 150.0]]), np.array([[120.0, 160.0]])
    crop_points = np.array([[[144.0, 192.0], [0.0, 0.0], [288.0, 384.0], [10.0, 30.0]]])
    image_points = ops.crop_to_image(crop_points, center, scale)
    np.testing.assert_allclose(image_points[0, :3], [[200, 150], [140, 70], [260, 230]])
    # independent check through OpenCV: the crop matrix maps the image point back to the crop point
    matrix = ops.crop_affine(center[0], scale[0])
    back = cv2.transform(image_points[:, 3:4].reshape(1, 1, 2), matrix)[0, 0]
    np.testing.assert_allclose(back, [10.0, 30.0], atol=1e-9)


def _wholebody(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """133 keypoints at (10·i, 5·i + 1) pixels so each index is recognisable after conversion."""
    index = np.arange(133, dtype=np.float64)
    return np.stack([10 * index, 5 * index + 1], -1), scores


def test_wholebody_to_openpose_order_hands_face_and_normalisation() -> None:
    keypoints, scores = _wholebody(np.full(133, 0.9))
    person = ops.wholebody_to_person(keypoints, scores, (2000, 1000), 0.35, box=np.array([0, 0, 500, 250]), box_score=0.7)
    coco_for_openpose = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for openpose, coco in enumerate(coco_for_openpose):
        if coco is not None:
            np.testing.assert_allclose(person.body[openpose], [10 * coco / 2000, (5 * coco + 1) / 1000])
    np.testing.assert_allclose(person.body[1], [(50 + 60) / 2 / 2000, (26 + 31) / 2 / 1000])  # shoulders 5, 6
    np.testing.assert_allclose(person.hands[0, 0], [910 / 2000, 456 / 1000])  # left hand starts at 91
    np.testing.assert_allclose(person.hands[1, 20], [1320 / 2000, 661 / 1000])  # right hand ends at 132
    np.testing.assert_allclose(person.face[0], [230 / 2000, 116 / 1000])  # face starts at 23
    np.testing.assert_allclose(person.face[67], [900 / 2000, 451 / 1000])
    np.testing.assert_allclose(person.bbox, [0, 0, 0.25, 0.25])
    assert person.detection_score == pytest.approx(0.7)
    assert person.body_visible.all() and person.hand_visible.all() and person.face_visible.all()


@pytest.mark.parametrize("shoulders, threshold, neck_visible", [
    ((0.9, 0.9), 0.35, True),
    ((0.32, 0.9), 0.35, True),  # both > 0.3: neck visible although shoulder 5 itself is hidden at 0.35
    ((0.29, 0.9), 0.35, False),
    ((0.29, 0.9), 0.2, False),  # the neck rule uses its own 0.3, whatever the keypoint threshold
])
def test_neck_rule(shoulders, threshold, neck_visible) -> None:
    scores = np.full(133, 0.9)
    scores[5], scores[6] = shoulders
    person = ops.wholebody_to_person(*_wholebody(scores), (100, 100), threshold)
    assert bool(person.body_visible[1]) is neck_visible
    assert person.body_score[1] == (1.0 if neck_visible else 0.0)
    assert bool(person.body_visible[5]) is (shoulders[0] > threshold)


def test_visibility_threshold_body_strict_hands_inclusive() -> None:
    scores = np.full(133, 0.9)
    scores[0] = 0.35  # nose exactly at the threshold: hidden (subset uses score > thr)
    scores[9] = 0.34  # left wrist
    scores[91] = 0.35  # first left-hand point exactly at the threshold: kept (hidden only below)
    scores[112] = 0.3  # first right-hand point
    scores[23] = 0.1  # first face point
    person = ops.wholebody_to_person(*_wholebody(scores), (100, 100), 0.35)
    assert not person.body_visible[0] and not person.body_visible[7] and person.body_visible[6]
    assert person.hand_visible[0, 0] and not person.hand_visible[1, 0] and person.hand_visible[1, 1]
    assert not person.face_visible[0] and person.face_visible[1]
    relaxed = ops.wholebody_to_person(*_wholebody(scores), (100, 100), 0.3)
    assert relaxed.body_visible[7] and relaxed.hand_visible[1, 0]


def test_threshold_presets() -> None:
    assert ops.DetectionThresholds.preset("official") == ops.DetectionThresholds(0.5, 0.65, 0.35)
    assert ops.DetectionThresholds.preset("controlnet_aux") == ops.DetectionThresholds(0.3, 0.45, 0.3)
    with pytest.raises(ValueError, match="official"):
        ops.DetectionThresholds.preset("fast")


def test_unflip_simcc_swaps_sides_and_reverses_x() -> None:
    simcc_x = np.zeros((1, 133, 576), np.float32)
    simcc_y = np.zeros((1, 133, 768), np.float32)
    simcc_x[0, 5, 100], simcc_y[0, 5, 300] = 1.0, 1.0  # left shoulder seen in the mirrored crop
    simcc_x[0, 91, 10], simcc_y[0, 91, 20] = 1.0, 1.0  # first left-hand point
    simcc_x[0, 23 + 36, 200] = 1.0  # face: outer corner of one eye
    x, y = ops.unflip_simcc(simcc_x, simcc_y)
    assert x[0, 6].argmax() == 575 - 100 and y[0, 6].argmax() == 300  # becomes the right shoulder
    assert x[0, 112].argmax() == 575 - 10 and y[0, 112].argmax() == 20  # right hand
    assert x[0, 23 + 45].argmax() == 575 - 200  # the other eye's outer corner (300-W 36 <-> 45)
    assert x[0, 5].max() == 0 and x[0, 91].max() == 0
    assert (ops.WHOLEBODY_FLIP_INDICES[ops.WHOLEBODY_FLIP_INDICES] == np.arange(133)).all()
    assert ops.WHOLEBODY_FLIP_INDICES[0] == 0 and ops.WHOLEBODY_FLIP_INDICES[23 + 30] == 23 + 30  # nose, nose tip
