"""ComfyUI for the browser tests: G's real ``main.py`` server (tests/comfyui/server.py) with the real
frontend, the pack in a ``custom_nodes`` folder and frontend settings for an unattended browser.

The pack is loaded the way users install it: a folder in ``custom_nodes/`` (here a symlink to the
checkout, named by an extra_model_paths yaml together with the model folders). Everything ComfyUI
writes lives under ``root``, so a test never touches the ComfyUI checkout.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.comfyui.harness import REPO_ROOT
from tests.comfyui.server import ComfyServer, start_server

#: Frontend settings for an unattended browser: no first-run template picker, no minimap over the
#: graph, no release pop-ups (they query the internet), the file's schema validated on load (the
#: default, made explicit: the tests rely on its warning), and node text drawn at any zoom (the
#: level-of-detail switch would blank it in screenshots of a whole workflow).
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Validation.Workflows": True,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}

#: Node id the page waits for: proves the pack was imported and the app has the node definitions.
PACK_PROBE_NODE = "SteadyDancerImageToVideo"

#: Model folders served from ``root/models/<name>`` (core names and the pack's own).
MODEL_FOLDERS = ("diffusion_models", "vae", "clip_vision", "text_encoders", "loras",
                 "steadydancer_text_embeds", "steadydancer_pose")


def models_dir(root: Path) -> Path:
    return root / "models"


def prepare_root(root: Path) -> Path:
    """Folders, the pack link, the model-paths yaml and the user settings; returns the yaml."""
    (root / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = root / "custom_nodes" / "ComfyUI-SteadyDancer"
    if not link.exists():
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    for name in MODEL_FOLDERS:
        (models_dir(root) / name).mkdir(parents=True, exist_ok=True)
    (root / "input").mkdir(exist_ok=True)
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text("steadydancer_browser:\n"
                    f"  base_path: {root}\n"
                    "  is_default: true\n"
                    "  custom_nodes: custom_nodes\n"
                    + "".join(f"  {name}: models/{name}\n" for name in MODEL_FOLDERS))
    user = root / "user" / "default"  # --user-directory root/user; settings of the default user
    user.mkdir(parents=True, exist_ok=True)
    (user / "comfy.settings.json").write_text(json.dumps(FRONTEND_SETTINGS))
    return yaml


def start_browser_server(comfyui: Path, root: Path, front_end_root: Path) -> ComfyServer:
    """Start ComfyUI serving ``front_end_root``; fails with the log if the pack did not load."""
    server = start_server(comfyui, root, prepare_root(root), front_end_root=front_end_root)
    status, listed = server.request("GET", f"/object_info/{PACK_PROBE_NODE}")
    if status != 200 or PACK_PROBE_NODE not in (listed or {}):
        server.stop()
        raise RuntimeError(f"ComfyUI runs but does not list {PACK_PROBE_NODE} (pack import failed?):\n"
                           f"{server.log_tail()}")
    return server
