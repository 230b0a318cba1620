"""Drive the real ComfyUI frontend in headless Chromium the way a user does.

Both pinned frontends (1.27.10 for ComfyUI 0.3.64, 1.35.9 for 0.8.0) expose the app object as
``window.app`` and LiteGraph as ``window.LiteGraph`` (also under ``window.comfyAPI``); everything
here goes through those public objects: ``app.loadGraphData`` is what a dropped file triggers,
``app.queuePrompt`` what the Run button calls, and ``app.graphToPrompt`` the UI-to-API conversion
it runs first.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.browser.frontend import CHROMIUM_FLAGS, chromium_path

VIEWPORT = {"width": 1600, "height": 1000}

#: Ready once the app has fetched the node definitions from the server.
_APP_READY_JS = """(probe) => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && window.LiteGraph.registered_node_types[probe])"""

_GRAPH_STATE_JS = """() => window.app.graph._nodes.map((node) => ({
    id: node.id,
    type: node.type,
    registered: Object.prototype.hasOwnProperty.call(window.LiteGraph.registered_node_types, node.type),
    has_errors: !!node.has_errors,
    widgets: (node.widgets || []).map((w) => ({
        name: w.name,
        value: (w.value === undefined ? null : w.value),
        // widget.serialize === false: not saved in widgets_values (the workflow JSON);
        // widget.options.serialize === false: saved there but not sent to the server
        // (e.g. control_after_generate).
        serialized: w.serialize !== false,
        in_prompt: (w.options || {}).serialize !== false,
    })),
}))"""

_RECORD_EVENTS_JS = """() => {
    window.__sdEvents = [];
    for (const type of ['execution_start', 'executed', 'execution_success', 'execution_error',
                        'execution_interrupted']) {
        window.app.api.addEventListener(type, (event) => window.__sdEvents.push({type, detail: event.detail}));
    }
}"""

_FIT_VIEW_JS = """([left, top, right, bottom]) => {
    // Fit every node into the canvas area not covered by the side bar and the top menus (the
    // view saved in a workflow depends on its author's screen).
    const canvas = window.app.canvas;
    const title = window.LiteGraph.NODE_TITLE_HEIGHT;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of window.app.graph._nodes) {
        x0 = Math.min(x0, node.pos[0]); y0 = Math.min(y0, node.pos[1] - title);
        x1 = Math.max(x1, node.pos[0] + node.size[0]); y1 = Math.max(y1, node.pos[1] + node.size[1]);
    }
    const width = canvas.canvas.clientWidth - left - right, height = canvas.canvas.clientHeight - top - bottom;
    const scale = Math.min(width / (x1 - x0), height / (y1 - y0), 1.5);
    canvas.ds.scale = scale;
    canvas.ds.offset = [(left + (width - scale * (x1 - x0)) / 2) / scale - x0,
                        (top + (height - scale * (y1 - y0)) / 2) / scale - y0];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
}"""

#: Visible pop-ups: PrimeVue toasts (warnings/errors, e.g. the frontend's workflow-schema
#: validation) and dialogs (e.g. missing nodes or models).
_NOTICES_JS = """() => Array.from(document.querySelectorAll(
        '.p-toast-message-warn, .p-toast-message-error, .p-dialog'))
    .filter((element) => element.offsetParent !== null)
    .map((element) => element.innerText.trim())"""


@dataclass
class NodeState:
    id: int
    type: str
    registered: bool
    has_errors: bool
    widgets: list[dict]

    def widget_values(self) -> list[object]:
        """Values of the widgets that are saved in ``widgets_values`` (same order)."""
        return [w["value"] for w in self.widgets if w["serialized"]]


@dataclass
class RunResult:
    prompt_id: str
    events: list[dict]
    submitted_prompt: dict

    @property
    def succeeded(self) -> bool:
        return any(event["type"] == "execution_success" for event in self.events)

    def errors(self) -> list[dict]:
        return [e["detail"] for e in self.events if e["type"] in ("execution_error", "execution_interrupted")]


@contextmanager
def headless_chromium() -> Iterator[object]:
    """A Playwright page in Debian's Chromium with a fresh profile (closed on exit)."""
    from playwright.sync_api import sync_playwright  # optional dependency: imported only when used

    with tempfile.TemporaryDirectory(prefix="sd-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(chromium_path()), headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


class ComfyPage:
    """The ComfyUI web app open in a Playwright page."""

    def __init__(self, page: object, url: str) -> None:
        self.page = page
        self.url = url
        self.page_errors: list[str] = []
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", self._record_console_error)

    def _record_console_error(self, message: object) -> None:
        # The app logs errors it catches (e.g. a widget that fails to build) on the console; failed
        # fetches of optional resources (templates, release notes, 404s offline) are not our concern.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.page_errors.append(message.text)

    def open(self, probe_node_type: str, timeout_s: float = 120.0) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function(_APP_READY_JS, arg=probe_node_type, timeout=timeout_s * 1000)
        self.page.evaluate(_RECORD_EVENTS_JS)

    def frontend_version(self) -> str:
        return self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || 'unknown'")

    def registered_node_types(self) -> set[str]:
        return set(self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))

    def notices(self) -> list[str]:
        """Texts of the warning/error toasts and dialogs now on screen."""
        return self.page.evaluate(_NOTICES_JS)

    def load_workflow(self, workflow: dict, name: str) -> list[str]:
        """Load a UI workflow as a dropped file is loaded.

        Returns what went wrong meanwhile: uncaught page errors and new warning/error pop-ups.
        """
        errors_before = len(self.page_errors)
        notices_before = self.notices()
        self.page.evaluate(
            "async ([graph, name]) => { await window.app.loadGraphData(graph, true, true, name); }",
            [workflow, name])
        self.page.wait_for_timeout(1000)  # toasts, DOM widgets and the canvas appear on later frames
        new_notices = [text for text in self.notices() if text not in notices_before]
        return [f"page error: {e}" for e in self.page_errors[errors_before:]] + [f"pop-up: {t}" for t in new_notices]

    def nodes(self) -> list[NodeState]:
        return [NodeState(**state) for state in self.page.evaluate(_GRAPH_STATE_JS)]

    def overlapping_nodes(self) -> list[tuple[str, str]]:
        """Pairs of node titles whose drawn boxes (title bar included) intersect.

        Measured after a draw: the frontend grows a node that is too small for its widgets then.
        """
        return self.page.evaluate("""() => {
            window.app.canvas.draw(true, true);
            const boxes = window.app.graph._nodes.map((node) => {
                const [x, y, width, height] = node.getBounding();
                return {name: `${node.id} ${node.title}`, x0: x, y0: y, x1: x + width, y1: y + height};
            });
            const pairs = [];
            boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
                if (a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1) pairs.push([a.name, b.name]);
            }));
            return pairs;
        }""")

    def graph_to_prompt(self) -> dict:
        """The API prompt the frontend would submit for the loaded graph (``output`` of graphToPrompt)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def set_widget(self, node_id: int, widget_name: str, value: object) -> None:
        """Set a widget value as the UI does (value, then the widget's callback)."""
        missing = self.page.evaluate(
            """([id, name, value]) => {
                const node = window.app.graph.getNodeById(id);
                const widget = node && (node.widgets || []).find((w) => w.name === name);
                if (!widget) return `node ${id} has no widget ${name}`;
                widget.value = value;
                if (widget.callback) widget.callback(value, window.app.canvas, node);
                return null;
            }""", [node_id, widget_name, value])
        if missing:
            raise KeyError(missing)

    def node_ids(self, node_type: str) -> list[int]:
        return self.page.evaluate(
            "(type) => window.app.graph._nodes.filter((n) => n.type === type).map((n) => n.id)", node_type)

    def replace_node(self, node_id: int, new_type: str, widgets: dict[str, object]) -> int:
        """Put a ``new_type`` node where ``node_id`` is, wire its outputs the same way, remove the old one.

        What a user does by hand: add the node, set its widgets, drag each output link over.
        """
        return self.page.evaluate(
            """([id, type, widgets]) => {
                const graph = window.app.graph;
                const old = graph.getNodeById(id);
                const node = window.LiteGraph.createNode(type);
                node.pos = [old.pos[0], old.pos[1]];
                graph.add(node);
                for (const [name, value] of Object.entries(widgets)) {
                    node.widgets.find((w) => w.name === name).value = value;
                }
                const linkById = (linkId) => graph.links instanceof Map ? graph.links.get(linkId) : graph.links[linkId];
                old.outputs.forEach((output, slot) => {
                    for (const linkId of [...(output.links || [])]) {
                        const link = linkById(linkId);
                        node.connect(slot, graph.getNodeById(link.target_id), link.target_slot);
                    }
                });
                graph.remove(old);
                return node.id;
            }""", [node_id, new_type, widgets])

    def remove_node(self, node_id: int) -> None:
        self.page.evaluate("(id) => window.app.graph.remove(window.app.graph.getNodeById(id))", node_id)

    def screenshot(self, path: Path, margins: tuple[int, int, int, int] = (90, 110, 40, 40)) -> None:
        """Screenshot of the page with the whole graph fitted inside ``margins`` (left, top, right, bottom)."""
        self.page.evaluate(_FIT_VIEW_JS, list(margins))
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=str(path))

    def queue_and_wait(self, timeout_s: float) -> RunResult:
        """Press Run (``app.queuePrompt(0)``) and wait on the page's websocket until it finishes."""
        self.page.evaluate("() => { window.__sdEvents.length = 0; }")
        is_prompt_post = lambda request: request.method == "POST" and request.url.rstrip("/").endswith("/prompt")  # noqa: E731
        try:
            with self.page.expect_response(lambda response: is_prompt_post(response.request), timeout=60_000) as sent:
                self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        except Exception as error:  # Playwright's TimeoutError: the frontend refused before sending
            raise AssertionError(f"the frontend sent no prompt ({error}); pop-ups: {self.notices()}; "
                                 f"page errors: {self.page_errors}") from None
        response = sent.value
        if response.status != 200:
            raise AssertionError(f"the server refused the frontend's prompt ({response.status}): {response.text()}")
        prompt_id = response.json()["prompt_id"]
        self.page.wait_for_function(
            """(id) => window.__sdEvents.some((e) => e.detail && e.detail.prompt_id === id
                && ['execution_success', 'execution_error', 'execution_interrupted'].includes(e.type))""",
            arg=prompt_id, timeout=timeout_s * 1000)
        events = [e for e in self.page.evaluate("() => window.__sdEvents")
                  if (e.get("detail") or {}).get("prompt_id") == prompt_id]
        return RunResult(prompt_id=prompt_id, events=events, submitted_prompt=json.loads(response.request.post_data))
