"""LPIPS, FID and FVD through the real code path with the libraries' own networks built WITHOUT pretrained
weights: randomly initialised torchvision VGG16 / AlexNet, torch-fidelity InceptionV3 and cd-fvd I3D are saved
as the weight files the evaluation would otherwise download, so nothing is fetched; plumbing and shapes are
asserted, not values.

Needs requirements-eval.txt (torchvision, torch-fidelity, cd-fvd); skipped with the reason where they are absent
(the CPU-only main test environment has no torchvision for its torch). Run with an environment that has them,
e.g. ``.venv-comfy/bin/python -m pytest -q tests/test_evaluate_networks.py``."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

MISSING = [m for m in ("torchvision", "torch_fidelity", "cdfvd", "torchmetrics") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs requirements-eval.txt; missing {', '.join(MISSING)}")

from steadydancer_core.__main__ import main  # noqa: E402
from steadydancer_core.evaluate import EvalConfig, evaluate, pair_inputs  # noqa: E402
from steadydancer_core.evaluate.backbones import FID_INCEPTION, FVD_I3D, LPIPS_BACKBONES, backbone_path  # noqa: E402
from steadydancer_core.evaluate.distribution import FVD_CLIP_FRAMES, Fid, Fvd, clips_of  # noqa: E402
from steadydancer_core.evaluate.frame_metrics import Lpips  # noqa: E402


def _random_inception_state() -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 as initialised, before any weights are loaded into it."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
            return None

    empty = torch.hub.get_dir()  # any existing file: the subclass ignores what is read from it
    path = Path(empty) / "empty.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)
    torch.manual_seed(0)
    return Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)).state_dict()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    import torchvision
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d

    folder = tmp_path_factory.mktemp("eval_models")
    torch.manual_seed(0)
    files = {
        LPIPS_BACKBONES["vgg"]: torchvision.models.vgg16(weights=None).state_dict(),
        FVD_I3D: InceptionI3d(400, in_channels=3).state_dict(),
    }
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(folder / "scratch"))
    try:
        files[FID_INCEPTION] = _random_inception_state()
    finally:
        torch.hub.set_dir(previous)
    for backbone, state in files.items():
        path = backbone_path(backbone, folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    return folder


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _frames(count: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_weight_addresses_are_the_libraries_own():
    # (AlexNet for --lpips-net alex runs the same code as VGG; only its address is checked here.)
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert LPIPS_BACKBONES["vgg"].url == torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    assert LPIPS_BACKBONES["alex"].url == torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    assert FID_INCEPTION.url == URL_INCEPTION_V3
    for backbone in (*LPIPS_BACKBONES.values(), FID_INCEPTION, FVD_I3D):
        assert backbone.url.endswith("/" + backbone.filename)


def test_lpips_loads_its_backbone_from_the_models_folder_and_scores_each_frame(models_dir):
    net = "vgg"
    lpips = Lpips(net, models_dir)
    backbone = lpips.metric.net.net  # torchvision features inside torchmetrics' LPIPS
    first = next(backbone.parameters())
    source = torch.load(backbone_path(LPIPS_BACKBONES[net], models_dir))
    assert torch.equal(first, source["features.0.weight"])  # the random file was loaded, nothing fetched
    frames = _frames(3)
    values = lpips.per_frame(frames, frames[::-1].copy())
    assert values.shape == (3,) and np.isfinite(values).all()
    np.testing.assert_allclose(lpips.per_frame(frames, frames), 0.0, atol=1e-6)


def test_fid_accumulates_both_sides_and_computes_one_number(models_dir):
    # The 64-channel Inception layer keeps the Fréchet distance's matrix square root small here; the command
    # test below runs the standard 2048-d pool features.
    fid = Fid(backbone_path(FID_INCEPTION, models_dir), feature=64)
    fid.update(_frames(5, seed=1), real=False)
    fid.update(_frames(4, seed=2), real=True)
    assert fid.counts == {"generated": 5, "reference": 4}
    assert fid.metric.fake_features_num_samples == 5 and fid.metric.real_features_num_samples == 4
    assert fid.metric.real_features_sum.shape == (64,)
    assert np.isfinite(fid.compute())


def test_fvd_cuts_16_frame_clips_and_computes_one_number(models_dir):
    frames = _frames(2 * FVD_CLIP_FRAMES + 5, 40, 40)
    clips = clips_of(frames)
    assert clips.shape == (2, FVD_CLIP_FRAMES, 40, 40, 3)
    np.testing.assert_array_equal(clips[1, 0], frames[FVD_CLIP_FRAMES])
    fvd = Fvd(backbone_path(FVD_I3D, models_dir))
    fvd.update(frames, real=False)
    fvd.update(_frames(2 * FVD_CLIP_FRAMES, 40, 40, seed=3), real=True)
    assert fvd.counts == {"generated": 2, "reference": 2}
    assert fvd.evaluator.fake_stats.num_items == 2 and fvd.evaluator.fake_stats.num_features == 400
    assert np.isfinite(fvd.compute())


def test_evaluate_command_runs_every_metric(models_dir, tmp_path):
    reference = _frames(FVD_CLIP_FRAMES, 48, 64, seed=4)
    for name, seed in (("a", 5), ("b", 6)):
        generated = np.clip(reference.astype(int) + np.random.default_rng(seed).integers(-20, 20, reference.shape),
                            0, 255).astype(np.uint8)
        for side, frames in (("gen", generated), ("ref", reference)):
            folder = tmp_path / side / name
            folder.mkdir(parents=True)
            for i, frame in enumerate(frames):
                Image.fromarray(frame).save(folder / f"{i:04d}.png")
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.fromarray(reference[0]).save(tmp_path / "img" / f"{name}.png")
    out = tmp_path / "report.json"
    code = main(["evaluate", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                 "--image", str(tmp_path / "img"), "--models-dir", str(models_dir), "--no-download",
                 "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    mean = report["mean"]
    for key in ("ssim", "ssim_disco", "psnr", "lpips", "fid", "fvd", "first_frame_psnr", "first_frame_lpips", "temporal_step_0_1"):
        assert isinstance(mean[key], float), key
    assert mean["fvd_clips"] == 2 and mean["frames"] == 2 * FVD_CLIP_FRAMES
    assert [row["name"] for row in report["per_video"]] == ["a", "b"]
    assert "fid" not in report["per_video"][0]  # set metrics exist only for the whole set
    settings = report["settings"]
    assert settings["metrics"] == ["ssim", "ssim_disco", "psnr", "lpips", "fid", "fvd", "temporal", "first_frame"]
    assert Path(settings["weights"][FVD_I3D.filename]) == backbone_path(FVD_I3D, models_dir)
    assert settings["libraries"]["cd-fvd"] != "not installed"


def test_fvd_with_fewer_than_two_clips_fails_before_any_network_is_built(models_dir, tmp_path):
    from steadydancer_core.errors import InputError

    for side in ("gen", "ref"):
        folder = tmp_path / side
        folder.mkdir()
        for i, frame in enumerate(_frames(FVD_CLIP_FRAMES + 3)):
            Image.fromarray(frame).save(folder / f"{i:04d}.png")
    with pytest.raises(InputError, match="FVD needs at least 2 clips of 16 frames"):
        evaluate(pair_inputs(tmp_path / "gen", tmp_path / "ref"),
                 EvalConfig(metrics=("fvd",), models_dir=tmp_path / "no_models", download=False, progress=False))
