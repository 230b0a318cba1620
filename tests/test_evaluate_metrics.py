"""The evaluation metrics that need only numpy/torch/torchmetrics (PSNR, SSIM, pose following, temporal), the
input checks of ``python -m steadydancer_core evaluate`` and its report, and the weight-file handling.

LPIPS/FID/FVD (torchvision, torch-fidelity, cd-fvd) are tested in tests/test_evaluate_networks.py."""
from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steadydancer_core.__main__ import main
from steadydancer_core.evaluate import EvalConfig, FramePolicy, evaluate, pair_inputs, pose_following
from steadydancer_core.evaluate.backbones import FID_INCEPTION, FVD_I3D, BackboneMissing, ensure_backbones, torch_hub_dir
from steadydancer_core.evaluate.frame_metrics import PSNR_CAP, psnr_per_frame, ssim_disco_per_frame, ssim_per_frame
from steadydancer_core.evaluate.temporal import frame_steps, temporal_summary
from steadydancer_core.errors import InputError
from steadydancer_core.pose.detect.protocol import PoseDetector, check_image
from steadydancer_core.pose.keypoints import PersonPose, PoseFrame, save_pose_json
from steadydancer_core.video import write_video

from cli_checks import exit_code, tree_digest

RNG_SEED = 1234


def _frames(count: int = 4, height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth content (not white noise) so SSIM responds to added noise the way it does on photos.
    base = rng.integers(0, 256, (count, height // 8, width // 8, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in base])


def _noisy(frames: np.ndarray, sigma: float, seed: int = RNG_SEED) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, frames.shape)
    return np.clip(np.round(frames + noise), 0, 255).astype(np.uint8)


def _write_folder(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
    return folder


# ------------------------------------------------------------------------------------------------- PSNR / SSIM

def test_identical_frames_give_ssim_one_and_psnr_at_its_cap():
    frames = _frames()
    np.testing.assert_allclose(ssim_per_frame(frames, frames), 1.0, atol=1e-6)
    assert psnr_per_frame(frames, frames).tolist() == [PSNR_CAP] * len(frames)


@pytest.mark.parametrize("sigma", [2.0, 8.0, 25.0])
def test_psnr_of_seeded_gaussian_noise_matches_numpy(sigma):
    reference = _frames()
    generated = _noisy(reference, sigma)
    # Independent computation: 10·log10(255² / MSE) per frame, in float64 numpy.
    mse = ((generated.astype(np.float64) - reference.astype(np.float64)) ** 2).reshape(len(reference), -1).mean(1)
    expected = 10 * np.log10(255.0 ** 2 / mse)
    np.testing.assert_allclose(psnr_per_frame(generated, reference), expected, atol=0.05, rtol=0)
    # and the noise level is what it should be (σ without clipping gives 20·log10(255/σ) roughly)
    assert abs(expected.mean() - 20 * np.log10(255 / sigma)) < 1.0


def test_ssim_falls_as_noise_grows():
    reference = _frames()
    values = [ssim_per_frame(_noisy(reference, sigma), reference).mean() for sigma in (1.0, 5.0, 15.0, 40.0)]
    assert values[0] < 1.0
    assert all(a > b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("ssim", [ssim_per_frame, ssim_disco_per_frame], ids=["torchmetrics", "disco"])
def test_ssim_of_flat_images_is_the_closed_form_luminance_term(ssim):
    # Flat images have no variance, so SSIM reduces to (2ab + C1) / (a² + b² + C1), C1 = (0.01·255)².
    c1 = (0.01 * 255) ** 2
    for a, b in ((100, 100), (100, 120), (30, 200)):
        first = np.full((1, 24, 24, 3), a, np.uint8)
        second = np.full((1, 24, 24, 3), b, np.uint8)
        assert ssim(first, second)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)


def test_disco_ssim_is_one_for_identical_frames_and_falls_with_noise():
    reference = _frames()
    np.testing.assert_allclose(ssim_disco_per_frame(reference, reference), 1.0)
    values = [ssim_disco_per_frame(_noisy(reference, sigma), reference).mean() for sigma in (1.0, 5.0, 15.0, 40.0)]
    assert all(a > b for a, b in zip(values, values[1:])), values


def test_frame_metrics_refuse_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_per_frame(_frames(3), _frames(4))


# ------------------------------------------------------------------------------------------------- temporal

def test_temporal_steps_and_the_start_jump():
    frames = np.zeros((5, 8, 8, 3), np.uint8)
    frames[1:] = 30          # a jump of 30 from frame 0 to 1
    frames[2] += 2           # later steps: 2, 2, 0
    frames[3] += 4
    frames[4] += 4
    np.testing.assert_allclose(frame_steps(frames), [30, 2, 2, 0])
    summary = temporal_summary(frames)
    assert summary["temporal_step_0_1"] == 30
    assert summary["temporal_mean_step"] == pytest.approx(4 / 3)
    assert summary["temporal_start_ratio"] == pytest.approx(30 / (4 / 3))


# ------------------------------------------------------------------------------------------------- pose following

WIDTH, HEIGHT = 200, 400


def _person(pixels: np.ndarray, visible: np.ndarray | None = None) -> PersonPose:
    return PersonPose.create(body=pixels / np.array([WIDTH, HEIGHT]), body_visible=visible)


def _driving_pixels() -> np.ndarray:
    # 18 joints spread in a 100 x 200 pixel box (x 50..150, y 100..300): the scale s is 200 pixels.
    rng = np.random.default_rng(7)
    points = np.column_stack([rng.uniform(50, 150, 18), rng.uniform(100, 300, 18)])
    points[0] = (50, 100)
    points[1] = (150, 300)
    return points


def test_identical_keypoints_give_error_zero_and_pck_one():
    driving = [PoseFrame([_person(_driving_pixels())], WIDTH, HEIGHT)] * 3
    result = pose_following(driving, driving, WIDTH, HEIGHT)
    assert result.error == 0.0
    assert result.pck == {0.05: 1.0, 0.1: 1.0}
    assert result.detected == 1.0 and result.joints == 54


@pytest.mark.parametrize("shift, pck", [((3.0, 4.0), {0.05: 1.0, 0.1: 1.0}), ((9.0, 12.0), {0.05: 0.0, 0.1: 1.0}),
                                        ((30.0, 40.0), {0.05: 0.0, 0.1: 0.0})])
def test_a_known_shift_gives_exactly_the_formula_error(shift, pck):
    points = _driving_pixels()
    driving = [PoseFrame([_person(points)], WIDTH, HEIGHT)]
    generated = [PoseFrame([_person(points + np.array(shift))], WIDTH, HEIGHT)]
    result = pose_following(generated, driving, WIDTH, HEIGHT)
    scale = max(points[:, 0].max() - points[:, 0].min(), points[:, 1].max() - points[:, 1].min())
    assert scale == 200.0
    assert result.error == pytest.approx(np.hypot(*shift) / scale, rel=1e-12)
    assert result.pck == pck


def test_undetected_joints_are_misses_for_pck_and_left_out_of_the_error():
    points = _driving_pixels()
    visible = np.ones(18, bool)
    visible[[4, 7]] = False  # the detector misses both wrists
    driving = [PoseFrame([_person(points)], WIDTH, HEIGHT)]
    generated = [PoseFrame([_person(points + np.array([3.0, 4.0]), visible)], WIDTH, HEIGHT)]
    result = pose_following(generated, driving, WIDTH, HEIGHT)
    assert result.error == pytest.approx(5 / 200)
    assert result.pck[0.05] == pytest.approx(16 / 18)
    assert result.detected == pytest.approx(16 / 18)
    nobody = pose_following([PoseFrame([], WIDTH, HEIGHT)], driving, WIDTH, HEIGHT)
    assert nobody.pck == {0.05: 0.0, 0.1: 0.0} and nobody.detected == 0.0 and np.isnan(nobody.error)


class ScriptedDetector:
    """A PoseDetector that answers a fixed list of frames in order and records what it was shown."""

    name = "scripted"

    def __init__(self, answers: list[PoseFrame]) -> None:
        self.answers = answers
        self.seen: list[tuple[int, ...]] = []

    def detect(self, image: np.ndarray) -> PoseFrame:
        check_image(image)
        self.seen.append(image.shape)
        return self.answers[len(self.seen) - 1]


def test_pose_metric_detects_every_generated_frame_through_the_detector_protocol(tmp_path):
    points = _driving_pixels()
    driving = [PoseFrame([_person(points)], WIDTH, HEIGHT) for _ in range(3)]
    save_pose_json(driving, tmp_path / "keypoints.json")
    frames = _frames(3, HEIGHT, WIDTH)
    _write_folder(tmp_path / "gen", frames)
    _write_folder(tmp_path / "ref", frames)
    shifts = [(0.0, 0.0), (3.0, 4.0), (9.0, 12.0)]
    detector = ScriptedDetector([PoseFrame([_person(points + np.array(s))], WIDTH, HEIGHT) for s in shifts])
    assert isinstance(detector, PoseDetector)
    pairs = pair_inputs(tmp_path / "gen", tmp_path / "ref", keypoints=tmp_path / "keypoints.json")
    report = evaluate(pairs, EvalConfig(metrics=("pose",), progress=False), lambda: detector)
    assert detector.seen == [(HEIGHT, WIDTH, 3)] * 3
    row = report["per_video"][0]
    assert row["pose_error"] == pytest.approx((0 + 18 * 5 / 200 + 18 * 15 / 200) / 54)
    assert row["pose_pck@0.05"] == pytest.approx(2 / 3)
    assert row["pose_pck@0.1"] == 1.0
    assert report["mean"]["pose_error"] == row["pose_error"]


# ------------------------------------------------------------------------------------------------- CLI and report

def test_cli_writes_report_json_and_csv(tmp_path):
    reference = _frames(5)
    for name, sigma in (("clip_a", 0.0), ("clip_b", 10.0)):
        _write_folder(tmp_path / "gen" / name, _noisy(reference, sigma) if sigma else reference)
        _write_folder(tmp_path / "ref" / name, reference)
        Image.fromarray(reference[0]).save(tmp_path / f"{name}.png")
    (tmp_path / "images").mkdir()
    for name in ("clip_a", "clip_b"):
        (tmp_path / f"{name}.png").rename(tmp_path / "images" / f"{name}.png")
    out = tmp_path / "out" / "report.json"
    code = main(["evaluate", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                 "--image", str(tmp_path / "images"), "--metrics", "ssim,ssim_disco,psnr,first_frame,temporal",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) == {"mean", "per_video", "settings"}
    rows = {row["name"]: row for row in report["per_video"]}
    assert rows["clip_a"]["psnr"] == PSNR_CAP and rows["clip_a"]["ssim"] == pytest.approx(1.0)
    assert rows["clip_b"]["psnr"] < 40 and rows["clip_b"]["first_frame_psnr"] < 40
    assert rows["clip_a"]["first_frame_ssim"] == pytest.approx(1.0)
    assert rows["clip_a"]["ssim_disco"] == pytest.approx(1.0) and rows["clip_b"]["ssim_disco"] < 1.0
    # frame metrics are pooled over all frames (equal counts here: the mean of the two clips)
    assert report["mean"]["psnr"] == pytest.approx((rows["clip_a"]["psnr"] + rows["clip_b"]["psnr"]) / 2)
    assert report["settings"]["ssim"]["kernel_size"] == 11 and report["settings"]["psnr"]["cap_db"] == PSNR_CAP
    lines = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert lines[0].startswith("name,") and [line.split(",")[0] for line in lines[1:]] == ["clip_a", "clip_b", "mean"]
    # an existing report is not replaced without --overwrite, and nothing changes
    before = tree_digest(tmp_path / "out")
    again = ["evaluate", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
             "--metrics", "psnr", "--out", str(out), "--no-progress"]
    assert main(again) == 2
    assert tree_digest(tmp_path / "out") == before
    assert main(again + ["--overwrite"]) == 0
    assert json.loads(out.read_text())["settings"]["metrics"] == ["psnr"]


def test_videos_pair_with_frame_folders(tmp_path):
    frames = _frames(6, 32, 48)
    write_video(frames, tmp_path / "gen.mp4", fps=16)
    _write_folder(tmp_path / "ref", frames)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--generated", str(tmp_path / "gen.mp4"), "--reference", str(tmp_path / "ref"),
                 "--metrics", "psnr,ssim", "--out", str(out), "--no-progress"]) == 0
    row = json.loads(out.read_text())["per_video"][0]
    assert row["frames"] == 6 and 25 < row["psnr"] < PSNR_CAP  # H.264 at crf 18: close, not identical


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return ["evaluate", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
            "--out", str(tmp_path / "report.json"), "--no-progress", *extra]


def test_mismatched_frame_count_is_a_clear_error(tmp_path, capsys):
    _write_folder(tmp_path / "gen", _frames(4))
    _write_folder(tmp_path / "ref", _frames(5))
    assert exit_code(main, _cli(tmp_path, "--metrics", "psnr")) == 2
    err = capsys.readouterr().err
    assert "mismatched frame counts: generated has 4 frames, reference has 5" in err and "--frames" in err
    assert not (tmp_path / "report.json").exists()
    # --frames 4 compares the first four of each
    assert exit_code(main, _cli(tmp_path, "--metrics", "psnr", "--frames", "4")) == 0


def test_mismatched_frame_size_is_a_clear_error(tmp_path, capsys):
    _write_folder(tmp_path / "gen", _frames(3, 40, 56))
    _write_folder(tmp_path / "ref", _frames(3, 80, 112))
    assert exit_code(main, _cli(tmp_path, "--metrics", "ssim")) == 2
    err = capsys.readouterr().err
    assert "mismatched frame sizes: generated is 56x40, reference is 112x80" in err and "--size generated" in err
    assert exit_code(main, _cli(tmp_path, "--metrics", "ssim", "--size", "generated")) == 0
    assert json.loads((tmp_path / "report.json").read_text())["per_video"][0]["width"] == 56
    assert exit_code(main, _cli(tmp_path, "--metrics", "ssim", "--size", "28x20", "--overwrite")) == 0
    row = json.loads((tmp_path / "report.json").read_text())["per_video"][0]
    assert (row["width"], row["height"]) == (28, 20)


def test_unpaired_names_and_missing_inputs_are_clear_errors(tmp_path, capsys):
    _write_folder(tmp_path / "gen" / "a", _frames(2))
    _write_folder(tmp_path / "gen" / "b", _frames(2))
    _write_folder(tmp_path / "ref" / "a", _frames(2))
    _write_folder(tmp_path / "ref" / "c", _frames(2))
    assert exit_code(main, _cli(tmp_path, "--metrics", "psnr")) == 2
    assert "no reference for b; no generated clip for c" in capsys.readouterr().err
    with pytest.raises(InputError, match="--metrics pose needs --keypoints"):
        evaluate(pair_inputs(tmp_path / "gen" / "a", tmp_path / "ref" / "a"), EvalConfig(metrics=("pose",)))
    with pytest.raises(InputError, match="first_frame needs --image"):
        evaluate(pair_inputs(tmp_path / "gen" / "a", tmp_path / "ref" / "a"), EvalConfig(metrics=("first_frame",)))
    assert exit_code(main, _cli(tmp_path, "--metrics", "psnr,bogus")) == 2
    assert "unknown metric(s) bogus" in capsys.readouterr().err


def test_keypoints_with_too_few_frames_fail_before_detection(tmp_path):
    _write_folder(tmp_path / "gen", _frames(3, HEIGHT, WIDTH))
    _write_folder(tmp_path / "ref", _frames(3, HEIGHT, WIDTH))
    save_pose_json([PoseFrame([_person(_driving_pixels())], WIDTH, HEIGHT)] * 2, tmp_path / "k.json")
    built = []
    with pytest.raises(InputError, match="holds 2 frames but 3 generated frames"):
        evaluate(pair_inputs(tmp_path / "gen", tmp_path / "ref", keypoints=tmp_path / "k.json"),
                 EvalConfig(metrics=("pose",), progress=False), lambda: built.append(1))
    assert built == []  # the detector is never built for inputs that cannot be evaluated


@pytest.mark.skipif(__import__("importlib").util.find_spec("torchvision") is not None,
                    reason="torchvision is installed here, so LPIPS does not fail for its absence")
def test_network_metrics_without_their_libraries_name_the_requirements_file(tmp_path, capsys):
    _write_folder(tmp_path / "gen", _frames(2))
    _write_folder(tmp_path / "ref", _frames(2))
    assert exit_code(main, _cli(tmp_path, "--metrics", "psnr,lpips")) == 2
    assert "requirements-eval.txt" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- weight files

def test_missing_weights_without_download_list_files_urls_and_folder(tmp_path):
    with pytest.raises(BackboneMissing) as error:
        ensure_backbones([FID_INCEPTION, FVD_I3D], tmp_path, download=False)
    message = str(error.value)
    for text in (FID_INCEPTION.filename, FID_INCEPTION.url, FVD_I3D.filename, FVD_I3D.url, str(tmp_path / "checkpoints")):
        assert text in message


def test_a_failed_download_is_one_clear_error_and_leaves_no_file(tmp_path, monkeypatch):
    calls = []

    def offline(url, dst, progress=True):
        calls.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(BackboneMissing, match="fetching i3d_pretrained_400.pt failed .URLError"):
        ensure_backbones([FVD_I3D], tmp_path, download=True)
    assert calls == [FVD_I3D.url]  # one attempt, no retry
    assert not any((tmp_path / "checkpoints").iterdir())


def test_present_weights_are_used_without_downloading(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / FVD_I3D.filename).write_bytes(b"x")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    assert ensure_backbones([FVD_I3D], tmp_path) == {FVD_I3D.filename: tmp_path / "checkpoints" / FVD_I3D.filename}


def test_torch_hub_dir_is_set_only_inside_the_block(tmp_path):
    before = torch.hub.get_dir()
    with torch_hub_dir(tmp_path):
        assert torch.hub.get_dir() == str(tmp_path)
    assert torch.hub.get_dir() == before
