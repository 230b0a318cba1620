"""The drag-and-drop path in a real browser: ComfyUI's own frontend loads and runs our UI workflows.

Needs ``COMFYUI_PATH`` (ComfyUI 0.3.64 or 0.8.0), Chromium, the ``playwright`` package and the
frontend version that ComfyUI pins (``tests/comfyui/browser_env.sh``); skips, printing why, otherwise.
A real ``main.py`` serves the pack and the frontend; headless Chromium opens the page, and every UI
workflow in ``workflows/`` goes through the app exactly as a dropped file does
(``app.loadGraphData``). The checks compare what the frontend built against the JSON file itself
(node types, widget values) and against the shipped API JSON (the frontend's own conversion).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.browser.comfy_page import ComfyPage, headless_chromium
from tests.browser.frontend import frontend_root, missing_browser_parts
from tests.browser.server import PACK_PROBE_NODE, prepare_root, start_browser_server
from tests.browser.workflow_files import WORKFLOWS_DIR, api_counterpart, comparable_prompt, ui_workflow_paths
from tests.comfyui import harness
from tests.comfyui.server import ComfyServer

UI_WORKFLOWS = ui_workflow_paths()


@pytest.fixture(scope="module")
def comfyui() -> Path:
    path = harness.skip_without_comfyui()
    missing = missing_browser_parts(path)
    if missing:
        reason = "browser tests skipped: " + "; ".join(missing)
        print(reason)
        pytest.skip(reason)
    return path


#: Workflow (a): reference image + driving video -> mp4 with alignment, negative pose, DC-CFG.
ANIMATE = WORKFLOWS_DIR / "steadydancer_animate.json"
#: Workflow (c): the same inputs -> SteadyDancer Long Video (segments) -> mp4. Same file names as (a).
LONG_VIDEO = WORKFLOWS_DIR / "steadydancer_long_video.json"


@pytest.fixture(scope="module")
def root(comfyui: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ComfyUI's writable folders, holding tiny files under the names workflow (a) uses."""
    from tests.browser.tiny_run import write_tiny_files  # needs ComfyUI importable: after the skip checks

    harness.load_pack()
    folder = tmp_path_factory.mktemp("comfy-root")
    prepare_root(folder)
    workflow = json.loads(ANIMATE.read_text())
    text_nodes = [node["id"] for node in workflow["nodes"] if node["type"] == "CLIPTextEncode"]
    (folder / "embeds.json").write_text(json.dumps(write_tiny_files(folder, workflow, text_nodes)))
    return folder


@pytest.fixture(scope="module")
def server(comfyui: Path, root: Path) -> Iterator[ComfyServer]:
    running = start_browser_server(comfyui, root, frontend_root(comfyui))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def app(server: ComfyServer) -> Iterator[ComfyPage]:
    with headless_chromium() as page:
        comfy_page = ComfyPage(page, server.url)
        comfy_page.open(PACK_PROBE_NODE)
        yield comfy_page


def test_workflows_folder_has_ui_workflows() -> None:
    assert UI_WORKFLOWS, "workflows/ holds no UI (LiteGraph) workflow: the browser tests would test nothing"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_ui_workflow_loads_like_a_dropped_file(app: ComfyPage, server: ComfyServer, path: Path, tmp_path: Path) -> None:
    workflow = json.loads(path.read_text())
    api_path = api_counterpart(path)
    assert api_path.is_file(), f"{path.name} ships without its API JSON {api_path.name}"
    api = json.loads(api_path.read_text())

    problems = app.load_workflow(workflow, path.name)
    assert problems == [], f"loading {path.name} in frontend {app.frontend_version()}: {problems}"

    registered = app.registered_node_types()
    json_types = {node["type"] for node in workflow["nodes"]}
    assert json_types - registered == set(), "node types missing from the frontend's registry"

    loaded = {node.id: node for node in app.nodes()}
    assert sorted(loaded) == sorted(node["id"] for node in workflow["nodes"])
    wrong_widgets = []
    for node in workflow["nodes"]:
        state = loaded[node["id"]]
        assert state.type == node["type"]
        assert not state.has_errors, f"node {node['id']} ({node['type']}) is flagged with errors"
        # The frontend fills widgets from widgets_values by position; reading them back must give
        # the file's values unchanged ...
        assert state.widget_values() == node.get("widgets_values", []), f"widgets of node {node['id']} ({node['type']})"
        # ... and each value must have landed in the widget of the right NAME: the API JSON (the
        # same workflow in the server's format) names every input.
        api_inputs = api[str(node["id"])]["inputs"]
        for widget in state.widgets:
            expected = api_inputs.get(widget["name"])
            if widget["name"] in api_inputs and not isinstance(expected, list) and widget["value"] != expected:
                wrong_widgets.append(f"node {node['id']} ({node['type']}).{widget['name']}: "
                                     f"frontend holds {widget['value']!r}, API JSON has {expected!r}")
    assert wrong_widgets == [], f"{path.name}: widgets_values out of the frontend's widget order:\n" + "\n".join(wrong_widgets)

    # What Run would send (the frontend's own UI-to-API conversion) equals the shipped API JSON.
    status, object_info = server.request("GET", "/object_info")
    assert status == 200
    assert comparable_prompt(app.graph_to_prompt(), object_info) == comparable_prompt(api, object_info)

    # People read the graph: no node may hide another (e.g. a widget spilling over the next node).
    overlaps = app.overlapping_nodes()
    assert overlaps == [], f"{path.name}: overlapping nodes in the frontend's layout: {overlaps}"

    picture = tmp_path / f"{path.stem}.png"
    app.screenshot(picture)
    assert picture.stat().st_size > 10_000  # a rendered graph, not an empty canvas


