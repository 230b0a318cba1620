"""End to end in a real ComfyUI server (needs COMFYUI_PATH; skips otherwise).

Starts ``main.py --cpu`` with the pack loaded from this checkout (a symlink in a temporary
custom_nodes folder named by ``--extra-model-paths-config``) and tiny generated models: a tiny
SteadyDancer DiT in the released key layout, a random full-architecture Wan2.1 VAE, a random
ViT-L CLIP vision model, tiny constant DWPose ONNX graphs and text embeds saved in the pack's
format. Checks the shipped workflows against ``/object_info`` and runs tiny versions of workflows
(a) and (c) (long video, several segments) through ``POST /prompt``.
"""
from __future__ import annotations

import copy
import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_pose_detect_models import build_dwpose, build_yolox, simcc_for_keypoints, yolox_raw_output

from tests.comfyui import harness
from tests.comfyui.server import start_server
from tests.comfyui.tiny_models import CLIP_DIM, random_clip_vision_vitl, random_wan21_vae_state_dict, tiny_dit_state_dict

from steadydancer_core.model import TINY
from steadydancer_core.video import write_video

WORKFLOWS = harness.REPO_ROOT / "workflows"
UI_WORKFLOWS = sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith("_api.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Widgets naming model/input files, which the example workflows name as users have them.
FILE_WIDGETS = {"unet_name", "clip_name", "vae_name", "lora_name", "image", "video", "detector_model",
                "pose_model", "embeds"}
WIDTH, HEIGHT, LENGTH = 32, 48, 5
#: Workflow (c) shrunk: 13 frames in segments of 5 carrying 1 = 3 segments (output frames 0-4, 5-8, 9-12).
LONG_LENGTH, SEGMENT_FRAMES = 13, 5
DRIVING_FRAMES = 17
@pytest.fixture(scope="module")
def comfy_env(tmp_path_factory):
    comfyui = harness.skip_without_comfyui()
    harness.load_pack()  # ComfyUI importable in this process too: the VAE / CLIP layouts come from it
    text_embeds = harness.pack_module("nodes.text_embeds")
    root = tmp_path_factory.mktemp("comfy_e2e")
    models = root / "models"
    folders = {name: models / name for name in ("diffusion_models", "vae", "clip_vision",
                                                "steadydancer_text_embeds", "steadydancer_pose")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / "ComfyUI-SteadyDancer").symlink_to(harness.REPO_ROOT, target_is_directory=True)

    save_file(tiny_dit_state_dict(TINY.replace(clip_dim=CLIP_DIM)), str(folders["diffusion_models"] / "steadydancer_tiny.safetensors"))
    save_file(random_wan21_vae_state_dict(), str(folders["vae"] / "wan_2.1_vae_random.safetensors"))
    save_file(random_clip_vision_vitl(), str(folders["clip_vision"] / "clip_vision_vitl_random.safetensors"))
    g = torch.Generator().manual_seed(0)
    for name in ("positive", "negative"):
        text_embeds.conditioning_to_file([[torch.randn(1, 512, TINY.text_dim, generator=g), {}]],
                                         str(folders["steadydancer_text_embeds"] / f"{name}.safetensors"))
    simcc_x, simcc_y = simcc_for_keypoints((3 * np.arange(133) + 150) % 576, (5 * np.arange(133) + 200) % 768,
                                           np.full(133, 0.9, np.float32))
    build_yolox(folders["steadydancer_pose"] / "yolox_l.onnx", yolox_raw_output([(200, 100, 440, 560)], [0.9]))
    build_dwpose(folders["steadydancer_pose"] / "dw-ll_ucoco_384.onnx", simcc_x, simcc_y)

    (root / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)).save(root / "input" / "reference.png")
    write_video(rng.integers(0, 255, (DRIVING_FRAMES, 96, 64, 3), dtype=np.uint8), root / "input" / "driving.mp4",
                fps=16.0)

    yaml = root / "extra_model_paths.yaml"
    yaml.write_text("steadydancer_e2e:\n"
                    f"  base_path: {root}\n"
                    "  is_default: true\n"
                    "  custom_nodes: custom_nodes\n"
                    + "".join(f"  {name}: models/{name}\n" for name in folders))
    server = start_server(comfyui, root, yaml)
    try:
        yield server, root
    finally:
        server.stop()


