"""Every node of the pack builds its V3 schema in real ComfyUI with sane widgets (needs COMFYUI_PATH)."""
from __future__ import annotations

import asyncio

import pytest

from tests.comfyui import harness


@pytest.fixture(scope="module", autouse=True)
def node_classes():
    pack = harness.load_pack()
    extension = asyncio.run(pack.comfy_entrypoint())
    return asyncio.run(extension.get_node_list())


def test_entrypoint_lists_every_node(node_classes):
    names = {cls.define_schema().node_id for cls in node_classes}
    assert len(names) == len(node_classes)
    assert {"SteadyDancerImageToVideo", "SteadyDancerDCCFGGuider", "SteadyDancerKSampler",
            "SteadyDancerOfficialSchedule", "SteadyDancerSaveTextEmbeds",
            "SteadyDancerLoadTextEmbeds"} <= names


def test_schemas(node_classes):
    from comfy_api.latest import io

    for cls in node_classes:
        schema = cls.define_schema()
        assert schema.node_id.startswith("SteadyDancer"), schema.node_id
        assert schema.display_name.startswith("SteadyDancer "), schema.display_name
        assert schema.category == "SteadyDancer"
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
            if isinstance(item, (io.Int.Input, io.Float.Input)):
                assert item.min <= item.default <= item.max, f"{schema.node_id}.{item.id} default out of bounds"
            if isinstance(item, io.Combo.Input) and item.default is not None:
                assert item.default in item.options, f"{schema.node_id}.{item.id} default not an option"
        # ComfyUI's V1 view of the node (what /object_info serves) builds as well.
        info = cls.INPUT_TYPES()
        assert set(info["required"]) | set(info.get("optional", {})) >= {i.id for i in schema.inputs}
