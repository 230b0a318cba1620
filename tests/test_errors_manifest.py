"""``training/build_manifest.py`` and ``training/precompute.py`` lose nothing and print no traceback for
user errors (DESIGN D10, D13): an existing --out needs --overwrite and is replaced only when complete,
keypoint files are reused only when detected with the same backend/fps/frames, a missing mediapipe says
how to install it, and every bad input is one line with exit code 2 before anything is written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_checks import run_script, skip_if_root_can_write_anywhere, tree_digest
from test_pose_cli import models_dir  # noqa: F401  (fixture: tiny DWPose ONNX stand-ins)
from test_training_data import FRAMES, BrightBlobDetector, blob_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

import build_manifest as build_manifest_script  # noqa: E402
import precompute as precompute_script  # noqa: E402

from steadydancer_core.pose.detect.mediapipe_backend import BackendUnavailable, import_mediapipe  # noqa: E402
from steadydancer_core.video import write_video  # noqa: E402
from steadydancer_train.build_manifest_lib import DETECTION_KEY, build_manifest  # noqa: E402
from steadydancer_train.synthetic import MICRO, write_arch_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("manifest_videos")
    write_video(blob_video(FRAMES, 0), folder / "dance_a.mp4")
    write_video(blob_video(FRAMES, 4), folder / "dance_b.mp4")
    (folder / "dance_a.txt").write_text("a person dances")
    (folder / "dance_b.txt").write_text("a person jumps")
    return folder


@pytest.fixture()
def earlier_manifest(videos: Path, models_dir: Path, tmp_path: Path) -> Path:
    """data/metadata.jsonl + data/keypoints/ from a first run (9 frames at 16 fps)."""
    out = tmp_path / "data" / "metadata.jsonl"
    assert run_script(build_manifest_script, _argv(videos, models_dir, out)) == 0
    return out


def _options(videos: Path, models_dir: Path, out: Path) -> dict[str, str]:
    return {"--videos": str(videos), "--out": str(out), "--models_dir": str(models_dir), "--frames": str(FRAMES)}


def _argv(videos: Path, models_dir: Path, out: Path, *extra: str) -> list[str]:
    return [item for pair in _options(videos, models_dir, out).items() for item in pair] + ["--no_download", *extra]


def _fails(capsys: pytest.CaptureFixture, script, argv: list[str], message: str) -> None:
    assert run_script(script, argv) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert "Traceback" not in error and error.startswith("error: "), error


def _frames_in(path: Path) -> int:
    return len(json.loads(path.read_text())["frames"])


def test_an_existing_manifest_is_refused_without_overwrite(earlier_manifest: Path, videos: Path, models_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    before = tree_digest(earlier_manifest.parent)
    _fails(capsys, build_manifest_script, _argv(videos, models_dir, earlier_manifest),
           f"--out {earlier_manifest} already exists; pass --overwrite to replace it")
    assert tree_digest(earlier_manifest.parent) == before


def test_keypoints_are_reused_only_for_the_same_fps_and_frames(earlier_manifest: Path, videos: Path,
                                                              models_dir: Path) -> None:
    keypoints = earlier_manifest.parent / "keypoints" / "dance_a.json"
    assert json.loads(keypoints.read_text())[DETECTION_KEY] == {"backend": "dwpose", "fps": 16.0, "frames": FRAMES}
    stamp = keypoints.stat().st_mtime_ns
    assert run_script(build_manifest_script, _argv(videos, models_dir, earlier_manifest, "--overwrite")) == 0
    assert keypoints.stat().st_mtime_ns == stamp  # same settings: the earlier detection is reused
    assert run_script(build_manifest_script, _argv(videos, models_dir, earlier_manifest, "--overwrite",
                                                   "--frames", "5")) == 0
    assert json.loads(keypoints.read_text())[DETECTION_KEY]["frames"] == 5 and _frames_in(keypoints) == 5
    assert run_script(build_manifest_script, _argv(videos, models_dir, earlier_manifest, "--overwrite",
                                                   "--frames", "5", "--fps", "8")) == 0
    # 9 frames at the video's 16 fps are 0.56 s: at 8 fps that is 5 frames (0, 2, 4, 6, 8 of the source)
    assert json.loads(keypoints.read_text())[DETECTION_KEY]["fps"] == 8.0 and _frames_in(keypoints) == 5


def test_a_keypoints_file_without_its_settings_is_recomputed(videos: Path, tmp_path: Path) -> None:
    keypoints = tmp_path / "keypoints"
    keypoints.mkdir()
    (keypoints / "dance_a.json").write_text(json.dumps({"format": "steadydancer-pose", "version": 1, "frames": []}))
    build_manifest(videos, tmp_path / "metadata.jsonl", BrightBlobDetector(), fps=16, frames=FRAMES, progress=False)
    saved = json.loads((keypoints / "dance_a.json").read_text())
    assert saved[DETECTION_KEY] == {"backend": "bright-blob", "fps": 16.0, "frames": FRAMES}
    assert len(saved["frames"]) == FRAMES and saved["frames"][0]["people"]


class FailsOnSecondVideo(BrightBlobDetector):
    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray):
        self.calls += 1
        if self.calls > FRAMES:
            raise RuntimeError("detector crashed")
        return super().detect(image)


def test_a_failing_run_leaves_the_earlier_manifest_as_it_was(videos: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "metadata.jsonl"
    manifest.write_text('{"video": "old.mp4", "prompt": "the earlier manifest", "keypoints": "old.json"}\n')
    before = manifest.read_bytes()
    with pytest.raises(RuntimeError, match="detector crashed"):
        build_manifest(videos, manifest, FailsOnSecondVideo(), fps=16, frames=FRAMES, progress=False)
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keypoints", "metadata.jsonl"]  # no partial file left


def _mediapipe_installed() -> bool:
    try:
        import_mediapipe()
    except BackendUnavailable:
        return False
    return True


@pytest.mark.skipif(_mediapipe_installed(), reason="mediapipe is installed in this environment")
def test_mediapipe_backend_without_mediapipe_says_how_to_install_it(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "metadata.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "training" / "build_manifest.py"), "--videos", str(videos),
                           "--out", str(out), "--backend", "mediapipe"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the 'mediapipe' pose backend needs mediapipe==0.10.21")
    assert "pip install -r requirements-mediapipe.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "keypoints").exists()


def _path(value: str, root: Path) -> str:
    """A row's value with its placeholder made: FILE (a file), NO_VIDEOS (a folder without videos), MISSING."""
    head, _, rest = value.partition("/")
    if head == "FILE":
        (root / "a_file").write_text("x")
    elif head == "NO_VIDEOS":
        (root / "no_videos").mkdir(exist_ok=True)
        (root / "no_videos" / "notes.txt").write_text("no video here")
    elif head != "MISSING":
        return value
    return str(root / {"FILE": "a_file", "NO_VIDEOS": "no_videos", "MISSING": "missing"}[head] / rest)


