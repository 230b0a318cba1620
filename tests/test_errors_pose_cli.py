"""``poses`` loses nothing and prints no traceback (DESIGN D10, D13): every bad input is one ``error:`` line
with exit code 2 before anything is written, and a failed ``--overwrite`` run leaves the earlier outputs
byte for byte as they were."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from cli_checks import exit_code, skip_if_root_can_write_anywhere, tree_digest
from PIL import Image
from test_pose_cli import MAX_AREA, _standing_person, inputs, models_dir  # noqa: F401  (fixtures)

from steadydancer_core.pose.cli import main
from steadydancer_core.pose.detect.models import DWPOSE_REPO
from steadydancer_core.pose.keypoints import PoseFrame, save_pose_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "text.mp4").write_text("this is a text file, not a video\n")
    (folder / "text.png").write_text("not an image either\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "bad.json").write_text("{not json")
    (folder / "a_file").write_text("a file where a folder should be")
    with av.open(str(folder / "no_frames.mp4"), "w") as container:  # a valid container without one frame
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    save_pose_json([PoseFrame([], 64, 64)], folder / "nobody.json")
    save_pose_json([PoseFrame([_standing_person()], 64, 64)] * 5, folder / "five.json")
    save_pose_json([PoseFrame([_standing_person(0.01 * t)], 64, 64) for t in range(5)], folder / "moves.json")
    return folder


@pytest.fixture()
def earlier_run(tmp_path: Path, inputs: dict[str, Path], models_dir: Path) -> Path:
    """A finished run of 9 frames in ``out/`` plus the user's own files beside and inside it."""
    out = tmp_path / "out"
    assert main(["--ref", str(inputs["ref"]), "--driving", str(inputs["driving"]), "--out", str(out),
                 "--models-dir", str(models_dir), "--no-download", "--max-area", str(MAX_AREA), "--no-progress"]) == 0
    (out / "notes.txt").write_text("my notes")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(out / "my_reference_crop.png")
    return out


def _detect_options(inputs: dict[str, Path], models_dir: Path, out: Path) -> dict[str, str]:
    return {"--ref": str(inputs["ref"]), "--driving": str(inputs["driving"]), "--out": str(out),
            "--models-dir": str(models_dir), "--max-area": str(MAX_AREA)}


def _argv(options: dict[str, str], *flags: str) -> list[str]:
    return [item for pair in options.items() for item in pair] + ["--no-download", "--no-progress", *flags]


def _detecting(inputs: dict[str, Path], models_dir: Path, out: Path, *flags: str) -> list[str]:
    return _argv(_detect_options(inputs, models_dir, out), *flags)


