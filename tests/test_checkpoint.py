"""Checkpoint round trips (single file, prefixed, sharded, scaled fp8), config inference, memory layout."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoint_helpers import linear_weight_keys, quantize_scaled_fp8, tiny_dit, tiny_inputs
from steadydancer_core.model import checkpoint as ckpt_module
from steadydancer_core.model.checkpoint import (INDEX_NAME, infer_config, load_dit, load_state_dict,
                                                read_checkpoint_config, save_dit)
from steadydancer_core.model.attention import sdpa_attention
from steadydancer_core.model.config import OFFICIAL_14B, TINY, DiTConfig
from steadydancer_core.model.dit import SteadyDancerDiT
from steadydancer_core.model.safetensors_io import write_safetensors

# fp8 e4m3 keeps 3 mantissa bits (relative rounding error <= 2^-4 per weight); over the TINY DiT
# the forward output's relative L2 error measured ~1e-2. 5e-2 bounds it with margin while still
# failing for a wrong scale (off by any factor >= 1.1 gives > 1e-1).
FP8_FORWARD_REL_TOL = 5e-2


@pytest.fixture(scope="module")
def model() -> SteadyDancerDiT:
    return tiny_dit()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return tiny_inputs()


@pytest.fixture(scope="module")
def reference_output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def assert_same_state(loaded: torch.nn.Module | dict, original: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict() if isinstance(loaded, torch.nn.Module) else loaded
    assert state.keys() == original.keys()
    for key, value in original.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(state[key], value), key


def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def file_mapping_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges where ``path`` is memory-mapped in this process (Linux /proc)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path.resolve()):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


# ---- round trips --------------------------------------------------------------------------------

def test_single_file_round_trip_is_bit_exact(model, inputs, reference_output, tmp_path):
    path = save_dit(model, tmp_path / "dit.safetensors")
    loaded = load_dit(path)
    assert loaded.config == TINY  # from the safetensors metadata, text_len included
    assert_same_state(loaded, model.state_dict())
    assert torch.equal(forward(loaded, inputs), reference_output)


def test_single_file_is_readable_by_the_safetensors_library(model, tmp_path):
    """Our streaming writer produces standard files: safetensors' own reader gets the same tensors."""
    path = save_dit(model, tmp_path / "dit.safetensors")
    assert_same_state(load_file(path), model.state_dict())


def test_file_written_by_the_safetensors_library_loads(model, inputs, reference_output, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded = load_dit(path, config=TINY)
    assert_same_state(loaded, model.state_dict())
    # Same values, but this writer aligns tensors to 8 bytes only; CPU SIMD reductions over
    # differently aligned (memory-mapped) buffers may differ in the last bit, hence float tolerance.
    torch.testing.assert_close(forward(loaded, inputs), reference_output, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "model."])
def test_prefixed_file_round_trip(prefix, model, inputs, reference_output, tmp_path):
    path = tmp_path / "prefixed.safetensors"
    write_safetensors(path, {prefix + k: v for k, v in model.state_dict().items()})
    assert_same_state(load_state_dict(path), model.state_dict())
    # No config in the file: text_len is not visible in shapes, so pass the config for the forward.
    loaded = load_dit(path, config=TINY)
    assert_same_state(loaded, model.state_dict())
    assert torch.equal(forward(loaded, inputs), reference_output)


def test_sharded_round_trip(model, inputs, reference_output, tmp_path):
    folder = save_dit(model, tmp_path / "SteadyDancer-tiny", sharded=True, max_shard_bytes=2_000_000)
    index = json.loads((folder / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3
    assert shards == [f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
                      for i in range(1, len(shards) + 1)]
    assert index["weight_map"].keys() == model.state_dict().keys()
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert index["metadata"]["total_size"] == total
    assert json.loads((folder / "config.json").read_text()) == TINY.to_official_json()
    # Every shard is within the limit (no single TINY tensor exceeds it) and holds what the index says.
    for shard in shards:
        assert (folder / shard).stat().st_size <= 2_000_000 + 64 * 1024
        assert set(load_file(folder / shard)) == {k for k, v in index["weight_map"].items() if v == shard}

    for source in (folder, folder / INDEX_NAME):
        loaded = load_dit(source)
        assert loaded.config == TINY
        assert_same_state(loaded, model.state_dict())
        assert torch.equal(forward(loaded, inputs), reference_output)


def test_sharded_layout_loads_in_diffusers_style_prefixed(model, tmp_path):
    """Shards may carry prefixed keys too; the index names them as stored."""
    folder = tmp_path / "prefixed_shards"
    folder.mkdir()
    state = model.state_dict()
    keys = list(state)
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, part in halves.items():
        write_safetensors(folder / name, {"model." + k: state[k] for k in part})
        weight_map.update({"model." + k: name for k in part})
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(TINY.to_official_json()))
    assert_same_state(load_dit(folder), state)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_conversion_on_load(dtype, model, tmp_path):
    path = save_dit(model, tmp_path / "dit.safetensors")
    loaded = load_dit(path, dtype=dtype)
    expected = {k: v.to(dtype) for k, v in model.state_dict().items()}
    assert_same_state(loaded, expected)
    assert loaded.dtype == dtype


def test_load_keeps_stored_dtypes_when_dtype_is_none(model, tmp_path):
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    path = save_dit(state, tmp_path / "bf16.safetensors", config=TINY)
    assert_same_state(load_dit(path, dtype=None), state)
    assert_same_state(load_state_dict(path), state)


# ---- scaled fp8 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scale_suffix, prefix, with_input_scale", [
    (".scale_weight", "", False),                      # Kijai / old ComfyUI
    (".weight_scale", "model.diffusion_model.", True),  # newer ComfyUI naming, full-checkpoint prefix
])
def test_scaled_fp8_is_dequantised_exactly(scale_suffix, prefix, with_input_scale, model, inputs,
                                           reference_output, tmp_path):
    state, quantised = quantize_scaled_fp8(model, scale_suffix)
    if with_input_scale:
        for key in quantised:
            state[key[: -len(".weight")] + ".input_scale"] = torch.tensor(1.0)
    path = tmp_path / "dit_fp8_e4m3fn_scaled.safetensors"
    write_safetensors(path, {prefix + k: v for k, v in state.items()})
    assert len(quantised) == len(linear_weight_keys(model)) > 20

    loaded = load_dit(path, dtype=torch.float32, config=TINY)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        if key in quantised:
            fp8, scale = quantised[key]
            assert torch.equal(value, fp8.float() * scale), key
        else:
            assert torch.equal(value, original[key]), key

    output = forward(loaded, inputs)
    rel_err = ((output - reference_output).norm() / reference_output.norm()).item()
    assert 0 < rel_err < FP8_FORWARD_REL_TOL

    bf16 = load_dit(path, dtype=torch.bfloat16, config=TINY).state_dict()
    for key, (fp8, scale) in quantised.items():
        assert torch.equal(bf16[key], (fp8.float() * scale).to(torch.bfloat16)), key


