"""Tiny random files under the names a UI workflow uses, so the real workflow runs in seconds.

The builders are the real-ComfyUI harness's (tests/comfyui): a tiny SteadyDancer DiT in the released
key layout (CLIP width of ViT-L), a random full-architecture Wan2.1 VAE, a random ViT-L CLIP vision
model and constant DWPose ONNX graphs. Text comes from saved embeds instead of the 11 GB umT5.
Needs ComfyUI importable (``harness.load_pack``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from steadydancer_core.model import TINY
from steadydancer_core.video import write_video
from tests.comfyui import harness
from tests.comfyui.tiny_models import CLIP_DIM, random_clip_vision_vitl, random_wan21_vae_state_dict, tiny_dit_state_dict
from tests.test_pose_detect_models import build_dwpose, build_yolox, simcc_for_keypoints, yolox_raw_output

#: Output size of the tiny run (multiples of 16, 4n+1 frames) and the driving clip it reads.
WIDTH, HEIGHT, LENGTH = 32, 48, 5
DRIVING_FRAMES = 13
STEPS = 2
#: Workflow (c) shrunk: 13 frames in segments of 5 carrying 1 = 3 segments.
LONG_LENGTH, SEGMENT_FRAMES = 13, 5


def widget_value(workflow: dict, node_type: str, index: int) -> object:
    """``widgets_values[index]`` of the one node of ``node_type`` (widget names are not in UI JSON)."""
    nodes = [node for node in workflow["nodes"] if node["type"] == node_type]
    if len(nodes) != 1:
        raise ValueError(f"expected one {node_type} node in the workflow, found {len(nodes)}")
    return nodes[0]["widgets_values"][index]


def _write_pose_models(folder: Path, detector_name: str, pose_name: str) -> None:
    # Constant graphs: one person box and 133 keypoints spread over the crop, all confident.
    simcc_x, simcc_y = simcc_for_keypoints((3 * np.arange(133) + 150) % 576, (5 * np.arange(133) + 200) % 768,
                                           np.full(133, 0.9, np.float32))
    build_yolox(folder / detector_name, yolox_raw_output([(200, 100, 440, 560)], [0.9]))
    build_dwpose(folder / pose_name, simcc_x, simcc_y)


def write_tiny_files(root: Path, workflow: dict, text_node_ids: list[int]) -> dict[int, str]:
    """Write the workflow's model and input files as tiny random ones under ``root``.

    Returns ``{CLIPTextEncode node id: embeds file name}`` for the text nodes to swap for the
    embeds loader.
    """
    models = root / "models"
    save_file(tiny_dit_state_dict(TINY.replace(clip_dim=CLIP_DIM)),
              str(models / "diffusion_models" / widget_value(workflow, "UNETLoader", 0)))
    save_file(random_wan21_vae_state_dict(), str(models / "vae" / widget_value(workflow, "VAELoader", 0)))
    save_file(random_clip_vision_vitl(), str(models / "clip_vision" / widget_value(workflow, "CLIPVisionLoader", 0)))
    _write_pose_models(models / "steadydancer_pose", widget_value(workflow, "SteadyDancerPoseDetectorLoader", 1),
                       widget_value(workflow, "SteadyDancerPoseDetectorLoader", 2))

    text_embeds = harness.pack_module("nodes.text_embeds")
    generator = torch.Generator().manual_seed(0)
    embeds_names = {}
    for node_id in text_node_ids:
        name = f"text_{node_id}.safetensors"
        text_embeds.conditioning_to_file([[torch.randn(1, 512, TINY.text_dim, generator=generator), {}]],
                                         str(models / "steadydancer_text_embeds" / name))
        embeds_names[node_id] = name

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)).save(
        root / "input" / widget_value(workflow, "LoadImage", 0))
    write_video(rng.integers(0, 255, (DRIVING_FRAMES, 96, 64, 3), dtype=np.uint8),
                root / "input" / widget_value(workflow, "SteadyDancerLoadVideo", 0), fps=16.0)
    return embeds_names
