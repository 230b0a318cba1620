"""The V3 extension object ComfyUI asks the pack for (``comfy_entrypoint``)."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .clip_vision import SteadyDancerClipVisionEncode
from .image_to_video import SteadyDancerImageToVideo
from .long_video import SteadyDancerLongVideo
from .pose import (SteadyDancerAlignPoses, SteadyDancerExtractPoses, SteadyDancerNegativePose,
                   SteadyDancerPoseDetectorLoader, SteadyDancerPosePipeline, SteadyDancerRenderPoses)
from .sampling import (SteadyDancerDCCFGGuider, SteadyDancerKSampler, SteadyDancerOfficialSampler,
                       SteadyDancerOfficialSchedule)
from .text_embeds import SteadyDancerLoadTextEmbeds, SteadyDancerSaveTextEmbeds
from .video import SteadyDancerLoadVideo

NODE_LIST: list[type[io.ComfyNode]] = [
    SteadyDancerImageToVideo,
    SteadyDancerClipVisionEncode,
    SteadyDancerDCCFGGuider,
    SteadyDancerKSampler,
    SteadyDancerLongVideo,
    SteadyDancerOfficialSchedule,
    SteadyDancerOfficialSampler,
    SteadyDancerSaveTextEmbeds,
    SteadyDancerLoadTextEmbeds,
    SteadyDancerLoadVideo,
    SteadyDancerPoseDetectorLoader,
    SteadyDancerExtractPoses,
    SteadyDancerAlignPoses,
    SteadyDancerNegativePose,
    SteadyDancerRenderPoses,
    SteadyDancerPosePipeline,
]


class SteadyDancerExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_LIST)
