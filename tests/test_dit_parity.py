"""Parity of SteadyDancerDiT with the official ``model_dancer.WanModel`` (fixture recorded from the official code).

Everything about the recording is read from the file (data/parity/README.md): the config (metadata ``config``),
the timesteps (metadata ``timesteps``, one ``out.t<T>`` per timestep), the shapes of every input. The tests hold
for any recording of this kind, not only this copy's.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from steadydancer_core.model import DiTConfig, SteadyDancerDiT

FIXTURE = "data/parity/dit_tiny_a.safetensors"
#: Claimed agreement: float32 round-off, at most 1e-6 absolute per unit of output magnitude (outputs are O(1)).
ATOL_PER_UNIT = 1e-6


@pytest.fixture(scope="module")
def fixture(shared_dir):
    path = shared_dir / FIXTURE
    if not path.is_file():
        pytest.fail(f"missing parity fixture {path}")
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    return tensors, metadata


def output_key(timestep: float) -> str:
    """``out.t<T>`` with T written as the fixture writes it (700.0 -> out.t700)."""
    return f"out.t{timestep:g}"


def recorded_timesteps(fixture) -> list[float]:
    tensors, metadata = fixture
    timesteps = [float(t) for t in json.loads(metadata["timesteps"])]
    assert timesteps, "the fixture records no timestep"
    # Every recorded output belongs to a listed timestep and every listed timestep has its output.
    assert {output_key(t) for t in timesteps} == {k for k in tensors if k.startswith("out.")}
    return timesteps


def _official_model(fixture) -> SteadyDancerDiT:
    tensors, metadata = fixture
    config = DiTConfig.from_official_json(json.loads(metadata["config"]))
    model = SteadyDancerDiT(config).eval()
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    return model


def _our_inputs(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official calling convention -> ours (batch dim added, 36-ch x, 16-ch refs)."""
    latent_channels = tensors["in.x"].shape[0]
    return {
        "x": torch.cat([tensors["in.x"], tensors["in.y"]], dim=0)[None],
        "context": tensors["in.context"][None],
        "clip_fea_x": tensors["in.clip_fea_x"],
        "clip_fea_c": tensors["in.clip_fea_c"],
        "pose_latents": tensors["in.condition"][None],
        "ref_x": tensors["in.ref_x"][:latent_channels][None],
        "ref_c": tensors["in.ref_c"][:latent_channels][None],
    }


def _timestep_forms(timestep: float) -> list[torch.Tensor]:
    """The timestep as the official code passes it (an integer tensor for integral values) and as a float."""
    forms = [torch.tensor([timestep])]
    if timestep == int(timestep):
        forms.append(torch.tensor([int(timestep)]))
    return forms


def test_forward_matches_every_recorded_output(fixture):
    tensors, _ = fixture
    model = _official_model(fixture)
    inputs = _our_inputs(tensors)
    for timestep in recorded_timesteps(fixture):
        expected = tensors[output_key(timestep)][None]
        for form in _timestep_forms(timestep):
            with torch.no_grad():
                out = model(timestep=form, **inputs)
            assert out.shape == expected.shape and out.dtype == torch.float32
            scale = max(1.0, float(expected.abs().max()))
            error = float((out - expected).abs().max())
            assert error <= ATOL_PER_UNIT * scale, (timestep, form.dtype, error, scale)


def test_official_inputs_are_our_convention(fixture):
    """The fixture's official ref inputs are [latent | ones | latent] and [pose0 | zeros | pose0]:
    the model rebuilds the first from our 16-ch ref_x, and ref_x/ref_c equal frame 0 of y / condition."""
    tensors, _ = fixture
    ref_x, ref_c = tensors["in.ref_x"], tensors["in.ref_c"]
    c = tensors["in.x"].shape[0]
    mask = tensors["in.y"].shape[0] - c
    assert ref_x.shape[0] == ref_c.shape[0] == 2 * c + mask
    torch.testing.assert_close(ref_x[c:c + mask], torch.ones_like(ref_x[c:c + mask]), atol=0, rtol=0)
    torch.testing.assert_close(ref_x[c + mask:], ref_x[:c], atol=0, rtol=0)
    torch.testing.assert_close(ref_c[c:c + mask], torch.zeros_like(ref_c[c:c + mask]), atol=0, rtol=0)
    torch.testing.assert_close(ref_c[c + mask:], ref_c[:c], atol=0, rtol=0)
    torch.testing.assert_close(tensors["in.y"][mask:, :1], ref_x[:c], atol=0, rtol=0)
    torch.testing.assert_close(tensors["in.condition"][:, :1], ref_c[:c], atol=0, rtol=0)


def test_pose_latents_change_the_official_output(fixture):
    """Guards the parity test against a pose branch that silently does nothing (at every recorded timestep)."""
    tensors, _ = fixture
    model = _official_model(fixture)
    inputs = _our_inputs(tensors)
    inputs["pose_latents"] = -inputs["pose_latents"]
    for timestep in recorded_timesteps(fixture):
        with torch.no_grad():
            out = model(timestep=torch.tensor([timestep]), **inputs)
        assert (out - tensors[output_key(timestep)][None]).abs().max() > 1e-3
