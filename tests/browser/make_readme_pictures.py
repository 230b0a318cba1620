"""Regenerate the README pictures in ``docs/images/``.

* ``workflow_<name>.png``: each shipped UI workflow as ComfyUI's real frontend draws it after loading
  the file (same path as the browser test: real ``main.py`` + headless Chromium).
* ``pose_preview.png``: reference | aligned pose | negative pose | driving frame, made by the
  ``poses`` command (mediapipe backend, offline) on an official example.

Usage (from the repo root; environments as in tests/browser/README.md):
    COMFYUI_PATH=/work/comfyui/0.8.0 .venv-comfy/bin/python tests/browser/make_readme_pictures.py
Options: ``--only workflows|pose``, ``--mediapipe-python`` (default .venv-mediapipe/bin/python),
``--example`` (official example folder), ``--frame`` (which frame of the pose preview).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script: make `tests.` and `steadydancer_core` importable
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from steadydancer_core.video import read_video  # noqa: E402
from tests.browser.comfy_page import ComfyPage, headless_chromium  # noqa: E402
from tests.browser.frontend import frontend_root, missing_browser_parts  # noqa: E402
from tests.browser.server import PACK_PROBE_NODE, start_browser_server  # noqa: E402
from tests.browser.workflow_files import ui_workflow_paths  # noqa: E402

IMAGES_DIR = REPO_ROOT / "docs" / "images"
DEFAULT_EXAMPLE = REPO_ROOT.parent / "shared" / "data" / "official_examples" / "video00001_img00001"
#: README pictures stay small: palette PNGs under this size.
MAX_BYTES = 300_000
#: Pose preview: frames run through the pose pipeline (4n+1) and panel height in the picture.
POSE_FRAMES = 17
PANEL_HEIGHT = 384


def save_small_png(image: Image.Image, path: Path) -> None:
    """Save as a 256-colour PNG, shrinking until it is under MAX_BYTES (UI shots and poses have few colours)."""
    while True:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            return
        image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.Resampling.LANCZOS)


def workflow_pictures(comfyui: Path, out_dir: Path) -> list[Path]:
    missing = missing_browser_parts(comfyui)
    if missing:
        raise SystemExit("cannot take workflow screenshots: " + "; ".join(missing))
    written = []
    with tempfile.TemporaryDirectory(prefix="sd-readme-") as base:
        server = start_browser_server(comfyui, Path(base), frontend_root(comfyui))
        try:
            with headless_chromium() as page:
                app = ComfyPage(page, server.url)
                app.open(PACK_PROBE_NODE)
                for path in ui_workflow_paths():
                    problems = app.load_workflow(json.loads(path.read_text()), path.name)
                    if problems:
                        raise SystemExit(f"{path.name} does not load cleanly: {problems}")
                    shot = Path(base) / f"{path.stem}.png"
                    app.screenshot(shot)
                    target = out_dir / f"workflow_{path.stem}.png"
                    save_small_png(Image.open(shot), target)
                    written.append(target)
        finally:
            server.stop()
    return written


def _fit_height(image: np.ndarray, height: int) -> Image.Image:
    picture = Image.fromarray(image)
    return picture.resize((max(1, round(picture.width * height / picture.height)), height), Image.Resampling.LANCZOS)


def pose_picture(example: Path, mediapipe_python: Path, frame: int, out_dir: Path) -> Path:
    """Run the ``poses`` command (mediapipe) on the example; compose one frame's panels side by side."""
    with tempfile.TemporaryDirectory(prefix="sd-poses-") as work:
        out = Path(work) / "poses"
        command = [str(mediapipe_python), "-m", "steadydancer_core", "poses", "--backend", "mediapipe",
                   "--ref", str(example / "ref_image.png"), "--driving", str(example / "driving_video.mp4"),
                   "--frames", str(POSE_FRAMES), "--out", str(out), "--no-preview", "--no-progress"]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:  # mediapipe logs a lot on stderr: show it only when the command failed
            raise SystemExit(f"poses command failed ({done.returncode}):\n{done.stderr[-4000:]}")
        reference = np.asarray(Image.open(example / "ref_image.png").convert("RGB"))
        positive = np.asarray(Image.open(out / "positive" / f"{frame:04d}.png").convert("RGB"))
        negative = np.asarray(Image.open(out / "negative" / f"{frame:04d}.png").convert("RGB"))
        driving, _ = read_video(example / "driving_video.mp4", fps=16, max_frames=POSE_FRAMES)
        panels = [_fit_height(image, PANEL_HEIGHT) for image in (reference, positive, negative, driving[frame])]
    gap = 8
    sheet = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), PANEL_HEIGHT), "white")
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + gap
    target = out_dir / "pose_preview.png"
    save_small_png(sheet, target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["workflows", "pose"])
    parser.add_argument("--out", type=Path, default=IMAGES_DIR)
    parser.add_argument("--mediapipe-python", type=Path, default=REPO_ROOT / ".venv-mediapipe" / "bin" / "python")
    parser.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE)
    parser.add_argument("--frame", type=int, default=12, help=f"pose preview frame (< {POSE_FRAMES})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if args.only in (None, "workflows"):
        comfyui = os.environ.get("COMFYUI_PATH")
        if not comfyui:
            raise SystemExit("set COMFYUI_PATH to a ComfyUI folder (tests/comfyui/README.md)")
        written += workflow_pictures(Path(comfyui), args.out)
    if args.only in (None, "pose"):
        written.append(pose_picture(args.example, args.mediapipe_python, args.frame, args.out))
    for path in written:
        print(f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
