"""Tiny YOLOX/DWPose ONNX stand-ins with the real tensor names and shapes (built here, used by the other
pose detector tests), and the model-folder lookup / offline error of ``pose.detect.models``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from steadydancer_core import downloads
from steadydancer_core.downloads import POSE_FOLDER
from steadydancer_core.pose.detect.models import (
    DETECTOR_FILE,
    DWPOSE_REPO,
    MODELS_DIR_ENV,
    POSE_FILE,
    ModelFilesMissing,
    default_models_dir,
    ensure_dwpose_models,
    resolve_models_dir,
)

ANCHORS = 8400  # 80² + 40² + 20² for a 640×640 input at strides 8/16/32
YOLOX_CHANNELS = 85  # cx, cy, w, h, objectness, 80 class probabilities
STRIDE32_OFFSET = 80 * 80 + 40 * 40


def _constant_graph_model(path: Path, input_name: str, input_shape: list, outputs: dict[str, np.ndarray],
                          output_shapes: dict[str, list]) -> Path:
    """A graph whose outputs are ``constant + 0 · mean(input)``: fixed values, but a real dependence on the
    input tensor so onnxruntime checks its name, shape and batch size."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["zero_like"]),
    ]
    initializers = [numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        initializers.append(numpy_helper.from_array(value[None].astype(np.float32), f"{name}_const"))
        # mean is [N, 1, 1, 1]; squeeze the channel axis so it broadcasts against [1, K, bins].
        nodes.append(helper.make_node("Squeeze", ["zero_like", "squeeze_axes"], [f"{name}_zero"]))
        nodes.append(helper.make_node("Add", [f"{name}_zero", f"{name}_const"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, output_shapes[name]))
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), "squeeze_axes"))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
                              graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def yolox_raw_output(boxes_640: list[tuple[float, float, float, float]], objectness: list[float],
                     person_prob: list[float] | None = None, other_class: list[int] | None = None) -> np.ndarray:
    """A ``[8400, 85]`` YOLOX head output holding the given boxes (xyxy in letterboxed 640 pixels), each on the
    stride-32 anchor of the cell containing its centre. ``other_class[i]`` moves box i to that class."""
    output = np.zeros((ANCHORS, YOLOX_CHANNELS), np.float32)
    output[:, 2:4] = -10.0  # tiny boxes elsewhere, with objectness 0
    for i, (x0, y0, x1, y1) in enumerate(boxes_640):
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        gx, gy = int(cx // 32), int(cy // 32)
        anchor = STRIDE32_OFFSET + gy * 20 + gx
        assert output[anchor, 4] == 0, "two test boxes share an anchor"
        output[anchor, :5] = [cx / 32 - gx, cy / 32 - gy, np.log(w / 32), np.log(h / 32), objectness[i]]
        cls = 0 if other_class is None else other_class[i]
        output[anchor, 5 + cls] = 1.0 if person_prob is None else person_prob[i]
    return output


def build_yolox(path: Path, raw_output: np.ndarray) -> Path:
    return _constant_graph_model(path, "images", [1, 3, 640, 640], {"output": raw_output},
                                 {"output": [1, ANCHORS, YOLOX_CHANNELS]})


def simcc_for_keypoints(x_bins: np.ndarray, y_bins: np.ndarray, peaks_x: np.ndarray, peaks_y: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """SimCC vectors ``[133, 576]`` / ``[133, 768]`` peaking at the given bins with the given maxima."""
    peaks_y = peaks_x if peaks_y is None else peaks_y
    simcc_x = np.full((133, 576), -0.5, np.float32)
    simcc_y = np.full((133, 768), -0.5, np.float32)
    simcc_x[np.arange(133), x_bins] = peaks_x
    simcc_y[np.arange(133), y_bins] = peaks_y
    return simcc_x, simcc_y


def build_dwpose(path: Path, simcc_x: np.ndarray, simcc_y: np.ndarray, batch: int | str = "N",
                 names: tuple[str, str] = ("simcc_x", "simcc_y"), y_first: bool = False) -> Path:
    """DWPose stand-in: input ``input`` [batch, 3, 384, 288], outputs [batch, 133, 576] and [batch, 133, 768]."""
    outputs = {names[0]: simcc_x, names[1]: simcc_y}
    shapes = {names[0]: [batch, 133, 576], names[1]: [batch, 133, 768]}
    if y_first:
        outputs = dict(reversed(list(outputs.items())))
    return _constant_graph_model(path, "input", [batch, 3, 384, 288], outputs, shapes)


# ------------------------------------------------------------------------------------------------
# Model folder lookup and the offline error


def test_models_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    repo = Path(__file__).resolve().parents[1]
    expected = (repo.parents[1] / "models" / POSE_FOLDER if repo.parent.name == "custom_nodes"
                and (repo.parents[1] / "models").is_dir() else repo / "models" / POSE_FOLDER)
    assert resolve_models_dir() == expected
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "env"))
    assert resolve_models_dir() == tmp_path / "env"
    assert resolve_models_dir(tmp_path / "arg") == tmp_path / "arg"


