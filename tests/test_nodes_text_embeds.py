"""Save / Load Text Embeds nodes in real ComfyUI (needs COMFYUI_PATH; skips otherwise)."""
from __future__ import annotations

import pytest
import torch

from tests.comfyui import harness


@pytest.fixture(scope="module", autouse=True)
def text_embeds():
    return harness.pack_module("nodes.text_embeds")


@pytest.fixture()
def embeds_folder(tmp_path, monkeypatch):
    """Point the pack's text-embeds folder at a temporary directory (ComfyUI's registry, restored after)."""
    import folder_paths

    name = harness.pack_module("nodes.model_folders").TEXT_EMBEDS
    monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path


def test_round_trip_through_nodes(text_embeds, embeds_folder):
    g = torch.Generator().manual_seed(0)
    conditioning = [[torch.randn(1, 512, 64, generator=g).to(torch.bfloat16),
                     {"pooled_output": None, "attention_mask": torch.ones(1, 512, dtype=torch.int64)}],
                    [torch.randn(1, 512, 64, generator=g), {"strength": 0.5}]]
    passed = text_embeds.SteadyDancerSaveTextEmbeds.execute(conditioning, "my prompt").result[0]
    assert passed is conditioning
    assert (embeds_folder / "my prompt.safetensors").is_file()

    schema = text_embeds.SteadyDancerLoadTextEmbeds.define_schema()
    assert "my prompt.safetensors" in schema.inputs[0].options
    loaded = text_embeds.SteadyDancerLoadTextEmbeds.execute("my prompt.safetensors").result[0]
    assert len(loaded) == 2
    assert loaded[0][0].dtype == torch.bfloat16 and torch.equal(loaded[0][0], conditioning[0][0])
    assert loaded[0][1]["pooled_output"] is None
    assert torch.equal(loaded[0][1]["attention_mask"], conditioning[0][1]["attention_mask"])
    assert torch.equal(loaded[1][0], conditioning[1][0]) and loaded[1][1] == {"strength": 0.5}


def test_foreign_file_and_bad_names_are_refused(text_embeds, embeds_folder):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(embeds_folder / "other.safetensors"))
    with pytest.raises(ValueError, match="not a SteadyDancer text-embeds file"):
        text_embeds.SteadyDancerLoadTextEmbeds.execute("other.safetensors")
    with pytest.raises(ValueError, match="plain file name"):
        text_embeds.SteadyDancerSaveTextEmbeds.execute([[torch.zeros(1, 2, 3), {}]], "../escape")
    with pytest.raises(ValueError, match="cannot save conditioning option 'clip_vision_output'"):
        text_embeds.SteadyDancerSaveTextEmbeds.execute([[torch.zeros(1, 2, 3), {"clip_vision_output": object()}]],
                                                       "x")
