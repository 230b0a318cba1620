"""``convert``: GGUF in city96's layout (read back with the gguf library) and the merged safetensors file."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoint_helpers import tiny_dit
from steadydancer_core.__main__ import main
from steadydancer_core.model.checkpoint import INDEX_NAME, load_state_dict, read_checkpoint_config, save_dit
from steadydancer_core.model.config import TINY

gguf = pytest.importorskip("gguf", reason="the converter's tests need the gguf package (requirements-dev.txt)")

#: The nine Conv3d weights of SteadyDancer (5-D), which GGML cannot hold as such.
FIVE_D_KEYS = ("patch_embedding.weight", "patch_embedding_fuse.weight", "patch_embedding_ref_c.weight",
               *(f"condition_embedding_temporal.{i}.{part}.weight" for i in (0, 2, 4) for part in ("spatial", "temporal")))
#: Parameters used outside an nn.Linear/Conv2d/LayerNorm/GroupNorm: ComfyUI-GGUF cannot dequantise them.
BARE_SUFFIXES = ("modulation", "cross_attn.in_proj_weight", "cross_attn.in_proj_bias", "norm_q.weight", "norm_k.weight", "norm_k_img.weight", "align.norm1.weight",
                 "align.norm1.bias", "align.norm2.weight", "align.norm2.bias")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple:
    model = tiny_dit()
    path = tmp_path_factory.mktemp("src") / "steadydancer_tiny.safetensors"
    save_dit(model, path)
    return path, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _read_gguf(path) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, int], object]:
    """{key: dequantised float32 array in its logical shape}, {key: GGML type}, {key: stored n_dims}, the reader."""
    reader = gguf.GGUFReader(str(path))
    tensors, types, stored_dims = {}, {}, {}
    for tensor in reader.tensors:
        field = reader.get_field(f"comfy.gguf.orig_shape.{tensor.name}")
        shape = ([int(field.parts[i][0]) for i in field.data] if field is not None
                 else [int(d) for d in reversed(tensor.shape)])
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        tensors[tensor.name] = np.array(values, dtype=np.float32).reshape(shape)
        types[tensor.name] = tensor.tensor_type.name
        stored_dims[tensor.name] = len(tensor.shape)
    return tensors, types, stored_dims, reader


def _q8_0_bound(value: torch.Tensor) -> torch.Tensor:
    """Per-element error bound of Q8_0 (blocks of 32 along the row: scale d = max|x|/127 in fp16, q = round(x/d)):
    half a step plus the fp16 rounding of d times |q| <= 127."""
    blocks = value.float().reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    return (0.5 * d + 127 * d * 2.0**-11 + 1e-12).expand_as(blocks).reshape(value.shape)


@pytest.mark.parametrize("quant", ["F16", "BF16", "Q8_0"])
def test_gguf_round_trip_within_the_quantisation(source, tmp_path, quant):
    src, state = source
    dst = tmp_path / f"steadydancer-{quant}.gguf"
    assert main(["convert", "--to", "gguf", "--quant", quant, str(src), str(dst)]) == 0
    tensors, types, stored_dims, reader = _read_gguf(dst)
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[-1]]).decode() == "wan"
    assert set(tensors) == set(state)

    for key in FIVE_D_KEYS:  # reshaped to 4-D with the 5-D shape in the metadata, kept F32
        assert state[key].ndim == 5 and types[key] == "F32" and stored_dims[key] == 4, key
    for key in state:
        if key.endswith(BARE_SUFFIXES) or state[key].ndim == 1 or state[key].numel() <= 1024:
            assert types[key] == "F32", key

    for key, value in state.items():
        got = torch.from_numpy(tensors[key])
        if types[key] == "F32":
            torch.testing.assert_close(got, value, rtol=0, atol=0, msg=key)
        elif types[key] == "F16":
            torch.testing.assert_close(got, value.half().float(), rtol=0, atol=0, msg=key)
        elif types[key] == "BF16":
            torch.testing.assert_close(got, value.bfloat16().float(), rtol=0, atol=0, msg=key)
        else:
            assert types[key] == "Q8_0"
            assert bool(((got - value).abs() <= _q8_0_bound(value)).all()), key
    if quant == "Q8_0":
        quantised = {k for k, t in types.items() if t == "Q8_0"}
        assert "blocks.0.ffn.0.weight" in quantised
        # city96's llama.cpp rules for Wan keep the embeddings and the head unquantised.
        assert not any(k.startswith(("text_embedding.", "time_embedding.", "img_emb.", "head.")) for k in quantised)


def test_merge_sharded_folder_into_one_file(source, tmp_path):
    _, state = source
    folder = tmp_path / "SteadyDancer-tiny"
    save_dit(state, folder, config=TINY, sharded=True, max_shard_bytes=2_000_000)
    assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / INDEX_NAME).is_file()
    dst = tmp_path / "merged.safetensors"
    assert main(["convert", "--to", "safetensors", str(folder), str(dst)]) == 0
    merged = load_state_dict(dst)
    assert set(merged) == set(state)
    for key, value in state.items():
        assert merged[key].dtype == value.dtype
        torch.testing.assert_close(merged[key], value, rtol=0, atol=0, msg=key)
    assert read_checkpoint_config(dst) == TINY


def test_bad_requests_are_refused_before_writing(source, tmp_path, capsys):
    src, _ = source
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"earlier")
    assert main(["convert", "--to", "gguf", "--quant", "Q8_0", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err and dst.read_bytes() == b"earlier"
    assert main(["convert", "--to", "gguf", str(src), str(tmp_path / "x.gguf")]) == 2
    assert "--to gguf needs --quant" in capsys.readouterr().err
    assert main(["convert", "--to", "gguf", "--quant", "F16", str(src), str(tmp_path / "x.bin")]) == 2
    assert "must end in .gguf" in capsys.readouterr().err
    not_dancer = tmp_path / "lora.safetensors"
    from safetensors.torch import save_file
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(4, 4)}, str(not_dancer))
    assert main(["convert", "--to", "safetensors", str(not_dancer), str(tmp_path / "m.safetensors")]) == 2
    assert "LoRA" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "m.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