def test_default_folder_is_the_comfyui_one_inside_a_comfyui_install(tmp_path: Path) -> None:
    # The same models/steadydancer_pose the ComfyUI node lists, when the pack is a custom node ...
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-SteadyDancer"
    pack.mkdir(parents=True)
    (tmp_path / "ComfyUI" / "models").mkdir()
    assert default_models_dir(pack) == tmp_path / "ComfyUI" / "models" / "steadydancer_pose"
    # ... and the repository's own models/steadydancer_pose (where 'download --dir models' puts it) otherwise.
    clone = tmp_path / "clone"
    clone.mkdir()
    assert default_models_dir(clone) == clone / "models" / "steadydancer_pose"
    assert downloads.destination(downloads.BY_KEY["pose_model"], "standalone", clone / "models").parent == \
        default_models_dir(clone)


def test_present_files_are_used_without_the_hub(tmp_path: Path) -> None:
    (tmp_path / DETECTOR_FILE).write_bytes(b"x")
    (tmp_path / POSE_FILE).write_bytes(b"y")
    assert ensure_dwpose_models(tmp_path, download=False) == (tmp_path / DETECTOR_FILE, tmp_path / POSE_FILE)


def test_missing_files_without_download_name_files_repo_and_folder(tmp_path: Path) -> None:
    (tmp_path / DETECTOR_FILE).write_bytes(b"x")
    with pytest.raises(ModelFilesMissing) as caught:
        ensure_dwpose_models(tmp_path, download=False)
    message = str(caught.value)
    assert POSE_FILE in message and DWPOSE_REPO in message and str(tmp_path) in message
    assert f"{DETECTOR_FILE} not found" not in message  # only the absent file is reported missing


def test_offline_hub_gives_one_clear_error_at_once_and_creates_nothing(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # HF_HUB_OFFLINE: the probe answers without touching the network; nothing is fetched or created.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFilesMissing) as caught:
        ensure_dwpose_models(tmp_path / "models" / "steadydancer_pose", download=True)
    message = str(caught.value)
    assert DETECTOR_FILE in message and POSE_FILE in message and DWPOSE_REPO in message
    assert "cannot be reached (HF_HUB_OFFLINE is set)" in message
    assert "python -m steadydancer_core download" in message
    assert caught.value.__cause__ is None
    assert list(tmp_path.iterdir()) == []  # no folder, no .lock file


def test_unreachable_endpoint_is_one_request_then_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    # Port 9 on localhost (discard) is closed here: the one probe is refused at once, no retries follow.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    calls = []

    class CountingHub(downloads.HuggingFaceHub):
        def fetch(self, repo: str, path: str, local_dir: Path) -> Path:
            calls.append(path)
            return super().fetch(repo, path, local_dir)

    with pytest.raises(ModelFilesMissing) as caught:
        ensure_dwpose_models(tmp_path / "pose", download=True, hub=CountingHub())
    assert "http://127.0.0.1:9 is not reachable" in str(caught.value)
    assert calls == [] and list(tmp_path.iterdir()) == []
