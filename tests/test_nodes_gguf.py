"""SteadyDancer GGUF files through city96's loader in real ComfyUI (needs COMFYUI_PATH and COMFYUI_GGUF_PATH).

Files are written by our converter from a tiny random DiT and loaded by ComfyUI-GGUF's own ``Unet Loader
(GGUF)``. Expected outputs: the core DiT (plain torch) holding the weights the file holds, dequantised by the
``gguf`` library's own numpy code (an implementation independent of the loader's torch kernels); and, for the
numbers the README states, the distance to the unquantised safetensors model.
"""
from __future__ import annotations

import pytest
import torch

from tests.comfyui import harness
from tests.comfyui.tiny_models import core_dit, tiny_dit_state_dict

from steadydancer_core.model import TINY
from steadydancer_core.model.checkpoint import save_dit
from steadydancer_core.model.convert import convert_to_gguf

TINY_AS_LOADED = TINY.replace(text_len=512)
#: Relative L2 distance to the unquantised model allowed per file type (measured: see the README).
RELATIVE_BOUND = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2}


@pytest.fixture(scope="module")
def gguf_pack():
    harness.pack_module("nodes.model_registration")
    return harness.load_gguf_pack()


@pytest.fixture(scope="module")
def dit_sd() -> dict[str, torch.Tensor]:
    return tiny_dit_state_dict()


@pytest.fixture(scope="module")
def gguf_files(gguf_pack, dit_sd, tmp_path_factory):
    """{quant: file name} in a folder registered as a ComfyUI diffusion_models folder."""
    import folder_paths

    folder = tmp_path_factory.mktemp("diffusion_models")
    source = folder / "steadydancer_tiny.safetensors"
    save_dit(dit_sd, source, config=TINY)
    names = {}
    for quant in ("F16", "BF16", "Q8_0"):
        names[quant] = f"steadydancer_tiny-{quant}.gguf"
        convert_to_gguf(source, folder / names[quant], quant)
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    return folder, names


def _file_weights(path) -> dict[str, torch.Tensor]:
    """The weights a GGUF file holds, dequantised by the gguf library (numpy), in their logical shapes."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    out = {}
    for tensor in reader.tensors:
        field = reader.get_field(f"comfy.gguf.orig_shape.{tensor.name}")
        shape = ([int(field.parts[i][0]) for i in field.data] if field is not None
                 else [int(d) for d in reversed(tensor.shape)])
        values = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            # ComfyUI-GGUF (default dequant_dtype) multiplies the fp16 block scale by the int8 values in fp16.
            values = values.half().float()
        out[tensor.name] = values.reshape(shape)
    return out


def _inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {"x": r(1, 16, 3, 4, 6), "c_concat": r(1, 20, 3, 4, 6), "context": r(1, 7, TINY.text_dim),
            "clip_fea": r(1, 257, TINY.clip_dim), "clip_fea_c": r(1, 257, TINY.clip_dim),
            "pose_latents": r(1, 16, 3, 4, 6), "ref_x": r(1, 16, 1, 4, 6), "ref_c": r(1, 16, 1, 4, 6)}


def _velocity_comfy(patcher, inputs, sigma: float) -> torch.Tensor:
    """The flow velocity ComfyUI's model predicts (denoised = x - sigma * v)."""
    with torch.no_grad():
        denoised = patcher.model.apply_model(
            inputs["x"], torch.tensor([sigma]), c_concat=inputs["c_concat"], c_crossattn=inputs["context"],
            clip_fea=inputs["clip_fea"], clip_fea_c=inputs["clip_fea_c"], pose_latents=inputs["pose_latents"],
            ref_x=inputs["ref_x"], ref_c=inputs["ref_c"])
    return (inputs["x"] - denoised) / sigma


def _velocity_core(state_dict, inputs, sigma: float) -> torch.Tensor:
    with torch.no_grad():
        return core_dit(state_dict, TINY_AS_LOADED)(
            torch.cat([inputs["x"], inputs["c_concat"]], 1), torch.tensor([sigma * 1000]), inputs["context"],
            inputs["clip_fea"], inputs["clip_fea_c"], inputs["pose_latents"], inputs["ref_x"], inputs["ref_c"])


@pytest.mark.parametrize("quant", ["F16", "BF16", "Q8_0"])
def test_gguf_file_loads_through_city96_loader_and_runs(gguf_pack, dit_sd, gguf_files, quant):
    registration = harness.pack_module("nodes.model_registration")
    folder, names = gguf_files
    patcher = gguf_pack.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(names[quant])[0]
    assert isinstance(patcher.model, registration.SteadyDancerModel)
    ffn = patcher.model.diffusion_model.blocks[0].ffn[0].weight
    assert getattr(ffn, "tensor_type").name == quant  # stays packed in memory, dequantised at use

    inputs = _inputs()
    got = _velocity_comfy(patcher, inputs, 0.6)
    # Exactly the model the file holds (dequantised independently), up to float32 summation order.
    held = _velocity_core(_file_weights(folder / names[quant]), inputs, 0.6)
    torch.testing.assert_close(got, held, rtol=1e-4, atol=1e-5)
    # And close to the unquantised model, by the file type's precision.
    reference = _velocity_core(dit_sd, inputs, 0.6)
    relative = ((got - reference).norm() / reference.norm()).item()
    print(f"GGUF {quant}: max |v - v_safetensors| = {(got - reference).abs().max().item():.3e}, "
          f"relative L2 = {relative:.3e} (|v| max {reference.abs().max().item():.3f})")
    assert relative < RELATIVE_BOUND[quant]
    if quant == "Q8_0":
        assert not torch.equal(got, reference)


