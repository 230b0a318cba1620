"""The ``poses`` CLI end to end: synthetic reference image and driving video, tiny ONNX DWPose stand-ins
that always "see" one standing figure, and the keypoints-file path; plus its input errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pose_detect_models import build_dwpose, build_yolox, yolox_raw_output

from steadydancer_core.pose.cli import generation_size, main
from steadydancer_core.pose.detect.models import DETECTOR_FILE, DWPOSE_REPO, POSE_FILE
from steadydancer_core.pose.keypoints import PersonPose, PoseFrame, frames_from_dict, save_pose_json
from steadydancer_core.video import read_video, write_video

# A standing figure facing the camera in the 288×384 DWPose crop (COCO-WholeBody body order).
FIGURE_BODY = np.array([
    (144, 60), (154, 50), (134, 50), (164, 55), (124, 55),  # nose, L eye, R eye, L ear, R ear
    (184, 110), (104, 110), (200, 170), (88, 170), (205, 225), (83, 225),  # shoulders, elbows, wrists (L, R)
    (170, 220), (118, 220), (172, 290), (116, 290), (174, 350), (114, 350),  # hips, knees, ankles (L, R)
], np.float64)
PERSON_BOX_640 = (150, 40, 330, 440)  # inside the letterboxed content of both test inputs
REF_WH = (256, 384)
VIDEO_WH = (320, 240)
MAX_AREA = 256 * 256


def _figure_simcc() -> tuple[np.ndarray, np.ndarray]:
    points = np.zeros((133, 2))
    points[:17] = FIGURE_BODY
    points[17:23] = np.repeat(FIGURE_BODY[[15, 16]], 3, axis=0) + [0, 10]  # feet under the ankles
    points[23:91] = FIGURE_BODY[0] + np.stack([np.linspace(-12, 12, 68), np.linspace(-8, 8, 68)], -1)  # face
    fan = np.stack([np.linspace(-8, 8, 21), np.linspace(2, 22, 21)], -1)
    points[91:112] = FIGURE_BODY[9] + fan  # left hand at the left wrist
    points[112:133] = FIGURE_BODY[10] + fan  # right hand at the right wrist
    bins = np.round(points * 2).astype(int)
    simcc_x = np.full((133, 576), -0.5, np.float32)
    simcc_y = np.full((133, 768), -0.5, np.float32)
    simcc_x[np.arange(133), bins[:, 0]] = 0.9
    simcc_y[np.arange(133), bins[:, 1]] = 0.9
    return simcc_x, simcc_y


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_models")
    build_yolox(folder / DETECTOR_FILE, yolox_raw_output([PERSON_BOX_640], [0.9]))
    build_dwpose(folder / POSE_FILE, *_figure_simcc())
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli_inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (REF_WH[1], REF_WH[0], 3), dtype=np.uint8)).save(folder / "ref.png")
    # 20 frames at 30 fps = 0.67 s -> 11 frames at 16 fps -> 9 (4n+1)
    clip = rng.integers(0, 255, (20, VIDEO_WH[1], VIDEO_WH[0], 3), dtype=np.uint8)
    write_video(clip, folder / "driving.mp4", fps=30)
    (folder / "empty.mp4").write_bytes(b"")
    return {"ref": folder / "ref.png", "driving": folder / "driving.mp4", "empty": folder / "empty.mp4"}


def _standing_person(shift: float = 0.0) -> PersonPose:
    body = np.array([(0.5, 0.2), (0.5, 0.3), (0.4, 0.3), (0.37, 0.42), (0.36, 0.52), (0.6, 0.3), (0.63, 0.42),
                     (0.64, 0.52), (0.44, 0.55), (0.44, 0.7), (0.44, 0.85), (0.56, 0.55), (0.56, 0.7), (0.56, 0.85),
                     (0.48, 0.18), (0.52, 0.18), (0.46, 0.19), (0.54, 0.19)]) + [shift, 0]
    return PersonPose.create(body=body)


def test_generation_size_official_rule() -> None:
    # reference/pose_pipeline.md §2.2: 864×1184 reference at 1024*576 -> 656×896
    assert generation_size((1184, 864), 1024 * 576) == (656, 896)
    assert generation_size((REF_WH[1], REF_WH[0]), MAX_AREA) == (208, 304)


def test_detect_align_render_end_to_end(models_dir: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "poses"
    code = main(["--ref", str(inputs["ref"]), "--driving", str(inputs["driving"]), "--out", str(out),
                 "--models-dir", str(models_dir), "--no-download", "--max-area", str(MAX_AREA), "--seed", "3",
                 "--no-progress"])
    assert code == 0
    positives = sorted((out / "positive").glob("*.png"))
    negatives = sorted((out / "negative").glob("*.png"))
    assert [p.name for p in positives] == [f"{i:04d}.png" for i in range(9)]
    assert [p.name for p in negatives] == [p.name for p in positives]
    first_positive = np.asarray(Image.open(positives[0]))
    assert first_positive.shape == (304, 208, 3)
    assert (first_positive > 0).any(axis=-1).mean() > 0.01  # a skeleton was drawn
    differences = [not np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(n))) for p, n in zip(positives, negatives)]
    assert all(differences)  # every frame's negative is perturbed

    document = json.loads((out / "keypoints.json").read_text())
    assert document["size"] == {"width": 208, "height": 304} and document["seed"] == 3
    assert document["video"]["frames"] == 9 and document["video"]["source_indices"][:4] == [0, 2, 4, 6]
    reference = frames_from_dict(document["reference"])[0]
    driving = frames_from_dict(document["driving"])
    aligned = frames_from_dict(document["aligned"])
    assert len(driving) == len(aligned) == len(frames_from_dict(document["negative"])) == 9
    assert (reference.width, reference.height) == REF_WH and (driving[0].width, driving[0].height) == VIDEO_WH
    # the figure's right shoulder is on the image's left, its left hand at its left wrist
    person = reference.people[0]
    assert person.body[2, 0] < person.body[1, 0] < person.body[5, 0]
    assert np.linalg.norm(person.hands[0, 0] - person.body[7]) < 0.05
    # alignment puts the calibration frame's neck on the reference neck
    np.testing.assert_allclose(aligned[0].people[0].body[1], person.body[1], atol=1e-6)

    preview, _ = read_video(out / "preview.mp4", fps=None, frame_count_rule="any")
    assert preview.shape[:2] == (9, 304)
    # reference | positive | negative | driving, each panel at the output height
    panels_width = round(256 * 304 / 384) + 208 + 208 + round(320 * 304 / 240)
    assert preview.shape[2] == panels_width + panels_width % 2  # padded to an even width for yuv420p


def test_keypoint_files_without_detection_and_seeded_negatives(tmp_path: Path, inputs: dict[str, Path]) -> None:
    save_pose_json([PoseFrame([_standing_person()], 512, 768)], tmp_path / "ref.json")
    save_pose_json([PoseFrame([_standing_person(0.01 * t)], 640, 480) for t in range(7)], tmp_path / "driving.json")
    common = ["--ref", str(inputs["ref"]), "--ref-keypoints", str(tmp_path / "ref.json"),
              "--keypoints", str(tmp_path / "driving.json"), "--size", "128x192", "--no-progress", "--seed", "5"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--out", str(tmp_path / "b")]) == 0
    assert main(common + ["--out", str(tmp_path / "c"), "--seed", "6"]) == 0
    names = [p.name for p in sorted((tmp_path / "a" / "negative").glob("*.png"))]
    assert names == [f"{i:04d}.png" for i in range(5)]  # 7 keypoint frames -> 5 (4n+1)

    def negative(run: str, name: str) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / run / "negative" / name))

    assert all(np.array_equal(negative("a", n), negative("b", n)) for n in names)
    assert not all(np.array_equal(negative("a", n), negative("c", n)) for n in names)
    preview, _ = read_video(tmp_path / "a" / "preview.mp4", fps=None, frame_count_rule="any")
    assert preview.shape[1:3] == (192, 128 + 128 + 128)  # no driving video: three panels
    assert json.loads((tmp_path / "a" / "keypoints.json").read_text())["backend"] == "keypoints"


def _run_expecting_error(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(argv + ["--no-progress"]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert "Traceback" not in error


def test_input_errors_are_one_clear_message(tmp_path: Path, inputs: dict[str, Path], models_dir: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    ref, driving = str(inputs["ref"]), str(inputs["driving"])
    models = ["--models-dir", str(models_dir), "--no-download"]
    _run_expecting_error(capsys, ["--ref", ref, "--driving", str(inputs["empty"]), "--out", str(tmp_path / "o1")] + models,
                         "empty")
    _run_expecting_error(capsys, ["--ref", driving, "--driving", driving, "--out", str(tmp_path / "o2")] + models,
                         "cannot read")
    _run_expecting_error(capsys, ["--ref", ref, "--driving", driving, "--out", str(tmp_path / "o3"), "--frames", "80"],
                         "4n+1")
    _run_expecting_error(capsys, ["--ref", ref, "--out", str(tmp_path / "o4")], "--driving VIDEO")
    _run_expecting_error(capsys, ["--ref", ref, "--driving", driving, "--out", str(tmp_path / "o5"),
                                  "--models-dir", str(tmp_path / "no_models"), "--no-download"], DWPOSE_REPO)

    nobody = tmp_path / "nobody.json"
    save_pose_json([PoseFrame([], 64, 64)], nobody)
    _run_expecting_error(capsys, ["--ref", ref, "--driving", driving, "--ref-keypoints", str(nobody),
                                  "--out", str(tmp_path / "o6")] + models, "no person found in the reference")

    five = tmp_path / "five.json"
    save_pose_json([PoseFrame([_standing_person()], 64, 64)] * 5, five)
    _run_expecting_error(capsys, ["--ref", ref, "--driving", driving, "--keypoints", str(five),
                                  "--out", str(tmp_path / "o7")] + models, "mismatched frame counts")


def test_existing_outputs_are_kept_without_overwrite(tmp_path: Path, inputs: dict[str, Path],
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    save_pose_json([PoseFrame([_standing_person()], 64, 64)], tmp_path / "one.json")
    argv = ["--ref", str(inputs["ref"]), "--ref-keypoints", str(tmp_path / "one.json"),
            "--keypoints", str(tmp_path / "one.json"), "--size", "64x96", "--out", str(out), "--no-progress"]
    assert main(argv) == 0  # the user's own files are not in the way
    assert sorted(p.name for p in out.iterdir()) == ["keypoints.json", "negative", "notes.txt", "positive", "preview.mp4"]
    _run_expecting_error(capsys, argv, "already holds positive, negative, keypoints.json, preview.mp4")
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"  # only this command's own outputs are replaced
    assert (out / "positive" / "0000.png").is_file()
