"""Writes the example workflows, each as a UI (drag-and-drop) JSON and the matching API JSON.

One description per workflow (nodes, widget values in the order ComfyUI lists them, links) is
turned into both formats so the two can never drift apart; ``tests/comfyui/test_e2e_workflows.py``
checks both against a running ComfyUI's ``/object_info`` and runs tiny versions of (a) and (c).

    python workflows/build_workflows.py        # rewrites workflows/*.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: Widgets the frontend follows with a hidden "control_after_generate" value ("fixed" here).
CONTROL_AFTER_GENERATE = {("SteadyDancerKSampler", "seed"), ("SteadyDancerPosePipeline", "seed"),
                          ("SteadyDancerLongVideo", "seed")}
#: Upload combos add an upload button widget, whose value ("image") comes after all other widgets.
UPLOAD_WIDGETS = {("LoadImage", "image"), ("SteadyDancerLoadVideo", "video")}

# The official I2V negative prompt (Wan2.1 default with the I2V prefix), used by the authors.
OFFICIAL_NEGATIVE_PROMPT = (
    "镜头晃动，色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走")


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: list[tuple[str, Any]] = field(default_factory=list)
    inputs: list[tuple[str, str, tuple[int, int] | None]] = field(default_factory=list)  # name, type, (src, slot)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    title: str | None = None


def ui_workflow(nodes: list[Node]) -> dict[str, Any]:
    by_id = {n.id: n for n in nodes}
    links: list[list[Any]] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    ui_nodes = []
    for order, node in enumerate(nodes):
        inputs = []
        for slot, (name, socket_type, source) in enumerate(node.inputs):
            link_id = None
            if source is not None:
                link_id = len(links) + 1
                src, src_slot = source
                assert by_id[src].outputs[src_slot][1] == socket_type, (node.id, name)
                links.append([link_id, src, src_slot, node.id, slot, socket_type])
                out_links.setdefault((src, src_slot), []).append(link_id)
            inputs.append({"name": name, "type": socket_type, "link": link_id})
        values: list[Any] = []
        for name, value in node.widgets:
            values.append(value)
            if (node.type, name) in CONTROL_AFTER_GENERATE:
                values.append("fixed")
        # The frontend adds the upload button as a widget after ALL of the node's widgets.
        if any((node.type, name) in UPLOAD_WIDGETS for name, _ in node.widgets):
            values.append("image")
        ui_nodes.append({
            "id": node.id, "type": node.type, "pos": list(node.pos), "size": [320, 60 + 26 * (len(values) + len(inputs))],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [],
            "properties": {"Node name for S&R": node.type}, "widgets_values": values,
            **({"title": node.title} if node.title else {}),
        })
    for ui_node, node in zip(ui_nodes, nodes):
        ui_node["outputs"] = [{"name": name, "type": socket_type, "links": out_links.get((node.id, slot), []),
                               "slot_index": slot} for slot, (name, socket_type) in enumerate(node.outputs)]
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def api_workflow(nodes: list[Node]) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for node in nodes:
        inputs: dict[str, Any] = dict(node.widgets)
        for name, _, source in node.inputs:
            if source is not None:
                inputs[name] = [str(source[0]), source[1]]
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": node.title or node.type}}
    return prompt


# ---- shared pieces --------------------------------------------------------------------------------

IMAGE, MASK, VIDEO, INT, FLOAT = "IMAGE", "MASK", "VIDEO", "INT", "FLOAT"
MODEL, CLIP, VAE, COND, LATENT = "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT"
CLIP_VISION, CLIP_VISION_OUTPUT = "CLIP_VISION", "CLIP_VISION_OUTPUT"
DETECTOR, POSE_KEYPOINT = "STEADYDANCER_POSE_DETECTOR", "POSE_KEYPOINT"


def source_nodes(*, width: int, height: int, length: int, shift: float | None, prompt: str,
                 lora: str | None) -> tuple[list[Node], tuple[int, int]]:
    """Nodes 1-12 (+ 19 with a LoRA, + 13 ModelSamplingSD3 when ``shift`` is given): inputs, poses, CLIP vision,
    text, VAE and the model; returns them and the (node, slot) of the model the sampler takes."""
    model_source = (12, 0)
    # Driving video sits in a column of its own: the frontend grows it by the video preview once a
    # file is chosen, so nothing may lie below it.
    nodes = [
        Node(1, "LoadImage", (0, 0), [("image", "reference.png")], outputs=[("IMAGE", IMAGE), ("MASK", MASK)],
             title="Reference image"),
        Node(2, "SteadyDancerLoadVideo", (-380, 380), [("video", "driving.mp4"), ("fps", 16.0), ("max_frames", length)],
             outputs=[("frames", IMAGE), ("frame_count", INT), ("fps", FLOAT)], title="Driving video"),
        Node(3, "SteadyDancerPoseDetectorLoader", (0, 380),
             [("backend", "dwpose"), ("detector_model", "yolox_l.onnx"), ("pose_model", "dw-ll_ucoco_384.onnx")],
             outputs=[("detector", DETECTOR)]),
        Node(4, "SteadyDancerPosePipeline", (380, 380),
             [("width", width), ("height", height), ("length", length), ("align", True), ("seed", 0)],
             inputs=[("detector", DETECTOR, (3, 0)), ("reference_image", IMAGE, (1, 0)),
                     ("driving_frames", IMAGE, (2, 0))],
             outputs=[("pose_images", IMAGE), ("negative_pose_images", IMAGE), ("first_pose_image", IMAGE),
                      ("keypoints", POSE_KEYPOINT)]),
        Node(5, "CLIPVisionLoader", (380, 0), [("clip_name", "clip_vision_h.safetensors")],
             outputs=[("CLIP_VISION", CLIP_VISION)]),
        # The official CLIP preprocessing (core CLIP Vision Encode antialiases and rounds to 8 bits).
        Node(6, "SteadyDancerClipVisionEncode", (760, 0),
             inputs=[("clip_vision", CLIP_VISION, (5, 0)), ("reference_image", IMAGE, (1, 0)),
                     ("pose_images", IMAGE, (4, 0))],
             outputs=[("clip_vision_reference", CLIP_VISION_OUTPUT), ("clip_vision_first_pose", CLIP_VISION_OUTPUT)]),
        Node(8, "CLIPLoader", (0, 760),
             [("clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"), ("type", "wan"), ("device", "default")],
             outputs=[("CLIP", CLIP)]),
        Node(9, "CLIPTextEncode", (380, 760), [("text", prompt)], inputs=[("clip", CLIP, (8, 0))],
             outputs=[("CONDITIONING", COND)], title="Prompt"),
        Node(10, "CLIPTextEncode", (380, 960), [("text", OFFICIAL_NEGATIVE_PROMPT)], inputs=[("clip", CLIP, (8, 0))],
             outputs=[("CONDITIONING", COND)], title="Negative prompt"),
        Node(11, "VAELoader", (0, 1160), [("vae_name", "wan_2.1_vae.safetensors")], outputs=[("VAE", VAE)]),
        Node(12, "UNETLoader", (0, 1300),
             [("unet_name", "Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ.safetensors"), ("weight_dtype", "default")],
             outputs=[("MODEL", MODEL)], title="SteadyDancer DiT (Load Diffusion Model)"),
    ]
    if lora is not None:
        nodes.append(Node(19, "LoraLoaderModelOnly", (380, 1300), [("lora_name", lora), ("strength_model", 1.0)],
                          inputs=[("model", MODEL, (12, 0))], outputs=[("MODEL", MODEL)], title="Distilled LoRA"))
        model_source = (19, 0)
    if shift is not None:
        nodes.append(Node(13, "ModelSamplingSD3", (760, 1300), [("shift", shift)],
                          inputs=[("model", MODEL, model_source)], outputs=[("MODEL", MODEL)]))
        model_source = (13, 0)
    return nodes, model_source


def save_nodes(images: tuple[int, int], prefix: str, create_pos: tuple[int, int],
               save_pos: tuple[int, int]) -> list[Node]:
    """Nodes 17-18: the frames as a 16 fps mp4."""
    return [
        Node(17, "CreateVideo", create_pos, [("fps", 16.0)], inputs=[("images", IMAGE, images), ("audio", "AUDIO", None)],
             outputs=[("VIDEO", VIDEO)]),
        Node(18, "SaveVideo", save_pos, [("filename_prefix", prefix), ("format", "mp4"), ("codec", "h264")],
             inputs=[("video", VIDEO, (17, 0))]),
    ]


def shift_mode(shift: float | None) -> str:
    """The samplers' shift widget: the model's (ModelSamplingSD3) when the workflow sets one, else auto."""
    return "auto" if shift is None else "model"


def animate_workflow(*, width: int, height: int, length: int, steps: int, text_cfg: float, pose_cfg: float,
                     sampler: str, scheduler: str, shift: float | None, prompt: str, lora: str | None,
                     prefix: str) -> list[Node]:
    sources, model_source = source_nodes(width=width, height=height, length=length, shift=shift, prompt=prompt,
                                         lora=lora)
    return sources + [
        Node(14, "SteadyDancerImageToVideo", (1140, 380),
             [("width", width), ("height", height), ("length", length), ("pose_strength_spatial", 1.0),
              ("pose_strength_temporal", 1.0), ("negative_pose_seed", 0)],
             inputs=[("positive", COND, (9, 0)), ("negative", COND, (10, 0)), ("vae", VAE, (11, 0)),
                     ("reference_image", IMAGE, (1, 0)), ("pose_images", IMAGE, (4, 0)),
                     ("clip_vision_reference", CLIP_VISION_OUTPUT, (6, 0)),
                     ("clip_vision_first_pose", CLIP_VISION_OUTPUT, (6, 1)),
                     ("negative_pose_images", IMAGE, (4, 1)), ("pose_keypoints", POSE_KEYPOINT, None)],
             outputs=[("positive", COND), ("negative", COND), ("negative_pose", COND), ("latent", LATENT)]),
        Node(15, "SteadyDancerKSampler", (1520, 380),
             [("seed", 106060), ("steps", steps), ("text_cfg", text_cfg), ("pose_cfg", pose_cfg),
              ("pose_start", 0.1), ("pose_end", 0.4), ("formula", "official"), ("sampler_name", sampler),
              ("scheduler", scheduler), ("shift", shift_mode(shift)),
              ("denoise", 1.0)],
             inputs=[("model", MODEL, model_source), ("positive", COND, (14, 0)), ("negative", COND, (14, 1)),
                     ("negative_pose", COND, (14, 2)), ("latent_image", LATENT, (14, 3))],
             outputs=[("LATENT", LATENT)]),
        Node(16, "VAEDecode", (1900, 380), inputs=[("samples", LATENT, (15, 0)), ("vae", VAE, (11, 0))],
             outputs=[("IMAGE", IMAGE)]),
    ] + save_nodes((16, 0), prefix, (1900, 540), (2280, 380))


def long_video_workflow(*, width: int, height: int, length: int, segment_frames: int, steps: int,
                        text_cfg: float, pose_cfg: float, sampler: str, scheduler: str, shift: float | None,
                        prompt: str, prefix: str) -> list[Node]:
    """Workflow (a)'s inputs, then SteadyDancer Long Video in place of Image To Video + KSampler + VAE Decode."""
    sources, model_source = source_nodes(width=width, height=height, length=length, shift=shift, prompt=prompt,
                                         lora=None)
    return sources + [
        Node(20, "SteadyDancerLongVideo", (1140, 380),
             [("width", width), ("height", height), ("length", length), ("segment_frames", segment_frames),
              ("carry_frames", 1), ("anchor", "reference"), ("color_match", "reference"),
              ("pose_strength_spatial", 1.0), ("pose_strength_temporal", 1.0), ("negative_pose_seed", 0),
              ("seed", 106060), ("steps", steps), ("text_cfg", text_cfg), ("pose_cfg", pose_cfg),
              ("pose_start", 0.1), ("pose_end", 0.4), ("formula", "official"), ("sampler_name", sampler),
              ("scheduler", scheduler), ("shift", shift_mode(shift))],
             inputs=[("model", MODEL, model_source), ("positive", COND, (9, 0)), ("negative", COND, (10, 0)),
                     ("vae", VAE, (11, 0)), ("reference_image", IMAGE, (1, 0)), ("pose_images", IMAGE, (4, 0)),
                     ("clip_vision_reference", CLIP_VISION_OUTPUT, (6, 0)),
                     ("clip_vision_first_pose", CLIP_VISION_OUTPUT, (6, 1)),
                     ("negative_pose_images", IMAGE, (4, 1)), ("pose_keypoints", POSE_KEYPOINT, None),
                     # Only anchor = segment uses it (CLIP of each segment's first frame and pose).
                     ("clip_vision", CLIP_VISION, None)],
             outputs=[("frames", IMAGE)]),
    ] + save_nodes((20, 0), prefix, (1520, 380), (1900, 380))