def _fails(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert exit_code(main, argv) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert "Traceback" not in error


@pytest.mark.parametrize("failure, message", [
    ("corrupt_driving", "cannot read"),
    ("missing_dwpose_files", DWPOSE_REPO),
    ("nobody_in_reference", "no person found in the reference"),
])
def test_failed_overwrite_leaves_the_earlier_outputs_byte_identical(
        failure: str, message: str, earlier_run: Path, inputs: dict[str, Path], models_dir: Path,
        bad_inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_digest(earlier_run)
    argv = _detecting(inputs, models_dir, earlier_run, "--overwrite")
    if failure == "corrupt_driving":
        argv[argv.index("--driving") + 1] = str(bad_inputs / "text.mp4")
    elif failure == "missing_dwpose_files":
        argv[argv.index("--models-dir") + 1] = str(tmp_path / "no_models")
    else:
        argv += ["--ref-keypoints", str(bad_inputs / "nobody.json")]
    _fails(capsys, argv, message)
    assert tree_digest(earlier_run) == before  # nothing replaced, nothing deleted, no partial folder left


def test_earlier_outputs_are_refused_without_overwrite(earlier_run: Path, inputs: dict[str, Path], models_dir: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    before = tree_digest(earlier_run)
    _fails(capsys, _detecting(inputs, models_dir, earlier_run),
           "already holds positive, negative, keypoints.json, preview.mp4 from an earlier run; pass --overwrite")
    assert tree_digest(earlier_run) == before


def test_overwrite_replaces_only_this_commands_outputs(earlier_run: Path, inputs: dict[str, Path],
                                                      bad_inputs: Path) -> None:
    user_files = {name: digest for name, digest in tree_digest(earlier_run).items()
                  if name in ("notes.txt", "my_reference_crop.png")}
    keypoints = str(bad_inputs / "moves.json")
    assert main(["--ref", str(inputs["ref"]), "--ref-keypoints", keypoints, "--keypoints", keypoints,
                 "--size", "64x96", "--out", str(earlier_run), "--no-preview", "--no-progress", "--overwrite"]) == 0
    after = tree_digest(earlier_run)
    assert {name: after[name] for name in user_files} == user_files  # the user's files, byte for byte
    # 5 new frames replace the 9 earlier ones (no stale 0005..0008), and the earlier preview, which no
    # longer matches the poses, is gone with --no-preview.
    assert sorted(p.name for p in (earlier_run / "positive").iterdir()) == [f"{i:04d}.png" for i in range(5)]
    assert sorted(p.name for p in (earlier_run / "negative").iterdir()) == [f"{i:04d}.png" for i in range(5)]
    assert Image.open(earlier_run / "positive" / "0000.png").size == (64, 96)
    assert sorted(p.name for p in earlier_run.iterdir()) == ["keypoints.json", "my_reference_crop.png", "negative",
                                                             "notes.txt", "positive"]


# One row per bad input: the options that differ from a good detecting run ("@name": a file in
# ``bad_inputs``, CAPITALS: a path made by the test, None: option removed), the expected message. Every
# row must exit 2 with one line and write nothing.
BAD_INPUTS = [
    ("missing reference", {"--ref": "MISSING"}, "--ref: file not found"),
    ("zero-byte reference", {"--ref": "@empty.png"}, "cannot read"),
    ("text file as reference", {"--ref": "@text.png"}, "cannot read"),
    ("zero-byte video", {"--driving": "EMPTY_VIDEO"}, "empty (0 bytes)"),
    ("text file named .mp4", {"--driving": "@text.mp4"}, "cannot read"),
    ("video with no frames", {"--driving": "@no_frames.mp4"}, "no video stream"),
    ("reference with no person", {"--ref-keypoints": "@nobody.json"}, "no person found in the reference"),
    ("corrupt keypoints", {"--keypoints": "@bad.json"}, "not a pose JSON file"),
    ("keypoints for fewer frames", {"--keypoints": "@five.json"}, "mismatched frame counts"),
    ("frame count not 4n+1", {"--frames": "80"}, "breaks the 4n+1 rule"),
    ("size not a multiple of 16", {"--size": "100x100", "--max-area": None}, "multiples of 16"),
    ("pixel budget too small", {"--max-area": "100"}, "--max-area must be at least 256"),
    ("align frame beyond the video", {"--align-frame": "50"}, "outside the 9 driving frames"),
    ("missing DWPose files", {"--models-dir": "NO_MODELS"}, "DWPose model files missing"),
    ("output path is a file", {"--out": "@a_file"}, "exists and is a file"),
    ("output under a file", {"--out": "@a_file/poses"}, "is a file, so no folder can be created"),
]


@pytest.mark.parametrize("changes, message", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(changes: dict[str, str | None], message: str,
                                                  inputs: dict[str, Path], models_dir: Path, bad_inputs: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    placeholders = {"MISSING": tmp_path / "missing.png", "EMPTY_VIDEO": inputs["empty"],
                    "NO_MODELS": tmp_path / "no_models"}
    options = _detect_options(inputs, models_dir, tmp_path / "out")
    for option, value in changes.items():
        if value is None:
            del options[option]  # e.g. --size and --max-area exclude each other
        else:
            options[option] = str(bad_inputs / value[1:] if value.startswith("@") else placeholders.get(value, value))
    before = tree_digest(bad_inputs)
    _fails(capsys, _argv(options), message)
    assert not (tmp_path / "out").exists()
    assert tree_digest(bad_inputs) == before  # an output path that is a file is not touched either


def test_output_folder_without_write_permission(inputs: dict[str, Path], models_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    skip_if_root_can_write_anywhere()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(capsys, _detecting(inputs, models_dir, locked / "out"), "no permission to write in")
    finally:
        locked.chmod(0o700)


def test_the_real_command_prints_one_line_and_keeps_the_earlier_run(earlier_run: Path, inputs: dict[str, Path],
                                                                    models_dir: Path, bad_inputs: Path) -> None:
    before = tree_digest(earlier_run)
    argv = _detecting(inputs, models_dir, earlier_run, "--overwrite")
    argv[argv.index("--driving") + 1] = str(bad_inputs / "text.mp4")
    proc = subprocess.run([sys.executable, "-m", "steadydancer_core", "poses", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read {bad_inputs / 'text.mp4'} as a video"), lines
    assert tree_digest(earlier_run) == before
