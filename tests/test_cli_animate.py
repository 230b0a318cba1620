"""``python -m steadydancer_core.cli_animate`` end to end on tiny random models, and its input checks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from steadydancer_core import cli_animate, encoders, pipeline
from steadydancer_core.model import checkpoint
from steadydancer_core.pose.keypoints import PersonPose, PoseFrame, save_pose_json
from tiny_models import build_tiny_dit_checkpoint, build_tiny_wan_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
# Reference 48x32 (WxH) with max-area 48*32 keeps its size under the official rule (latent 4x6).
WIDTH, HEIGHT, AREA = 48, 32, 48 * 32


def _pose_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    x, y = rng.integers(4, width - 12), rng.integers(4, height - 12)
    image[y:y + 8, x:x + 8] = rng.integers(64, 255, 3)
    return image


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("animate")
    rng = np.random.default_rng(0)
    # Smooth colours (a gradient with one block) survive the mp4's 4:2:0 chroma subsampling.
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    reference = np.stack([xx * 255 // WIDTH, yy * 255 // HEIGHT, np.full_like(xx, 96)], -1).astype(np.uint8)
    reference[8:24, 16:32] = (200, 40, 40)
    Image.fromarray(reference).save(root / "ref.png")
    for name, count in (("poses", 9), ("negative", 9)):
        folder = root / name
        folder.mkdir()
        for i in range(count):
            # Pose pictures at another size than the reference: the pipeline resizes them (official).
            Image.fromarray(_pose_image(rng, 40, 24)).save(folder / f"{i}.png")
    return {
        "root": root,
        "reference": reference,
        "wan": build_tiny_wan_dir(root / "wan"),
        "dit": build_tiny_dit_checkpoint(root / "dit.safetensors"),
    }


def _args(assets, out: Path, *extra: str, negative: bool = True) -> list[str]:
    root = assets["root"]
    args = ["--image", str(root / "ref.png"), "--poses", str(root / "poses"), "--prompt", "a person dances",
            "--wan-dir", str(assets["wan"]), "--dit", str(assets["dit"]), "--out", str(out),
            "--frames", "5", "--steps", "4", "--seed", "7", "--device", "cpu",
            "--no-progress"]
    if negative:
        args += ["--negative-poses", str(root / "negative")]
    if "--size" not in extra:
        args += ["--max-area", str(AREA)]
    return args + list(extra)


def _read_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _forbid_loading(monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("weights were loaded")

    for cls in (encoders.WanVAE, encoders.T5TextEncoder, encoders.CLIPVisionEncoder):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr(checkpoint, "load_dit", refuse)
    monkeypatch.setattr(pipeline.SteadyDancerPipeline, "sample", refuse)


def test_cli_writes_mp4_and_frame0_png(assets, tmp_path):
    out = tmp_path / "clip.mp4"
    result = subprocess.run([sys.executable, "-m", "steadydancer_core.cli_animate", *_args(assets, out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    frames = _read_mp4(out)
    assert frames.shape == (5, HEIGHT, WIDTH, 3)
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == 16
    png = np.asarray(Image.open(tmp_path / "clip_frame0.png"))
    # The reference already has the output size, so frame 0 is the reference itself, bit for bit.
    np.testing.assert_array_equal(png, assets["reference"])
    # The mp4 is lossy (yuv420p, crf 18); its first frame is still close to the reference.
    assert np.abs(frames[0].astype(int) - assets["reference"].astype(int)).mean() < 8


def test_animate_subcommand_is_wired():
    result = subprocess.run([sys.executable, "-m", "steadydancer_core", "animate", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--negative-poses" in result.stdout and "--dry-run" in result.stdout


def test_same_seed_same_video_other_seed_differs(assets, tmp_path):
    outputs = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        out = tmp_path / f"{name}.mp4"
        assert cli_animate.main(_args(assets, out, "--seed", seed, "--steps", "2", "--decoded-first-frame")) == 0
        outputs[name] = _read_mp4(out)
    np.testing.assert_array_equal(outputs["a"], outputs["b"])
    assert not np.array_equal(outputs["a"], outputs["c"])


def test_dry_run_prints_plan_and_loads_nothing(assets, tmp_path, monkeypatch, capsys):
    _forbid_loading(monkeypatch)
    out = tmp_path / "dry.mp4"
    assert cli_animate.main(_args(assets, out, "--dry-run", "--steps", "40", "--frames", "9")) == 0
    printed = capsys.readouterr().out
    assert "9 frames at 48x32" in printed
    assert "latent: [16, 3, 4, 6]" in printed  # 1 + (9-1)//4 latent frames, 32/8 x 48/8
    # Official window (0.1, 0.4) at 40 steps: steps 5..15 (model_spec §4) -> 29*2 + 11*3 evaluations.
    assert "11 steps (5..15)" in printed
    assert "DiT evaluations: 91" in printed
    assert "GiB" in printed and "DiT" in printed
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (("--frames", "six"), "frame count or 'all'"),
    (("--frames", "0"), "positive frame count"),
    (("--frames", "13"), "only 9"),
    (("--segment-frames", "8"), "nearest valid: 9"),
    (("--frames", "9", "--segment-frames", "5", "--carry-frames", "5"), "carry_frames must be between 1 and"),
    (("--device", "gpu"), "'gpu' is not a device; expected cpu, cuda or cuda:N"),
    pytest.param(("--device", "cuda"), "CUDA is not available", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="this machine has CUDA")),
    (("--size", "50x32"), "multiples of 16"),
    (("--pose-window", "0.5", "0.2"), "pose-window"),
    (("--steps", "0"), "steps"),
])
def test_bad_arguments_fail_before_loading(assets, tmp_path, monkeypatch, capsys, extra, message):
    _forbid_loading(monkeypatch)
    assert cli_animate.main(_args(assets, tmp_path / "x.mp4", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_unreadable_image_and_missing_poses(assets, tmp_path, monkeypatch, capsys):
    _forbid_loading(monkeypatch)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    args = _args(assets, tmp_path / "x.mp4")
    args[args.index("--image") + 1] = str(broken)
    assert cli_animate.main(args) == 2
    assert "cannot read" in capsys.readouterr().err
    args = _args(assets, tmp_path / "x.mp4")
    args[args.index("--poses") + 1] = str(tmp_path / "nowhere")
    assert cli_animate.main(args) == 2
    assert "not found" in capsys.readouterr().err


def test_existing_output_needs_overwrite(assets, tmp_path, monkeypatch, capsys):
    _forbid_loading(monkeypatch)
    out = tmp_path / "taken.mp4"
    out.write_bytes(b"keep me")
    assert cli_animate.main(_args(assets, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    # With --overwrite the checks pass (dry run: nothing else happens).
    assert cli_animate.main(_args(assets, out, "--overwrite", "--dry-run")) == 0


def test_missing_weights_give_one_message_with_repos(assets, tmp_path, monkeypatch, capsys):
    _forbid_loading(monkeypatch)
    args = _args(assets, tmp_path / "x.mp4")
    args[args.index("--wan-dir") + 1] = str(tmp_path / "no_wan")
    args[args.index("--dit") + 1] = str(tmp_path / "no_dit.safetensors")
    assert cli_animate.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("Model weights are missing") == 1
    for needed in ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "MCG-NJU/SteadyDancer-14B", "no_dit.safetensors"):
        assert needed in err


def test_wrong_dit_file_is_rejected_before_loading(assets, tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file
    import torch

    _forbid_loading(monkeypatch)
    plain = tmp_path / "plain_wan.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(4, 36, 1, 2, 2)}, str(plain))
    args = _args(assets, tmp_path / "x.mp4")
    args[args.index("--dit") + 1] = str(plain)
    assert cli_animate.main(args) == 2
    assert "--dit" in capsys.readouterr().err


class _CountingDiT(torch_nn_module := __import__("torch").nn.Module):
    """Wraps the DiT and records how many samples each call evaluates."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit
        self.calls: list[int] = []

    def forward(self, x, *args, **kwargs):
        self.calls.append(x.shape[0])
        return self.dit(x, *args, **kwargs)