WORKFLOWS = {
    # (a) the authors' settings: 40 steps, text cfg 5, pose cfg 1.0 in steps 0.1..0.4, official grid, shift auto
    # (5.0 at this size, as the authors' README run; 3.0 if the size is changed to 480p, as the official code).
    "steadydancer_animate": animate_workflow(
        width=576, height=1024, length=81, steps=40, text_cfg=5.0, pose_cfg=1.0, sampler="steadydancer_unipc",
        scheduler="steadydancer_official", shift=None, lora=None, prefix="steadydancer/animate",
        prompt="A person dancing, smooth natural motion, high quality, detailed."),
    # (b) fast preview: 4-step distilled LoRA at cfg 1 (no negative-text pass), pose term kept (step 1), the
    # shift set by ModelSamplingSD3 (shift = model).
    "steadydancer_fast_preview": animate_workflow(
        width=480, height=832, length=81, steps=4, text_cfg=1.0, pose_cfg=1.0, sampler="euler", scheduler="simple",
        shift=5.0, lora="lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",
        prefix="steadydancer/preview", prompt="A person dancing, smooth natural motion, high quality, detailed."),
    # (c) long video: (a)'s settings over 241 frames (15 s) = 3 segments of 81 frames carrying 1 (81 + 80 + 80).
    "steadydancer_long_video": long_video_workflow(
        width=576, height=1024, length=241, segment_frames=81, steps=40, text_cfg=5.0, pose_cfg=1.0,
        sampler="steadydancer_unipc", scheduler="steadydancer_official", shift=None, prefix="steadydancer/long_video",
        prompt="A person dancing, smooth natural motion, high quality, detailed."),
}


def main() -> None:
    for name, nodes in WORKFLOWS.items():
        (HERE / f"{name}.json").write_text(json.dumps(ui_workflow(nodes), indent=1, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        (HERE / f"{name}_api.json").write_text(json.dumps(api_workflow(nodes), indent=1, ensure_ascii=False) + "\n",
                                               encoding="utf-8")


if __name__ == "__main__":
    main()
