"""How far the ComfyUI inputs are from the official pipeline's, before and after the official preparation.

On an official example (reference + its official pose pictures, ``../shared/data/official_examples``) at the
authors' 1024x576 area, prints the maximum absolute differences against the official preparation
(``steadydancer_core.official_inputs``, which the standalone path uses):

* CLIP pixels: core *CLIP Vision Encode* (``crop = none``) vs the official transform, for the reference and the
  first pose picture; and what *SteadyDancer CLIP Vision Encode* feeds the tower (recorded in the node);
* CLIP features of a small random tower (224 px, patch 14, 257 tokens; random, so only a size indication):
  core *CLIP Vision Encode* vs *SteadyDancer CLIP Vision Encode*;
* pose pictures in [-1, 1]: the straight bicubic resize to the output size vs the official two-step resize,
  and what *SteadyDancer Image To Video* encodes now (``official_pose_frames``);
* the flow shift a SteadyDancer file gets from core *Load Diffusion Model*.

Needs ComfyUI: ``COMFYUI_PATH=/path/to/ComfyUI .venv-comfy/bin/python benchmarks/bench_comfy_inputs.py``.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steadydancer_core import official_inputs  # noqa: E402
from steadydancer_core.conditioning import output_size, resize_bicubic  # noqa: E402
from steadydancer_core.model import TINY, SteadyDancerDiT  # noqa: E402

EXAMPLE = REPO.parent / "shared" / "data" / "official_examples" / "video00002_img00002"
CLIP_TOWER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 224, "patch_size": 14, "projection_dim": 16, "hidden_act": "gelu", "num_channels": 3,
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model"}


def load_pack(comfyui: Path):
    """ComfyUI's ``nodes`` and this pack, loaded by ComfyUI's own loader (CPU mode)."""
    sys.path.insert(0, str(comfyui))
    importlib.import_module("comfy.cli_args").args.cpu = True
    sys.modules.pop("nodes", None)  # this repo's nodes/ package must not shadow ComfyUI's
    comfy_nodes = importlib.import_module("nodes")
    if not asyncio.run(comfy_nodes.load_custom_node(str(REPO))):
        raise SystemExit("ComfyUI failed to load the pack")
    return str(REPO).replace(".", "_x_")


def random_tower(folder: Path):
    import comfy.clip_vision

    config = folder / "tower.json"
    config.write_text(json.dumps(CLIP_TOWER))
    tower = comfy.clip_vision.ClipVisionModel(str(config))
    g = torch.Generator().manual_seed(0)
    tower.load_sd({k: (torch.ones_like(v) if k.endswith("norm1.weight") or k.endswith("norm2.weight")
                       or "layrnorm.weight" in k or "layernorm.weight" in k else torch.randn(v.shape, generator=g) * 0.05)
                   for k, v in tower.model.state_dict().items()})
    return tower


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=EXAMPLE)
    parser.add_argument("--max-area", type=int, default=1024 * 576)
    parser.add_argument("--frames", type=int, default=81, help="pose pictures compared (from the first)")
    args = parser.parse_args()
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout")
    pack = load_pack(Path(comfyui))
    import comfy.clip_vision
    import comfy.sd

    clip_node = importlib.import_module(f"{pack}.nodes.clip_vision")
    i2v = importlib.import_module(f"{pack}.nodes.image_to_video")

    reference = np.asarray(Image.open(args.example / "ref_image.png").convert("RGB"))
    pose_files = sorted((args.example / "positive").glob("*.jpg"))[:args.frames]
    first_pose = np.asarray(Image.open(pose_files[0]).convert("RGB"))
    ref_hw = reference.shape[:2]
    height, width = output_size(ref_hw[0], ref_hw[1], args.max_area)
    print(f"example {args.example.name}: reference {ref_hw[1]}x{ref_hw[0]}, pose pictures "
          f"{first_pose.shape[1]}x{first_pose.shape[0]}, output {width}x{height}")

    # ---- CLIP pixels
    as_image = lambda frames: torch.from_numpy(np.ascontiguousarray(frames)).float() / 255.0  # noqa: E731
    official_pixels = official_inputs.ClipPreprocess(224)(
        official_inputs.clip_images(official_inputs.frames_to_model_range(reference[None]), first_pose))
    core_node_pixels = [comfy.clip_vision.clip_preprocess(as_image(image[None]), size=224, crop=False)
                        for image in (reference, first_pose)]
    with tempfile.TemporaryDirectory() as tmp:
        tower = random_tower(Path(tmp))
        recorded = []
        network = tower.model
        tower.model = lambda pixel_values, **kw: recorded.append(pixel_values) or network(pixel_values=pixel_values, **kw)
        node_out = clip_node.SteadyDancerClipVisionEncode.execute(tower, as_image(reference[None]),
                                                                  as_image(first_pose[None])).result
        tower.model = network
        with torch.no_grad():
            core_out = [tower.encode_image(as_image(image[None]), crop=False) for image in (reference, first_pose)]
    for i, name in enumerate(("reference", "first pose")):
        print(f"CLIP pixels, {name}: core CLIP Vision Encode vs official {max_abs(core_node_pixels[i], official_pixels[i:i + 1]):.4g}; "
              f"SteadyDancer CLIP Vision Encode vs official {max_abs(recorded[0][i:i + 1], official_pixels[i:i + 1]):.4g}")
        print(f"CLIP features (random 224 px tower), {name}: core CLIP Vision Encode vs SteadyDancer CLIP Vision "
              f"Encode {max_abs(core_out[i].penultimate_hidden_states, node_out[i].penultimate_hidden_states):.4g} "
              f"(feature magnitude {float(node_out[i].penultimate_hidden_states.abs().max()):.3g})")

    # ---- pose pictures, frame by frame (the whole sequence would not fit in memory as floats)
    straight = ours = 0.0
    for path in pose_files:
        frame = np.asarray(Image.open(path).convert("RGB"))[None]
        official = official_inputs.pose_pictures(frame, ref_hw, height, width)
        direct = resize_bicubic(official_inputs.frames_to_model_range(frame), height, width)
        node = i2v.official_pose_frames(as_image(frame), ref_hw, width, height).movedim(-1, 1) * 2 - 1
        straight, ours = max(straight, max_abs(direct, official)), max(ours, max_abs(node, official))
    print(f"pose pictures over {len(pose_files)} frames, [-1, 1]: straight resize vs official {straight:.4g}; "
          f"Image To Video now vs official {ours:.3g}")

    # ---- shift
    torch.manual_seed(0)
    model = comfy.sd.load_diffusion_model_state_dict(SteadyDancerDiT(TINY).state_dict())
    print(f"shift of a SteadyDancer file from Load Diffusion Model: {float(model.get_model_object('model_sampling').shift):g}")


if __name__ == "__main__":
    main()