def widget_names(node_info: dict) -> list[tuple[str, dict]]:
    """Widget inputs of a node in ComfyUI's order, with their options."""
    out = []
    for section in ("required", "optional"):
        for name, spec in node_info["input"].get(section, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                out.append((name, spec[1] if len(spec) > 1 else {}))
    return out


def options_of(spec: list) -> list | None:
    return spec[0] if isinstance(spec[0], list) else (spec[1] or {}).get("options")


@pytest.mark.parametrize("ui_path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_matches_object_info_and_api_json(comfy_env, ui_path):
    server, _ = comfy_env
    status, object_info = server.request("GET", "/object_info")
    assert status == 200
    ui = json.loads(ui_path.read_text())
    api = json.loads(ui_path.with_name(ui_path.stem + "_api.json").read_text())
    assert {str(n["id"]) for n in ui["nodes"]} == set(api)

    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        node_id, node_type = str(node["id"]), node["type"]
        assert node_type in object_info, f"{ui_path.name}: node type {node_type} unknown to ComfyUI"
        info = object_info[node_type]
        assert api[node_id]["class_type"] == node_type
        widgets = widget_names(info)
        expected = sum(1 + int(bool(opts.get("control_after_generate"))) +
                       int(any(k.endswith("_upload") and v for k, v in opts.items())) for _, opts in widgets)
        assert len(node["widgets_values"]) == expected, f"{ui_path.name}: {node_type} widget count"
        # API literals = the UI widget values (without the frontend's extra values), by name.
        values = iter(node["widgets_values"])
        for name, opts in widgets:
            value = next(values)
            if opts.get("control_after_generate"):
                next(values)
            assert api[node_id]["inputs"][name] == value, f"{ui_path.name}: {node_type}.{name}"
            spec = info["input"].get("required", {}).get(name) or info["input"]["optional"][name]
            allowed = options_of(spec)
            if allowed is not None and name not in FILE_WIDGETS:
                assert value in allowed, f"{ui_path.name}: {node_type}.{name}={value!r} not in {allowed}"
        # Links: every connected UI input is the same [source, slot] in the API JSON, and vice versa.
        api_links = {k: v for k, v in api[node_id]["inputs"].items() if isinstance(v, list)}
        ui_links = {}
        for inp in node["inputs"]:
            if inp["link"] is not None:
                link = links[inp["link"]]
                ui_links[inp["name"]] = [str(link[1]), link[2]]
                output_types = object_info[next(n["type"] for n in ui["nodes"] if n["id"] == link[1])]["output"]
                assert output_types[link[2]] == link[5] == inp["type"], f"{ui_path.name}: link {link}"
        assert ui_links == api_links, f"{ui_path.name}: links of node {node_id} ({node_type})"


def tiny_sources(workflow: str, length: int, prefix: str) -> dict:
    """The API JSON of ``workflow`` with the tiny models, the text-embeds loader in place of umT5, a tiny
    size and ``length`` frames read and posed (nodes 1-13 and the save node are shared by (a), (b), (c))."""
    prompt = copy.deepcopy(json.loads((WORKFLOWS / f"{workflow}_api.json").read_text()))
    del prompt["8"]  # CLIPLoader: the text comes from saved embeds
    for node_id, name in (("9", "positive.safetensors"), ("10", "negative.safetensors")):
        prompt[node_id] = {"class_type": "SteadyDancerLoadTextEmbeds", "inputs": {"embeds": name}}
    prompt["2"]["inputs"]["max_frames"] = length
    prompt["4"]["inputs"].update(width=WIDTH, height=HEIGHT, length=length)
    prompt["5"]["inputs"]["clip_name"] = "clip_vision_vitl_random.safetensors"
    prompt["11"]["inputs"]["vae_name"] = "wan_2.1_vae_random.safetensors"
    prompt["12"]["inputs"]["unet_name"] = "steadydancer_tiny.safetensors"
    prompt["18"]["inputs"]["filename_prefix"] = prefix
    return prompt


def tiny_workflow_a() -> dict:
    """Workflow (a) shrunk to 32x48x5 (the pose pipeline reads 9 driving frames)."""
    prompt = tiny_sources("steadydancer_animate", LENGTH, "e2e/tiny")
    prompt["2"]["inputs"]["max_frames"] = 9
    prompt["14"]["inputs"].update(width=WIDTH, height=HEIGHT, length=LENGTH)
    prompt["15"]["inputs"]["steps"] = 4
    return prompt


def tiny_workflow_c() -> dict:
    """Workflow (c) shrunk to 32x48, 13 frames in three segments, 2 steps each."""
    prompt = tiny_sources("steadydancer_long_video", LONG_LENGTH, "e2e/tiny_long")
    prompt["20"]["inputs"].update(width=WIDTH, height=HEIGHT, length=LONG_LENGTH, segment_frames=SEGMENT_FRAMES,
                                  steps=2)
    return prompt


def run_and_read_video(comfy_env, prompt: dict) -> list[np.ndarray]:
    """Post ``prompt``, wait for success and return the frames of the mp4 its SaveVideo (node 18) wrote."""
    server, root = comfy_env
    status, reply = server.post_prompt(prompt)
    assert status == 200, reply
    entry = server.wait_for_history(reply["prompt_id"], timeout_s=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    saved = entry["outputs"]["18"]["images"][0]
    with av.open(str(root / "output" / saved["subfolder"] / saved["filename"])) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert frames and frames[0].shape == (HEIGHT, WIDTH, 3)
    return frames


def test_tiny_workflow_a_produces_the_video(comfy_env):
    assert len(run_and_read_video(comfy_env, tiny_workflow_a())) == LENGTH


def test_tiny_workflow_c_long_video_gives_exactly_n_frames(comfy_env):
    """Workflow (c) on the real server: three segments, one mp4 of exactly LONG_LENGTH frames."""
    assert len(run_and_read_video(comfy_env, tiny_workflow_c())) == LONG_LENGTH
    assert "segments: 3 (5 frames each, 1 carried, 13 output frames)" in comfy_env[0].log_tail(200_000)


def test_broken_inputs_give_clear_errors_and_server_keeps_serving(comfy_env):
    server, _ = comfy_env
    bad_length = tiny_workflow_a()
    bad_length["14"]["inputs"]["length"] = 6
    bad_length["4"]["inputs"]["length"] = 6
    status, reply = server.post_prompt(bad_length)
    assert status == 200, reply
    entry = server.wait_for_history(reply["prompt_id"], timeout_s=300)
    assert entry["status"]["status_str"] == "error"
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert errors and errors[0]["node_type"] == "SteadyDancerPosePipeline"
    assert "4n+1" in errors[0]["exception_message"]

    missing_file = tiny_workflow_a()
    missing_file["9"]["inputs"]["embeds"] = "no_such_prompt.safetensors"
    status, reply = server.post_prompt(missing_file)
    if status == 400:  # 0.8.0 validates V3 combo values when the prompt is posted
        assert "9" in reply["node_errors"], reply
    else:  # 0.3.64 does not: the loader itself names the missing file
        assert status == 200, reply
        entry = server.wait_for_history(reply["prompt_id"], timeout_s=300)
        errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
        assert errors and errors[0]["node_id"] == "9"
        assert "no_such_prompt.safetensors" in errors[0]["exception_message"]
    assert server.request("GET", "/system_stats")[0] == 200