def test_scaled_fp8_state_dict_dequantises_to_float32(model, tmp_path):
    state, quantised = quantize_scaled_fp8(model)
    path = tmp_path / "fp8.safetensors"
    write_safetensors(path, state)
    loaded = load_state_dict(path)
    assert "scaled_fp8" not in loaded and not any(k.endswith(".scale_weight") for k in loaded)
    assert loaded.keys() == model.state_dict().keys()
    for key, (fp8, scale) in quantised.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], fp8.float() * scale)


# ---- configuration ------------------------------------------------------------------------------

def test_config_is_inferred_from_shapes(model):
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    # text_len and eps are invisible in shapes: the official defaults are used.
    assert infer_config(shapes) == TINY.replace(text_len=DiTConfig().text_len)


def test_official_14b_config_is_inferred_from_its_meta_state_dict():
    meta = SteadyDancerDiT(OFFICIAL_14B, device="meta")
    shapes = {k: v.shape for k, v in meta.state_dict().items()}
    assert len(shapes) == 1345
    assert infer_config(shapes) == OFFICIAL_14B


def test_config_argument_overrides_the_stored_config(model, tmp_path):
    path = save_dit(model, tmp_path / "dit.safetensors")
    override = TINY.replace(text_len=24)
    assert load_dit(path, config=override).config == override
    assert read_checkpoint_config(path) == TINY


def test_checkpoint_without_config_loads_with_the_inferred_one(model, tmp_path):
    path = tmp_path / "bare.safetensors"
    write_safetensors(path, model.state_dict())
    loaded = load_dit(path)
    assert loaded.config == TINY.replace(text_len=DiTConfig().text_len)
    assert_same_state(loaded, model.state_dict())


# ---- memory layout ------------------------------------------------------------------------------

def test_loader_builds_on_meta_and_assigns_memory_mapped_tensors(model, tmp_path, monkeypatch):
    built_on = []

    class RecordingDiT(SteadyDancerDiT):
        def __init__(self, *args, **kwargs):
            built_on.append(kwargs.get("device"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ckpt_module, "SteadyDancerDiT", RecordingDiT)
    path = save_dit(model, tmp_path / "dit.safetensors")
    loaded = load_dit(path, dtype=torch.float32)
    assert built_on == ["meta"]
    tensors = list(loaded.state_dict().values())
    assert not any(t.is_meta for t in tensors)

    # Same dtype as stored: every parameter's memory lies inside the file's mapping (zero copy).
    ranges = file_mapping_ranges(path)
    assert ranges, "the checkpoint file is not memory-mapped"
    inside = [any(lo <= t.data_ptr() < hi for lo, hi in ranges) for t in tensors]
    assert all(inside)

    # A dtype conversion produces private tensors; nothing of them lives in the mapping.
    converted = load_dit(path, dtype=torch.bfloat16)
    ranges = file_mapping_ranges(path)
    assert not any(lo <= t.data_ptr() < hi for t in converted.state_dict().values() for lo, hi in ranges)


def test_injected_operations_and_attention_are_used(model, inputs, reference_output, tmp_path):
    """ComfyUI passes its own ops namespace and attention function; the loader must hand them on."""
    class RecordingLinear(torch.nn.Linear):
        pass

    ops = SimpleNamespace(Linear=RecordingLinear, Conv2d=torch.nn.Conv2d, Conv3d=torch.nn.Conv3d,
                          LayerNorm=torch.nn.LayerNorm, GroupNorm=torch.nn.GroupNorm)
    calls = []

    def counting_attention(q, k, v, heads):
        calls.append(heads)
        return sdpa_attention(q, k, v, heads)

    path = save_dit(model, tmp_path / "dit.safetensors")
    loaded = load_dit(path, operations=ops, attention=counting_attention)
    assert isinstance(loaded.blocks[0].self_attn.q, RecordingLinear)
    assert_same_state(loaded, model.state_dict())
    assert torch.equal(forward(loaded, inputs), reference_output)
    assert calls == [TINY.num_heads] * (3 * TINY.num_layers)  # self, text-cross, image-cross per block
