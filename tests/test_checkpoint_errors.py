"""Every way a checkpoint can be wrong gets a clear error, raised from headers before weights are read."""
from __future__ import annotations

import json
import re

import pytest
import torch

from checkpoint_helpers import quantize_scaled_fp8, tiny_dit
from steadydancer_core.model.checkpoint import INDEX_NAME, load_dit, load_state_dict, save_dit
from steadydancer_core.model.checkpoint_errors import (CheckpointError, CorruptCheckpointError, MissingShardError,
                                                       NotSteadyDancerError, StateDictMismatchError)
from steadydancer_core.model.config import TINY
from steadydancer_core.model.safetensors_io import SafetensorsFile, write_safetensors

#: Modules SteadyDancer adds to Wan2.1-I2V (model_spec §1.2).
STEADYDANCER_ONLY = ("patch_embedding_fuse.", "patch_embedding_ref_c.", "condition_embedding_")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return tiny_dit().state_dict()


@pytest.fixture
def no_weight_reads(monkeypatch):
    """Fail the test if any tensor data is read (errors must come from headers alone)."""
    def forbidden(self, name):
        raise AssertionError(f"tensor {name!r} was read before the error was raised")
    monkeypatch.setattr(SafetensorsFile, "mapped", forbidden)
    monkeypatch.setattr(SafetensorsFile, "copy", forbidden)


def test_plain_wan21_i2v_is_rejected(state, tmp_path, no_weight_reads):
    wan = {k: v for k, v in state.items() if not k.startswith(STEADYDANCER_ONLY)}
    path = tmp_path / "wan2.1_i2v_480p_14B_bf16.safetensors"
    write_safetensors(path, {"model.diffusion_model." + k: v for k, v in wan.items()})
    with pytest.raises(NotSteadyDancerError, match="this is a Wan2.1 I2V model, not SteadyDancer") as err:
        load_dit(path)
    assert str(path) in str(err.value)


def test_wan_t2v_and_unrelated_files_are_rejected(state, tmp_path, no_weight_reads):
    t2v = {k: v for k, v in state.items() if not k.startswith(STEADYDANCER_ONLY + ("img_emb.",))}
    write_safetensors(tmp_path / "t2v.safetensors", t2v)
    with pytest.raises(NotSteadyDancerError, match="without image conditioning"):
        load_dit(tmp_path / "t2v.safetensors")
    write_safetensors(tmp_path / "vae.safetensors", {"encoder.conv1.weight": torch.zeros(4, 3)})
    with pytest.raises(NotSteadyDancerError, match="not a SteadyDancer DiT checkpoint.*encoder.conv1.weight"):
        load_dit(tmp_path / "vae.safetensors")
    write_safetensors(tmp_path / "lora.safetensors",
                      {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 256)})
    with pytest.raises(NotSteadyDancerError, match="LoRA"):
        load_dit(tmp_path / "lora.safetensors")


def test_missing_keys_are_listed(state, tmp_path, no_weight_reads):
    partial = {k: v for k, v in state.items() if k != "blocks.1.ffn.2.bias"}
    save_dit(partial, tmp_path / "partial.safetensors", config=TINY)
    with pytest.raises(StateDictMismatchError, match=r"1 missing key\(s\): blocks\.1\.ffn\.2\.bias") as err:
        load_dit(tmp_path / "partial.safetensors")
    assert err.value.missing == ["blocks.1.ffn.2.bias"] and not err.value.unexpected


def test_long_key_lists_are_truncated_with_a_count(state, tmp_path, no_weight_reads):
    block1 = sorted(k for k in state if k.startswith("blocks.1."))
    partial = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    # The stored config still says 2 layers, so the whole block is missing.
    save_dit(partial, tmp_path / "partial.safetensors", config=TINY)
    with pytest.raises(StateDictMismatchError) as err:
        load_dit(tmp_path / "partial.safetensors")
    message = str(err.value)
    assert f"{len(block1)} missing key(s)" in message
    assert f"(+{len(block1) - 8} more)" in message
    assert err.value.missing == block1


def test_unexpected_keys_are_never_ignored(state, tmp_path, no_weight_reads):
    extra = dict(state)
    extra["blocks.0.self_attn.extra_gate"] = torch.zeros(3)
    save_dit(extra, tmp_path / "extra.safetensors", config=TINY)
    with pytest.raises(StateDictMismatchError, match=r"1 unexpected key\(s\): blocks\.0\.self_attn\.extra_gate"):
        load_dit(tmp_path / "extra.safetensors")


