"""Where the real ComfyUI frontend and the browser live, and why a browser test cannot run.

Each ComfyUI pins one ``comfyui-frontend-package`` version in its requirements.txt.
``tests/comfyui/browser_env.sh`` installs that version beside the ComfyUI folder as
``<ComfyUI>/../frontend-<version>/comfyui_frontend_package/static``; ``COMFYUI_FRONTEND_ROOT``
overrides the folder (a ``static`` folder of any frontend build).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

CHROMIUM_DEFAULT = "/usr/bin/chromium"

#: Flags for a headless Chromium in a container without network: no sandbox (root in a
#: container), no GPU, and nothing that phones home or syncs.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pinned_frontend_version(comfyui: Path) -> str:
    """The ``comfyui-frontend-package`` version pinned by ``<comfyui>/requirements.txt``."""
    requirements = comfyui / "requirements.txt"
    match = re.search(r"^comfyui-frontend-package==(\S+)\s*$", requirements.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{requirements} pins no comfyui-frontend-package==<version>")
    return match.group(1)


def frontend_root(comfyui: Path) -> Path:
    """The frontend ``static`` folder to serve with ``--front-end-root`` for this ComfyUI."""
    override = os.environ.get("COMFYUI_FRONTEND_ROOT")
    if override:
        return Path(override)
    version = pinned_frontend_version(comfyui)
    return comfyui.resolve().parent / f"frontend-{version}" / "comfyui_frontend_package" / "static"


def chromium_path() -> Path:
    return Path(os.environ.get("CHROMIUM_PATH", CHROMIUM_DEFAULT))


def missing_browser_parts(comfyui: Path) -> list[str]:
    """What is missing for a browser test against ``comfyui`` (empty when everything is there)."""
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the Python package 'playwright' is not installed in this environment")
    browser = chromium_path()
    if not (browser.is_file() or shutil.which(str(browser))):
        missing.append(f"no Chromium at {browser} (apt-get install chromium, or set CHROMIUM_PATH)")
    try:
        static = frontend_root(comfyui)
    except (OSError, ValueError) as error:
        missing.append(f"cannot tell which frontend {comfyui} needs: {error}")
    else:
        if not (static / "index.html").is_file():
            missing.append(f"no ComfyUI frontend build at {static} (run tests/comfyui/browser_env.sh)")
    return missing