@pytest.mark.parametrize("qtype", ["BF16", "Q8_0"])
def test_gguf_packed_bare_parameters_load(gguf_pack, gguf_files, qtype):
    """Files from other converters store the pose branch's bare in-projection (and may store modulations)
    packed: the issue's BF16/Q8_0 load failure. They load and compute the model they hold."""
    import gguf
    import comfy.sd

    folder, names = gguf_files
    state = gguf_pack.loader.gguf_sd_loader(str(folder / names["F16"]))
    held = _file_weights(folder / names["F16"])
    kind = gguf.GGMLQuantizationType[qtype]
    for key in ("condition_embedding_align.cross_attn.in_proj_weight", "blocks.0.modulation"):
        value = held[key].numpy().reshape(-1, held[key].shape[-1])
        packed = gguf.quants.quantize(value, kind)
        state[key] = gguf_pack.ops.GGMLTensor(torch.from_numpy(packed), tensor_type=kind,
                                              tensor_shape=held[key].shape)
        held[key] = torch.from_numpy(gguf.quants.dequantize(packed, kind)).reshape(held[key].shape)
    patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options={"custom_operations": gguf_pack.ops.GGMLOps})
    inputs = _inputs()
    torch.testing.assert_close(_velocity_comfy(patcher, inputs, 0.6), _velocity_core(held, inputs, 0.6),
                               rtol=1e-4, atol=1e-5)


def test_gguf_quantised_conv3d_is_a_clear_error(gguf_pack, gguf_files):
    """ComfyUI-GGUF has no Conv3d: a file that quantises a 5-D weight is refused, naming the key."""
    import gguf
    import comfy.sd

    folder, names = gguf_files
    state = gguf_pack.loader.gguf_sd_loader(str(folder / names["F16"]))
    shape = state["patch_embedding_fuse.weight"].shape
    packed = gguf.quants.quantize(torch.ones(shape[0], 68 * 4).numpy(), gguf.GGMLQuantizationType.BF16)
    state["patch_embedding_fuse.weight"] = gguf_pack.ops.GGMLTensor(
        torch.from_numpy(packed), tensor_type=gguf.GGMLQuantizationType.BF16, tensor_shape=shape)
    with pytest.raises(ValueError, match=r"patch_embedding_fuse\.weight is stored as BF16.*Conv3d"):
        comfy.sd.load_diffusion_model_state_dict(state, model_options={"custom_operations": gguf_pack.ops.GGMLOps})


def test_gguf_k_quant_file_loads_and_runs(gguf_pack, gguf_files):
    """K-quants come from llama.cpp; the gguf library cannot write them, so this file takes our BF16 file and
    gives every 2-D weight with 256-multiple rows (what llama.cpp K-quantises) random but valid Q4_K blocks."""
    import gguf
    import numpy as np

    folder, names = gguf_files
    reader = gguf.GGUFReader(str(folder / names["BF16"]))
    writer = gguf.GGUFWriter(path=None, arch="wan")
    for name, field in reader.fields.items():
        if name.startswith("comfy.gguf.orig_shape."):
            writer.add_array(name, [int(field.parts[i][0]) for i in field.data])
    rng = np.random.default_rng(0)
    scale_bytes = np.frombuffer(np.array([1e-4, 1e-4], dtype=np.float16).tobytes(), dtype=np.uint8)  # d, dmin
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_K]
    k_quantised = []
    for tensor in reader.tensors:
        shape = [int(d) for d in reversed(tensor.shape)]
        if tensor.tensor_type == gguf.GGMLQuantizationType.BF16 and len(shape) == 2 and shape[1] % 256 == 0:
            blocks = rng.integers(0, 256, (shape[0] * shape[1] // block_elements, block_bytes), dtype=np.uint8)
            blocks[:, :4] = scale_bytes
            writer.add_tensor(tensor.name, blocks.reshape(shape[0], -1), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
            k_quantised.append(tensor.name)
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    path = folder / "steadydancer_tiny-Q4_K.gguf"
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "blocks.0.ffn.0.weight" in k_quantised and "blocks.1.self_attn.q.weight" in k_quantised

    patcher = gguf_pack.NODE_CLASS_MAPPINGS["UnetLoaderGGUF"]().load_unet(path.name)[0]
    assert patcher.model.diffusion_model.blocks[0].ffn[0].weight.tensor_type.name == "Q4_K"
    inputs = _inputs()
    got = _velocity_comfy(patcher, inputs, 0.6)
    held = _velocity_core(_file_weights(path), inputs, 0.6)
    relative = ((got - held).norm() / held.norm()).item()
    print(f"GGUF Q4_K ({len(k_quantised)} tensors): relative L2 to the core DiT with the file's weights {relative:.2e}")
    # ComfyUI-GGUF dequantises K-quants in fp16 (its default dequant dtype), the gguf library in float32.
    assert torch.isfinite(got).all() and relative < 5e-3