def test_shape_mismatches_are_listed(state, tmp_path, no_weight_reads):
    save_dit(state, tmp_path / "dit.safetensors")
    wrong = TINY.replace(ffn_dim=384)
    with pytest.raises(StateDictMismatchError) as err:
        load_dit(tmp_path / "dit.safetensors", config=wrong)
    mismatches = err.value.shape_mismatches
    assert len(mismatches) == 3 * TINY.num_layers  # ffn.0.weight, ffn.0.bias, ffn.2.weight per block
    assert "blocks.0.ffn.0.weight (checkpoint [512, 256], model [384, 256])" in mismatches


def test_missing_file_and_non_safetensors_files(tmp_path):
    with pytest.raises(CorruptCheckpointError, match="no such file or folder") as err:
        load_dit(tmp_path / "nowhere.safetensors")
    assert err.value.path == tmp_path / "nowhere.safetensors"
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(CorruptCheckpointError, match="GGUF"):
        load_dit(tmp_path / "model.gguf")


def test_truncated_file_names_path_and_reason(state, tmp_path):
    path = save_dit(state, tmp_path / "dit.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt") as err:
        load_dit(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content, reason", [
    (b"", "too short for a safetensors header"),
    (b"\xff" * 64, "header length field says"),
    ((12).to_bytes(8, "little") + b"{not json!!}", "header is not valid JSON"),
    ((64).to_bytes(8, "little") + json.dumps({"w": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}})
     .encode().ljust(64) + bytes(4), "unsupported dtype"),
])
def test_garbage_files_name_path_and_reason(content, reason, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=re.escape(reason)) as err:
        load_state_dict(path)
    assert str(path) in str(err.value)


def test_missing_shard_is_named(state, tmp_path, no_weight_reads):
    folder = save_dit(state, tmp_path / "sharded", sharded=True, max_shard_bytes=2_000_000)
    shards = sorted(set(json.loads((folder / INDEX_NAME).read_text())["weight_map"].values()))
    gone = shards[1]
    (folder / gone).unlink()
    with pytest.raises(MissingShardError, match=re.escape(gone)):
        load_dit(folder)


def test_index_disagreeing_with_shard_contents(state, tmp_path, no_weight_reads):
    folder = save_dit(state, tmp_path / "sharded", sharded=True, max_shard_bytes=2_000_000)
    index = json.loads((folder / INDEX_NAME).read_text())
    index["weight_map"]["blocks.9.ghost.weight"] = index["weight_map"]["head.modulation"]
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="does not contain them: blocks.9.ghost.weight"):
        load_dit(folder)
    del index["weight_map"]["blocks.9.ghost.weight"]
    del index["weight_map"]["head.modulation"]
    (folder / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CorruptCheckpointError, match="not in .*index.json: head.modulation"):
        load_dit(folder)


def test_folder_without_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CorruptCheckpointError, match=re.escape(INDEX_NAME)):
        load_dit(tmp_path)


def test_invalid_config_json_is_reported(state, tmp_path):
    folder = save_dit(state, tmp_path / "sharded", sharded=True)
    config = TINY.to_official_json() | {"model_type": "t2v"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid SteadyDancer config.*model_type='t2v'"):
        load_dit(folder)


def test_non_fp8_quantisation_formats_are_refused(state, tmp_path):
    fp8_state, _ = quantize_scaled_fp8(tiny_dit())
    conf = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    fp8_state["blocks.0.ffn.0.comfy_quant"] = conf
    write_safetensors(tmp_path / "nvfp4.safetensors", fp8_state)
    with pytest.raises(CheckpointError, match="'blocks.0.ffn.0' is quantised as 'nvfp4'"):
        load_dit(tmp_path / "nvfp4.safetensors", config=TINY)


def test_scale_without_weight_and_non_scalar_scale(state, tmp_path):
    for orphan_key in ("blocks.0.ffn.9.scale_weight", "blocks.0.ffn.9.input_scale"):
        write_safetensors(tmp_path / "orphan.safetensors", dict(state) | {orphan_key: torch.tensor(1.0)})
        with pytest.raises(CheckpointError, match=f"'{orphan_key}' has no weight 'blocks.0.ffn.9.weight'"):
            load_state_dict(tmp_path / "orphan.safetensors")
    per_row = dict(state) | {"blocks.0.ffn.0.scale_weight": torch.ones(512)}
    write_safetensors(tmp_path / "per_row.safetensors", per_row)
    with pytest.raises(CheckpointError, match="per-tensor scale"):
        load_state_dict(tmp_path / "per_row.safetensors")


def test_save_rejects_bad_requests(state, tmp_path):
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_dit(state, tmp_path / "dit.bin")
    with pytest.raises(ValueError, match="max_shard_bytes must be positive"):
        save_dit(state, tmp_path / "sharded", sharded=True, max_shard_bytes=0)
    meta = {k: torch.empty_like(v, device="meta") for k, v in state.items()}
    with pytest.raises(ValueError, match="meta device"):
        save_dit(meta, tmp_path / "meta.safetensors")
