"""Save / Load Text Embeds nodes in real ComfyUI (needs COMFYUI_PATH; skips otherwise)."""
from __future__ import annotations

import pytest
import torch
from cli_checks import tree_digest

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
    passed = text_embeds.SteadyDancerSaveTextEmbeds.execute(conditioning, "my prompt", False).result[0]
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


def _conditioning(seed: int) -> list:
    return [[torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(seed)), {}]]


def test_an_existing_file_is_replaced_only_with_overwrite(text_embeds, embeds_folder):
    save = text_embeds.SteadyDancerSaveTextEmbeds.execute
    save(_conditioning(0), "walk", False)
    before = tree_digest(embeds_folder)
    with pytest.raises(text_embeds.OutputError, match="walk.safetensors already exists; choose another name or turn on "
                                                      "'overwrite'"):
        save(_conditioning(1), "walk", False)
    assert tree_digest(embeds_folder) == before
    # A save that fails half-way (an option it cannot store) leaves the earlier file, even with overwrite.
    with pytest.raises(ValueError, match="cannot save conditioning option 'clip_vision_output'"):
        save([[torch.zeros(1, 2, 3), {"clip_vision_output": object()}]], "walk", True)
    assert tree_digest(embeds_folder) == before
    save(_conditioning(1), "walk", True)
    loaded = text_embeds.SteadyDancerLoadTextEmbeds.execute("walk.safetensors").result[0]
    assert torch.equal(loaded[0][0], _conditioning(1)[0][0])
    assert [p.name for p in embeds_folder.iterdir()] == ["walk.safetensors"]  # no partial file left


@pytest.mark.parametrize("conditioning, name, message", [
    ([], "x", "conditioning: the conditioning to save is empty"),
    ("not a conditioning", "x", "conditioning: the conditioning to save is empty"),
    ([torch.zeros(1, 2, 3)], "x", "conditioning: entry 0 is not a [tensor, options] pair"),
    ([[torch.zeros(1, 2, 3), "opts"]], "x", "conditioning: entry 0 is not a [tensor, options] pair"),
    ([[torch.zeros(1, 2, 3), {"clip_vision_output": object()}]], "x",
     "conditioning: cannot save conditioning option 'clip_vision_output'"),
    ([[torch.zeros(1, 2, 3), {}]], "../escape", "name: '../escape' must be a plain file name"),
    ([[torch.zeros(1, 2, 3), {}]], ".hidden", "name: '.hidden' must be a plain file name"),
    ([[torch.zeros(1, 2, 3), {}]], "", "name: '' must be a plain file name"),
], ids=["empty", "not a list", "bare tensor", "options not a dict", "unsavable option", "path", "hidden", "no name"])
def test_save_refuses_bad_inputs_naming_the_input(conditioning, name, message, text_embeds, embeds_folder):
    with pytest.raises(ValueError) as error:
        text_embeds.SteadyDancerSaveTextEmbeds.execute(conditioning, name, True)
    assert str(error.value).startswith(message), str(error.value)
    assert list(embeds_folder.iterdir()) == []


@pytest.mark.parametrize("content, message", [
    (None, "embeds: {path} is not a SteadyDancer text-embeds file"),
    (b"", "embeds: cannot read {path}"),
    (b"plain text", "embeds: cannot read {path}"),
], ids=["foreign safetensors", "zero bytes", "text file"])
def test_load_refuses_files_that_are_not_text_embeds(content, message, text_embeds, embeds_folder):
    from safetensors.torch import save_file

    path = embeds_folder / "other.safetensors"
    if content is None:
        save_file({"x": torch.zeros(1)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        text_embeds.SteadyDancerLoadTextEmbeds.execute("other.safetensors")
    assert str(error.value).startswith(message.format(path=path)), str(error.value)
