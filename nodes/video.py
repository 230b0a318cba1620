"""SteadyDancer Load Video: driving frames resampled to the model's 16 fps (``steadydancer_core.video``)."""
from __future__ import annotations

import os

import torch

import folder_paths
from comfy_api.latest import io

from ..steadydancer_core import video as core_video

CATEGORY = "SteadyDancer"


class SteadyDancerLoadVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        input_dir = folder_paths.get_input_directory()
        files = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
        return io.Schema(
            node_id="SteadyDancerLoadVideo",
            display_name="SteadyDancer Load Video",
            category=CATEGORY,
            description="Decode a driving video to frames at a fixed frame rate (nearest source frame per "
                        "output time, phone rotation applied), at most max_frames, trimmed to 4n+1.",
            inputs=[
                io.Combo.Input("video", options=sorted(folder_paths.filter_files_content_types(files, ["video"])),
                               upload=io.UploadType.video, tooltip="A video in ComfyUI's input folder."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Output frame rate; SteadyDancer was trained at 16 fps."),
                io.Int.Input("max_frames", default=81, min=1, max=100001, step=4,
                             tooltip="Most frames to read (4n+1; 81 = 5 s at 16 fps)."),
            ],
            outputs=[io.Image.Output(display_name="frames"), io.Int.Output(display_name="frame_count"),
                     io.Float.Output(display_name="fps")],
        )

    @classmethod
    def execute(cls, video: str, fps: float, max_frames: int) -> io.NodeOutput:
        frames, _ = core_video.read_video(folder_paths.get_annotated_filepath(video), fps=fps,
                                                max_frames=max_frames)
        return io.NodeOutput(torch.from_numpy(frames).float() / 255.0, int(frames.shape[0]), float(fps))

    @classmethod
    def fingerprint_inputs(cls, video: str, fps: float, max_frames: int) -> float:
        # Re-run when the file changes (same rule as core LoadVideo).
        return os.path.getmtime(folder_paths.get_annotated_filepath(video))