def _count_evaluations(monkeypatch, assets, tmp_path, *extra: str, negative: bool = True) -> list[int]:
    wrappers = []
    original = pipeline.SteadyDancerPipeline.load_dit

    def counting_load(self):
        wrappers.append(_CountingDiT(original(self)))
        return wrappers[0]

    monkeypatch.setattr(pipeline.SteadyDancerPipeline, "load_dit", counting_load)
    assert cli_animate.main(_args(assets, tmp_path / "n.mp4", *extra, negative=negative)) == 0
    return wrappers[0].calls


WINDOW = ("--steps", "5", "--pose-window", "0.1", "0.5")
# Counting needs no video length: one frame keeps the VAE and the DiT cheap.
ONE_FRAME = ("--frames", "1")
# 5 steps, window (0.1, 0.5) strict: i/5 in (0.1, 0.5) -> steps 1 (0.2) and 2 (0.4); 0.0 and 0.6.. are out.
WINDOW_CALLS = [2, 3, 3, 2, 2]


def test_dc_cfg_evaluates_three_conditionings_inside_the_window(assets, tmp_path, monkeypatch):
    assert _count_evaluations(monkeypatch, assets, tmp_path, *WINDOW, *ONE_FRAME) == WINDOW_CALLS


def test_sequential_conditions_count_the_same(assets, tmp_path, monkeypatch):
    calls = _count_evaluations(monkeypatch, assets, tmp_path, *WINDOW, *ONE_FRAME, "--sequential-conditions")
    assert len(calls) == sum(WINDOW_CALLS) and set(calls) == {1}


def test_pose_images_without_negative_switch_the_pose_term_off(assets, tmp_path, monkeypatch, caplog):
    calls = _count_evaluations(monkeypatch, assets, tmp_path, *WINDOW, *ONE_FRAME, negative=False)
    assert calls == [2] * 5
    assert "pose term is off" in caplog.text


def test_keypoint_json_generates_the_negative_pose(assets, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(5):
        body = np.clip(np.array([[0.5, 0.2]]) + rng.normal(0, 0.1, (18, 2)), 0.05, 0.95)
        frames.append(PoseFrame([PersonPose.create(body=body)], WIDTH, HEIGHT))
    save_pose_json(frames, tmp_path / "poses.json")
    wrappers = []
    original = pipeline.SteadyDancerPipeline.load_dit

    def counting_load(self):
        wrappers.append(_CountingDiT(original(self)))
        return wrappers[0]

    monkeypatch.setattr(pipeline.SteadyDancerPipeline, "load_dit", counting_load)
    args = _args(assets, tmp_path / "j.mp4", *WINDOW, negative=False)
    args[args.index("--poses") + 1] = str(tmp_path / "poses.json")
    assert cli_animate.main(args) == 0
    assert wrappers[0].calls == WINDOW_CALLS
    assert _read_mp4(tmp_path / "j.mp4").shape == (5, HEIGHT, WIDTH, 3)