def run_tiny_from_the_page(app: ComfyPage, server: ComfyServer, root: Path, path: Path, length: int,
                           widgets: dict[str, dict[str, object]]) -> list:
    """Load ``path`` in the page, make it tiny through its widgets (``widgets``: node type -> values), run it
    with the Run button's call and return the frames of the saved mp4."""
    from tests.browser.tiny_run import DRIVING_FRAMES, HEIGHT, WIDTH

    problems = app.load_workflow(json.loads(path.read_text()), path.name)
    assert problems == []
    # The text comes from saved embeds (the 11 GB umT5 cannot be made tiny): swap each text
    # encoder for the embeds loader and drop the now unused CLIP loader.
    for node_id, embeds in json.loads((root / "embeds.json").read_text()).items():
        app.replace_node(int(node_id), "SteadyDancerLoadTextEmbeds", {"embeds": embeds})
    for node_id in app.node_ids("CLIPLoader"):
        app.remove_node(node_id)
    widgets = {"SteadyDancerLoadVideo": {"max_frames": DRIVING_FRAMES},
               "SteadyDancerPosePipeline": {"width": WIDTH, "height": HEIGHT, "length": length}, **widgets}
    for node_type, values in widgets.items():
        for node_id in app.node_ids(node_type):
            for name, value in values.items():
                app.set_widget(node_id, name, value)

    run = app.queue_and_wait(timeout_s=900)
    assert run.succeeded, f"execution failed: {run.errors()}\n{server.log_tail()}"

    submitted = run.submitted_prompt["prompt"]
    types = sorted(node["class_type"] for node in submitted.values())
    assert "CLIPLoader" not in types and types.count("SteadyDancerLoadTextEmbeds") == 2
    save_id = next(node_id for node_id, node in submitted.items() if node["class_type"] == "SaveVideo")
    status, history = server.request("GET", f"/history/{run.prompt_id}")
    assert status == 200
    saved = history[run.prompt_id]["outputs"][save_id]["images"][0]
    video = root / "output" / saved["subfolder"] / saved["filename"]
    with av.open(str(video)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert frames and frames[0].shape == (HEIGHT, WIDTH, 3)
    return frames


def test_tiny_workflow_a_runs_from_the_page(app: ComfyPage, server: ComfyServer, root: Path) -> None:
    """Workflow (a) loaded in the page, made tiny through its widgets, run with the Run button's call."""
    from tests.browser.tiny_run import HEIGHT, LENGTH, STEPS, WIDTH

    frames = run_tiny_from_the_page(app, server, root, ANIMATE, LENGTH, {
        "SteadyDancerImageToVideo": {"width": WIDTH, "height": HEIGHT, "length": LENGTH},
        "SteadyDancerKSampler": {"steps": STEPS}})
    assert len(frames) == LENGTH


def test_tiny_workflow_c_long_video_runs_from_the_page(app: ComfyPage, server: ComfyServer, root: Path) -> None:
    """Workflow (c) from the page: three segments, an mp4 of exactly the requested frame count."""
    from tests.browser.tiny_run import HEIGHT, LONG_LENGTH, SEGMENT_FRAMES, STEPS, WIDTH

    frames = run_tiny_from_the_page(app, server, root, LONG_VIDEO, LONG_LENGTH, {
        "SteadyDancerLongVideo": {"width": WIDTH, "height": HEIGHT, "length": LONG_LENGTH,
                                  "segment_frames": SEGMENT_FRAMES, "steps": STEPS}})
    assert len(frames) == LONG_LENGTH