# One row per bad input: options replacing those of a good run (FILE, NO_VIDEOS, MISSING: paths made by the
# test), the expected message. Each must exit 2 with one line and write no manifest and no keypoints.
BAD_INPUTS = [
    ("videos folder missing", {"--videos": "MISSING"}, "videos folder not found"),
    ("videos folder without videos", {"--videos": "NO_VIDEOS"}, "no videos (.mp4, .mov, .webm, .mkv, .avi) under"),
    ("out is a folder", {"--out": "NO_VIDEOS"}, "exists and is a folder; expected a file"),
    ("out under a file", {"--out": "FILE/metadata.jsonl"}, "is a file, so no folder can be created"),
    ("keypoints_dir is a file", {"--keypoints_dir": "FILE"}, "--keypoints_dir"),
    ("fps zero", {"--fps": "0"}, "--fps must be positive"),
    ("no frames", {"--frames": "0"}, "--frames must be at least 1"),
    ("missing DWPose files", {"--models_dir": "MISSING"}, "DWPose model files missing"),
]


@pytest.mark.parametrize("changes, message", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(changes: dict[str, str], message: str, videos: Path,
                                                  models_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    options = {**_options(videos, models_dir, tmp_path / "data" / "metadata.jsonl"),
               **{option: _path(value, tmp_path) for option, value in changes.items()}}
    _fails(capsys, build_manifest_script, [item for pair in options.items() for item in pair] + ["--no_download"],
           message)
    assert not (tmp_path / "data").exists()


def test_out_folder_without_write_permission(videos: Path, models_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    skip_if_root_can_write_anywhere()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(capsys, build_manifest_script, _argv(videos, models_dir, locked / "metadata.jsonl"),
               "no permission to write in")
    finally:
        locked.chmod(0o700)


# ---- precompute.py ------------------------------------------------------------------------------

@pytest.fixture()
def precompute_config(tmp_path: Path) -> Path:
    manifest = tmp_path / "metadata.jsonl"
    manifest.write_text('{"video": "clip.mp4", "prompt": "p", "keypoints": "clip.json"}\n')
    cfg = {"stage": 1, "data": {"manifest": str(manifest), "cache_dir": str(tmp_path / "cache"),
                                "encoders_dir": str(tmp_path / "no_encoders"), "num_frames": FRAMES,
                                "min_frames": FRAMES},
           "model": {"arch": str(write_arch_json(tmp_path / "arch.json", MICRO))}, "compute": {"device": "cpu"}}
    path = tmp_path / "precompute.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


PRECOMPUTE_BAD_INPUTS = [
    ("empty cache_dir", ["data.cache_dir="], "config data.cache_dir is empty"),
    ("empty manifest", ["data.manifest="], "config data.manifest is empty"),
    ("missing manifest", ["data.manifest=absent.jsonl"], "manifest not found: absent.jsonl"),
    ("empty encoders_dir", ["data.encoders_dir="], "config data.encoders_dir is empty"),
    ("encoders_dir not a Wan folder", [], "data.encoders_dir is not a Diffusers-format Wan2.1-I2V folder"),
    ("cache_dir is a file", ["data.cache_dir=precompute.yaml"], "data.cache_dir precompute.yaml exists and is a file"),
    ("unknown key", ["data.cache=x"], "unknown config keys in data: ['cache']"),
    # Where a CUDA device is present, compute.device=cuda is valid.
    *([] if torch.cuda.is_available() else
      [("cuda without a device", ["compute.device=cuda"], "compute.device is 'cuda' but no CUDA device")]),
]


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
@pytest.mark.parametrize("overrides, message", [row[1:] for row in PRECOMPUTE_BAD_INPUTS],
                         ids=[row[0] for row in PRECOMPUTE_BAD_INPUTS])
def test_precompute_bad_input_is_one_line(overrides: list[str], message: str, dry_run: list[str],
                                          precompute_config: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(precompute_config.parent)  # relative paths in the rows are inside the test's folder
    argv = ["--config", str(precompute_config), *dry_run] + [item for override in overrides
                                                             for item in ("--set", override)]
    before = tree_digest(precompute_config.parent)
    _fails(capsys, precompute_script, argv, message)
    assert tree_digest(precompute_config.parent) == before  # not even the cache folder was created


def test_dry_runs_check_and_write_nothing(videos: Path, models_dir: Path, precompute_config: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    from tiny_models import build_tiny_wan_dir

    out = tmp_path / "data" / "metadata.jsonl"
    assert run_script(build_manifest_script, _argv(videos, models_dir, out, "--dry_run")) == 0
    assert "2 videos in" in capsys.readouterr().out and not (tmp_path / "data").exists()
    wan = build_tiny_wan_dir(tmp_path / "wan")
    before = tree_digest(precompute_config.parent)
    assert run_script(precompute_script, ["--config", str(precompute_config), "--dry-run",
                                          "--set", f"data.encoders_dir={wan}"]) == 0
    assert "1 clips to encode" in capsys.readouterr().out
    assert tree_digest(precompute_config.parent) == before
