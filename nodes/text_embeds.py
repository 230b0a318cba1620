"""Save / load text-encoder (T5) conditionings, so the 11 GB umT5-XXL need not be loaded every run.

File format (safetensors): tensor ``conditioning.<i>`` per conditioning entry, tensor-valued options
as ``conditioning.<i>.<key>``; the other options (numbers, strings, None) as JSON in the metadata
entry ``steadydancer_text_embeds``, which also marks the file as ours. Files are written atomically, and
an existing file is replaced only when the node's ``overwrite`` input is on (DESIGN D13).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import folder_paths
from comfy_api.latest import io

from ..steadydancer_core.atomic_output import atomic_path
from ..steadydancer_core.errors import InputError, OutputError
from .model_folders import TEXT_EMBEDS, default_folder

CATEGORY = "SteadyDancer"
METADATA_KEY = "steadydancer_text_embeds"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[\w\-. ]+$")


def _check_conditioning(conditioning: Any) -> None:
    """A CONDITIONING is a non-empty list of [tensor, options dict] pairs."""
    if not isinstance(conditioning, list) or not conditioning:
        raise InputError("conditioning: the conditioning to save is empty; connect a CLIP Text Encode output")
    for index, entry in enumerate(conditioning):
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], torch.Tensor)
                or not isinstance(entry[1], dict)):
            raise InputError(f"conditioning: entry {index} is not a [tensor, options] pair (got "
                             f"{type(entry).__name__}); connect a CLIP Text Encode output")


def conditioning_to_file(conditioning: list, path: str) -> None:
    """Write ``conditioning`` to ``path`` atomically (a failed save leaves an earlier file as it was)."""
    _check_conditioning(conditioning)
    tensors: dict[str, torch.Tensor] = {}
    options: list[dict[str, Any]] = []
    for index, (cond, extras) in enumerate(conditioning):
        tensors[f"conditioning.{index}"] = cond.detach().cpu().contiguous()
        plain: dict[str, Any] = {}
        for key, value in extras.items():
            if isinstance(value, torch.Tensor):
                tensors[f"conditioning.{index}.{key}"] = value.detach().cpu().contiguous()
            elif value is None or isinstance(value, (bool, int, float, str)):
                plain[key] = value
            else:
                raise InputError(f"conditioning: cannot save conditioning option {key!r} of type "
                                 f"{type(value).__name__}: save the text-encoder output before other nodes add "
                                 "image/video inputs")
        options.append(plain)
    metadata = {METADATA_KEY: json.dumps({"version": FORMAT_VERSION, "options": options})}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def conditioning_from_file(path: str) -> list:
    try:
        handle = safe_open(path, framework="pt")
    except (SafetensorError, OSError) as error:
        raise InputError(f"embeds: cannot read {path} ({error}); save it again with 'SteadyDancer Save Text "
                         "Embeds'") from None
    with handle:
        header = (handle.metadata() or {}).get(METADATA_KEY)
        if header is None:
            raise InputError(f"embeds: {path} is not a SteadyDancer text-embeds file (no {METADATA_KEY!r} metadata); "
                             "create it with 'SteadyDancer Save Text Embeds'")
        info = json.loads(header)
        if info.get("version") != FORMAT_VERSION:
            raise InputError(f"embeds: {path}: text-embeds format version {info.get('version')} is not supported "
                             f"(expected {FORMAT_VERSION})")
        keys = set(handle.keys())
        conditioning = []
        for index, options in enumerate(info["options"]):
            name = f"conditioning.{index}"
            if name not in keys:
                raise InputError(f"embeds: {path} is incomplete: tensor {name!r} is missing")
            extras = dict(options)
            prefix = name + "."
            for key in keys:
                if key.startswith(prefix):
                    extras[key[len(prefix):]] = handle.get_tensor(key)
            conditioning.append([handle.get_tensor(name), extras])
    return conditioning


class SteadyDancerSaveTextEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerSaveTextEmbeds",
            display_name="SteadyDancer Save Text Embeds",
            category=CATEGORY,
            description="Save a text-encoder conditioning to models/steadydancer_text_embeds/<name>.safetensors "
                        "for 'SteadyDancer Load Text Embeds'.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="Output of CLIP Text Encode (umT5-XXL)."),
                io.String.Input("name", default="prompt", tooltip="File name (without extension)."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of that name. "
                                 "Off: an existing file is kept and the node stops with an error naming it."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning: list, name: str, overwrite: bool = False) -> io.NodeOutput:
        if not _NAME.match(name) or name.startswith("."):
            raise InputError(f"name: {name!r} must be a plain file name (letters, digits, - _ . space)")
        _check_conditioning(conditioning)
        path = os.path.join(default_folder(TEXT_EMBEDS), name + ".safetensors")
        if os.path.exists(path) and not overwrite:
            raise OutputError(f"name: {path} already exists; choose another name or turn on 'overwrite' to "
                              "replace it")
        conditioning_to_file(conditioning, path)
        return io.NodeOutput(conditioning)


class SteadyDancerLoadTextEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerLoadTextEmbeds",
            display_name="SteadyDancer Load Text Embeds",
            category=CATEGORY,
            description="Load a conditioning saved by 'SteadyDancer Save Text Embeds' (no text encoder needed).",
            inputs=[
                io.Combo.Input("embeds", options=folder_paths.get_filename_list(TEXT_EMBEDS),
                               tooltip="A file in models/steadydancer_text_embeds."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, embeds: str) -> io.NodeOutput:
        return io.NodeOutput(conditioning_from_file(folder_paths.get_full_path_or_raise(TEXT_EMBEDS, embeds)))
