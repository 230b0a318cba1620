"""The shipped workflows in ``workflows/``: UI (LiteGraph) JSON versus API (prompt) JSON."""
from __future__ import annotations

import json
from pathlib import Path

from tests.comfyui.harness import REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / "workflows"


def is_ui_workflow(document: object) -> bool:
    """UI format: a LiteGraph graph with ``nodes`` and ``links`` lists (API format maps ids to nodes)."""
    return isinstance(document, dict) and isinstance(document.get("nodes"), list) and "links" in document


def is_api_workflow(document: object) -> bool:
    return isinstance(document, dict) and bool(document) and all(
        isinstance(node, dict) and "class_type" in node for node in document.values())


def _load(path: Path) -> object:
    return json.loads(path.read_text())


def ui_workflow_paths() -> list[Path]:
    return sorted(p for p in WORKFLOWS_DIR.glob("**/*.json") if is_ui_workflow(_load(p)))


def api_workflow_paths() -> list[Path]:
    return sorted(p for p in WORKFLOWS_DIR.glob("**/*.json") if is_api_workflow(_load(p)))


def api_counterpart(ui_path: Path) -> Path:
    """The API JSON shipped with a UI workflow: ``<name>_api.json`` beside ``<name>.json``."""
    return ui_path.with_name(f"{ui_path.stem}_api.json")


def comparable_prompt(prompt: dict, object_info: dict) -> dict[str, tuple[str, dict]]:
    """``{node id: (class_type, inputs)}`` with links as ``[str(id), slot]``, titles/_meta dropped.

    Only inputs the server defines for the node are kept: the frontend also sends the values of
    its own display widgets (e.g. ``video-preview`` of video loaders), which the server ignores.
    """
    comparable = {}
    for node_id, node in prompt.items():
        spec = object_info[node["class_type"]]["input"]
        defined = set(spec.get("required", {})) | set(spec.get("optional", {}))
        comparable[str(node_id)] = (node["class_type"], {
            name: [str(value[0]), value[1]] if isinstance(value, list) and len(value) == 2 else value
            for name, value in node["inputs"].items() if name in defined})
    return comparable
