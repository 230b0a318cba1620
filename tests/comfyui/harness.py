"""Import the real ComfyUI named by ``COMFYUI_PATH`` and load this pack the way ComfyUI does.

Tests that need ComfyUI call :func:`load_pack` (it skips, printing why, when ``COMFYUI_PATH`` is
unset or unusable). Nothing of ComfyUI is imitated: the pack is imported by ComfyUI's own
``nodes.load_custom_node`` and the models are built with ComfyUI's own loaders.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value) if value else None


def skip_without_comfyui() -> Path:
    path = comfyui_path()
    if path is None:
        reason = "COMFYUI_PATH is not set (see tests/comfyui/README.md); real-ComfyUI tests skipped"
        print(reason)
        pytest.skip(reason)
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no main.py / comfy/)")
    return path


def _import_comfy_nodes(path: Path) -> ModuleType:
    """ComfyUI's ``nodes`` module; our repo also has a ``nodes`` package, so ComfyUI must win."""
    if str(path) in sys.path:
        sys.path.remove(str(path))
    sys.path.insert(0, str(path))
    # Tests run on the CPU (as `main.py --cpu`): set before comfy.model_management picks a device.
    cli_args = importlib.import_module("comfy.cli_args")
    cli_args.args.cpu = True
    loaded = sys.modules.get("nodes")
    if loaded is not None and not hasattr(loaded, "load_custom_node"):
        del sys.modules["nodes"]
    return importlib.import_module("nodes")


_PACK: ModuleType | None = None


def load_pack() -> ModuleType:
    """The pack module as ComfyUI loads it (``load_custom_node`` on the repo folder)."""
    global _PACK
    path = skip_without_comfyui()
    if _PACK is None:
        comfy_nodes = _import_comfy_nodes(path)
        if not asyncio.run(comfy_nodes.load_custom_node(str(REPO_ROOT))):
            pytest.fail("ComfyUI failed to load the pack (see the log above)")
        _PACK = sys.modules[str(REPO_ROOT).replace(".", "_x_")]
    return _PACK


def pack_module(name: str) -> ModuleType:
    """A submodule of the loaded pack, e.g. ``pack_module('nodes.image_to_video')``."""
    pack = load_pack()
    return importlib.import_module(f"{pack.__name__}.{name}")


_GGUF_PACK: ModuleType | None = None


def load_gguf_pack() -> ModuleType:
    """city96's ComfyUI-GGUF from ``COMFYUI_GGUF_PATH`` (an export of city96/ComfyUI-GGUF), loaded by ComfyUI.

    Skips, printing why, when the variable is unset (see tests/comfyui/README.md); our pack loads first.
    """
    global _GGUF_PACK
    load_pack()
    value = os.environ.get("COMFYUI_GGUF_PATH")
    if not value:
        reason = "COMFYUI_GGUF_PATH is not set (see tests/comfyui/README.md); GGUF tests skipped"
        print(reason)
        pytest.skip(reason)
    path = Path(value)
    if not (path / "loader.py").is_file() or not (path / "nodes.py").is_file():
        pytest.fail(f"COMFYUI_GGUF_PATH={path} is not a ComfyUI-GGUF export (no loader.py / nodes.py)")
    if _GGUF_PACK is None:
        comfy_nodes = sys.modules["nodes"]
        if not asyncio.run(comfy_nodes.load_custom_node(str(path))):
            pytest.fail("ComfyUI failed to load ComfyUI-GGUF (is the gguf package installed?)")
        _GGUF_PACK = sys.modules[str(path).replace(".", "_x_")]
    return _GGUF_PACK
