"""Parity of SteadyDancerDiT with the official ``model_dancer.WanModel`` (fixture recorded from the official code)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from steadydancer_core.model import DiTConfig, SteadyDancerDiT

FIXTURE = "data/parity/dit_tiny_a.safetensors"


@pytest.fixture(scope="module")
def fixture(shared_dir):
    path = shared_dir / FIXTURE
    if not path.is_file():
        pytest.fail(f"missing parity fixture {path}")
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    return tensors, metadata


def _official_model(fixture) -> SteadyDancerDiT:
    tensors, metadata = fixture
    config = DiTConfig.from_official_json(json.loads(metadata["config"]))
    model = SteadyDancerDiT(config).eval()
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    return model


def _our_inputs(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official calling convention -> ours (batch dim added, 36-ch x, 16-ch refs)."""
    return {
        "x": torch.cat([tensors["in.x"], tensors["in.y"]], dim=0)[None],
        "context": tensors["in.context"][None],
        "clip_fea_x": tensors["in.clip_fea_x"],
        "clip_fea_c": tensors["in.clip_fea_c"],
        "pose_latents": tensors["in.condition"][None],
        "ref_x": tensors["in.ref_x"][:16][None],
        "ref_c": tensors["in.ref_c"][:16][None],
    }


@pytest.mark.parametrize("timestep", [torch.tensor([700]), torch.tensor([700.0])], ids=["int", "float"])
def test_forward_matches_official_output(fixture, timestep):
    tensors, metadata = fixture
    assert json.loads(metadata["timesteps"]) == [700.0]
    model = _official_model(fixture)
    with torch.no_grad():
        out = model(timestep=timestep, **_our_inputs(tensors))
    expected = tensors["out.t700"][None]
    assert out.shape == expected.shape
    assert out.dtype == torch.float32
    # Float32 round-off only (measured ~5e-7 on outputs of magnitude ~1.4).
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_official_inputs_are_our_convention(fixture):
    """The fixture's official ref inputs are [latent | ones | latent] and [pose0 | zeros | pose0]:
    the model rebuilds the first from our 16-ch ref_x, and ref_x/ref_c equal frame 0 of y / condition."""
    tensors, _ = fixture
    ref_x, ref_c = tensors["in.ref_x"], tensors["in.ref_c"]
    torch.testing.assert_close(ref_x[16:20], torch.ones_like(ref_x[16:20]), atol=0, rtol=0)
    torch.testing.assert_close(ref_x[20:], ref_x[:16], atol=0, rtol=0)
    torch.testing.assert_close(ref_c[16:20], torch.zeros_like(ref_c[16:20]), atol=0, rtol=0)
    torch.testing.assert_close(tensors["in.y"][4:, :1], ref_x[:16], atol=0, rtol=0)
    torch.testing.assert_close(tensors["in.condition"][:, :1], ref_c[:16], atol=0, rtol=0)


def test_pose_latents_change_the_official_output(fixture):
    """Guards the parity test against a pose branch that silently does nothing."""
    tensors, _ = fixture
    model = _official_model(fixture)
    inputs = _our_inputs(tensors)
    inputs["pose_latents"] = inputs["pose_latents"].flip(2)
    with torch.no_grad():
        out = model(timestep=torch.tensor([700]), **inputs)
    assert (out - tensors["out.t700"][None]).abs().max() > 1e-3
