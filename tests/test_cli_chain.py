"""The two commands chained as the README's quick start runs them: ``poses`` writes keypoints.json, and
``animate --poses keypoints.json`` uses its aligned and negative keypoints, drawn exactly as ``poses``
drew its positive/ and negative/ pictures (tiny random models; keypoints given, so no detector)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pose_cli import _standing_person

from steadydancer_core import cli_animate
from steadydancer_core.__main__ import build_parser, main
from steadydancer_core.pose.keypoints import PoseFrame, save_pose_json
from tiny_models import build_tiny_dit_checkpoint, build_tiny_wan_dir

WIDTH, HEIGHT = 48, 32  # the reference; poses draws at the same size (--size), so pictures compare 1:1


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(root / "ref.png")
    save_pose_json([PoseFrame([_standing_person()], 480, 320)], root / "ref.json")
    save_pose_json([PoseFrame([_standing_person(0.02 * t)], 640, 480) for t in range(9)], root / "driving.json")
    assert main(["poses", "--ref", str(root / "ref.png"), "--ref-keypoints", str(root / "ref.json"),
                 "--keypoints", str(root / "driving.json"), "--size", f"{WIDTH}x{HEIGHT}", "--seed", "4",
                 "--out", str(root / "poses"), "--no-progress", "--no-preview"]) == 0
    return {"root": root, "wan": build_tiny_wan_dir(root / "wan"), "dit": build_tiny_dit_checkpoint(root / "dit.safetensors")}


def _animate_args(chain: dict[str, Path], out: Path, *extra: str) -> list[str]:
    root = chain["root"]
    return ["--image", str(root / "ref.png"), "--poses", str(root / "poses" / "keypoints.json"),
            "--prompt", "a person dances", "--wan-dir", str(chain["wan"]), "--dit", str(chain["dit"]),
            "--out", str(out), "--frames", "5", "--steps", "2", "--device", "cpu", "--no-progress",
            "--max-area", str(WIDTH * HEIGHT), *extra]


def _pictures(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])


def test_animate_uses_the_aligned_and_negative_keypoints_of_the_poses_file(chain, tmp_path, caplog) -> None:
    parser = build_parser("animate")
    args = parser.parse_args(["animate", *_animate_args(chain, tmp_path / "v.mp4")])
    with caplog.at_level(logging.INFO, logger="steadydancer_core.animate"):
        job = cli_animate.prepare(args)
    assert "using its aligned keypoints and its negative keypoints" in caplog.text
    poses_dir = chain["root"] / "poses"
    indices = np.arange(5)
    np.testing.assert_array_equal(job.poses[indices], _pictures(poses_dir / "positive")[:5])
    np.testing.assert_array_equal(job.negative_poses[indices], _pictures(poses_dir / "negative")[:5])
    # A --negative-seed draws new negatives instead of the stored ones.
    args = parser.parse_args(["animate", *_animate_args(chain, tmp_path / "v.mp4", "--negative-seed", "9")])
    assert not np.array_equal(cli_animate.prepare(args).negative_poses[indices], _pictures(poses_dir / "negative")[:5])


def test_chained_commands_write_the_video(chain, tmp_path) -> None:
    assert main(["animate", *_animate_args(chain, tmp_path / "v.mp4")]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0 and (tmp_path / "v_frame0.png").is_file()


def test_shorter_negative_poses_are_an_error_naming_both_counts(chain, tmp_path, capsys) -> None:
    short = tmp_path / "short"
    short.mkdir()
    for i, picture in enumerate(_pictures(chain["root"] / "poses" / "negative")[:3]):
        Image.fromarray(picture).save(short / f"{i}.png")
    args = _animate_args(chain, tmp_path / "v.mp4", "--negative-poses", str(short), "--dry-run")
    args.remove("--frames"), args.remove("5")
    assert main(["animate", *args]) == 2
    assert "--negative-poses has 3 frames but --poses has 9" in capsys.readouterr().err
    # --frames asking for the shorter length is fine.
    assert main(["animate", *args, "--frames", "3"]) == 0


def test_every_problem_is_reported_in_one_message(chain, tmp_path, capsys) -> None:
    root = chain["root"]
    assert main(["animate", "--image", str(root / "missing.png"), "--poses", str(root / "nowhere"),
                 "--negative-poses", str(root / "no_negatives"), "--prompt", "p", "--steps", "0",
                 "--wan-dir", str(root / "no_wan"), "--out", str(tmp_path / "v.mp4"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "problems, nothing was run" in err
    for part in ("--steps must be >= 1", "missing.png", "--negative-poses not found", "--poses not found",
                 "Model weights are missing", "no --dit given", "python -m steadydancer_core download --dir models"):
        assert part in err, part


def test_poses_reports_every_problem_together(tmp_path, capsys) -> None:
    assert main(["poses", "--ref", str(tmp_path / "r.png"), "--driving", str(tmp_path / "d.mp4"),
                 "--frames", "8", "--align-frame", "-1", "--out", str(tmp_path / "o"), "--no-download",
                 "--models-dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    for part in ("--frames 8 breaks the 4n+1 rule", "--align-frame must be >= 0", "--ref: file not found",
                 "--driving: file not found", "DWPose model files missing"):
        assert part in err, part
    assert list(tmp_path.iterdir()) == []  # nothing written, no empty --out folder
