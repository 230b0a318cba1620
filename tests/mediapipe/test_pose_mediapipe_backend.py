"""The mediapipe backend on the real example images. Runs only in the optional mediapipe environment
(.venv-mediapipe, see README); elsewhere the whole module is skipped with the reason."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "mediapipe.python.solutions.pose",
    reason="mediapipe==0.10.21 is not installed here; these tests run in .venv-mediapipe (see README)",
)

from steadydancer_core.pose.detect import create_detector  # noqa: E402
from steadydancer_core.pose.detect.mediapipe_backend import MediaPipeDetector  # noqa: E402
from steadydancer_core.video import read_image, read_video  # noqa: E402

EXAMPLES = ("video00001_img00001", "video00002_img00002")
NOSE, NECK, R_SHO, R_ELB, R_WRI, L_SHO, L_ELB, L_WRI, R_HIP, L_HIP = 0, 1, 2, 3, 4, 5, 6, 7, 8, 11
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17


@pytest.fixture(scope="module")
def detector() -> MediaPipeDetector:
    with MediaPipeDetector() as detector:
        yield detector


@pytest.mark.parametrize("example", EXAMPLES)
def test_reference_images_give_a_plausible_upright_skeleton(detector: MediaPipeDetector, shared_dir: Path,
                                                            example: str) -> None:
    image = read_image(shared_dir / "data" / "official_examples" / example / "ref_image.png")
    frame = detector.detect(image)
    assert (frame.width, frame.height) == (image.shape[1], image.shape[0])
    assert len(frame.people) == 1
    person = frame.people[0]
    # both reference images are frontal half-body portraits: head, shoulders, elbows visible
    for joint in (NOSE, NECK, R_SHO, L_SHO, R_ELB, L_ELB, R_EYE, L_EYE):
        assert person.body_visible[joint], f"joint {joint} not visible"
    # pixels, so proportions are not distorted by the image aspect
    body = person.body * [frame.width, frame.height]
    x, y = body[:, 0], body[:, 1]
    shoulder_width = np.linalg.norm(body[R_SHO] - body[L_SHO])
    # facing the camera: the person's right side is on the image's left
    assert x[R_SHO] < x[NECK] < x[L_SHO]
    assert x[R_EYE] < x[L_EYE] and x[R_EAR] < x[L_EAR]
    assert abs(y[NECK] - (y[R_SHO] + y[L_SHO]) / 2) < 0.05 * shoulder_width  # neck = shoulder midpoint
    assert y[R_EYE] < y[NOSE] < y[NECK] and y[L_EYE] < y[NOSE]
    assert y[R_ELB] > y[R_SHO] and y[L_ELB] > y[L_SHO]  # arms hang down
    assert 0.2 * image.shape[1] < shoulder_width < 0.8 * image.shape[1]
    head = np.linalg.norm(body[NOSE] - body[NECK])
    assert 0.3 < head / shoulder_width < 1.0
    for upper in (np.linalg.norm(body[R_SHO] - body[R_ELB]), np.linalg.norm(body[L_SHO] - body[L_ELB])):
        assert 0.5 < upper / shoulder_width < 1.5
    eye_distance = np.linalg.norm(body[R_EYE] - body[L_EYE])
    assert 0.1 < eye_distance / shoulder_width < 0.5
    for hip in (R_HIP, L_HIP):  # hips, visible or at least predicted, lie below the shoulders
        assert y[hip] > y[NECK] + 0.5 * shoulder_width
    assert not person.face_visible.any()  # BlazePose has no 68-point face


def test_driving_frame_hands_sit_on_their_own_wrists(shared_dir: Path) -> None:
    frames, _ = read_video(shared_dir / "data" / "official_examples" / EXAMPLES[0] / "driving_video.mp4", max_frames=1)
    detector = create_detector("mediapipe")
    try:
        person = detector.detect(frames[0]).people[0]
    finally:
        detector.close()
    assert person.hand_visible.all(), "both hands are in view in frame 0"
    body = person.body * [frames.shape[2], frames.shape[1]]
    hands = person.hands * [frames.shape[2], frames.shape[1]]
    shoulder_width = np.linalg.norm(body[R_SHO] - body[L_SHO])
    for hand, wrist in ((0, L_WRI), (1, R_WRI)):
        own = np.linalg.norm(hands[hand, 0] - body[wrist])
        other = np.linalg.norm(hands[hand, 0] - body[R_WRI if wrist == L_WRI else L_WRI])
        assert own < 0.5 * shoulder_width and own < other


def test_poses_cli_with_the_mediapipe_backend(shared_dir: Path, tmp_path: Path) -> None:
    import json

    from PIL import Image

    from steadydancer_core.pose.cli import main
    from steadydancer_core.pose.keypoints import frames_from_dict

    example = shared_dir / "data" / "official_examples" / EXAMPLES[0]
    out = tmp_path / "poses"
    code = main(["--ref", str(example / "ref_image.png"), "--driving", str(example / "driving_video.mp4"),
                 "--out", str(out), "--backend", "mediapipe", "--frames", "5", "--no-progress", "--no-preview"])
    assert code == 0
    assert sorted(p.name for p in (out / "positive").glob("*.png")) == [f"{i:04d}.png" for i in range(5)]
    assert np.asarray(Image.open(out / "positive" / "0000.png")).shape == (896, 656, 3)  # 864×1184 at 1024*576
    document = json.loads((out / "keypoints.json").read_text())
    assert document["backend"] == "mediapipe"
    reference = frames_from_dict(document["reference"])[0].people[0]
    aligned = frames_from_dict(document["aligned"])
    # the calibration frame's neck lands on the reference neck; every frame keeps one person with hands
    np.testing.assert_allclose(aligned[0].people[0].body[NECK], reference.body[NECK], atol=1e-6)
    assert all(len(frame.people) == 1 and frame.people[0].hand_visible.any() for frame in aligned)


def test_hand_crops_find_the_small_dancers_hands(shared_dir: Path) -> None:
    # Example 2: a small full-body dancer. Every 4th of the 81 frames at 16 fps, each detected alone.
    video = shared_dir / "data" / "official_examples" / EXAMPLES[1] / "driving_video.mp4"
    frames = read_video(video, fps=16, max_frames=81)[0][::4]
    found = {}
    for crops in (False, True):
        with MediaPipeDetector(hand_crops=crops) as detector:
            found[crops] = [detector.detect(frame).people[0] for frame in frames]
    before = sum(int(p.hand_visible.any(axis=1).sum()) for p in found[False])
    after = sum(int(p.hand_visible.any(axis=1).sum()) for p in found[True])
    with_hands = sum(bool(p.hand_visible.any()) for p in found[True])
    assert after >= 2 * before and with_hands >= 0.6 * len(frames), (before, after, with_hands)
    size = np.array([frames.shape[2], frames.shape[1]])
    for plain, cropped in zip(found[False], found[True]):
        for slot, (elbow, wrist) in ((0, (L_ELB, L_WRI)), (1, (R_ELB, R_WRI))):
            if plain.hand_visible[slot].any() or not cropped.hand_visible[slot].any():
                continue
            hand = cropped.hands[slot] * size  # a hand the crops added: at its own wrist, of a hand's size
            forearm = np.linalg.norm((cropped.body[wrist] - cropped.body[elbow]) * size)
            assert np.linalg.norm(hand[0] - cropped.body[wrist] * size) < 0.6 * forearm
            extent = np.linalg.norm(hand.max(axis=0) - hand.min(axis=0))
            assert 0.2 * forearm < extent < 2.0 * forearm


def test_native_log_lines_are_silenced(shared_dir: Path) -> None:
    import subprocess
    import sys

    image = shared_dir / "data" / "official_examples" / EXAMPLES[1] / "ref_image.png"
    code = ("import sys\nfrom steadydancer_core.pose.detect.mediapipe_backend import MediaPipeDetector\n"
            "from steadydancer_core.video import read_image\n"
            f"with MediaPipeDetector() as d:\n    people = d.detect(read_image({str(image)!r})).people\n"
            "print('people', len(people)); print('our stderr line', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and "people 1" in done.stdout
    assert done.stderr.strip() == "our stderr line", done.stderr  # no TFLite/absl/glog line around it


def test_poses_then_animate_on_the_official_example(shared_dir: Path, tmp_path: Path, capsys) -> None:
    # The two commands chained as the README's quick start: animate reads the keypoints.json poses wrote.
    from steadydancer_core.__main__ import main

    example = shared_dir / "data" / "official_examples" / EXAMPLES[1]
    out = tmp_path / "poses"
    assert main(["poses", "--ref", str(example / "ref_image.png"), "--driving", str(example / "driving_video.mp4"),
                 "--out", str(out), "--backend", "mediapipe", "--frames", "5", "--no-progress", "--no-preview"]) == 0
    capsys.readouterr()
    # No weights in this environment: the dry run checks and plans, then names what to download (exit 2).
    code = main(["animate", "--image", str(example / "ref_image.png"), "--poses", str(out / "keypoints.json"),
                 "--prompt", (example / "prompt.txt").read_text(), "--out", str(tmp_path / "v.mp4"),
                 "--device", "cpu", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2
    assert "poses: 5 frames, negative poses: 5 frames" in captured.out
    assert "Model weights are missing" in captured.err and "download --dir models" in captured.err
