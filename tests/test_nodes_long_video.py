"""SteadyDancer Long Video in real ComfyUI (needs COMFYUI_PATH; skips otherwise).

A tiny SteadyDancer DiT loaded by ComfyUI's own loader and a random full-architecture Wan2.1 VAE run the
node over several segments. Each segment's conditioning is checked against a construction written out
here from the node's own output frames (the kept frames of segment s are the last output frames of
segment s - 1), and segment 0 against the plain Image To Video + KSampler + VAE Decode chain.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.comfyui import harness
from tests.comfyui.tiny_models import CLIP_DIM, comfy_wan21_vae, random_clip_vision_vitl, tiny_dit_state_dict

from steadydancer_core import official_inputs

W, H = 16, 32
N = 11  # not 4n+1; segments of 5 frames carrying 1 -> output frames 0-4, 5-8, 9-10 (3 segments)
SEGMENT, CARRY, STEPS, SEED = 5, 1, 2, 3


@pytest.fixture(scope="module", autouse=True)
def long_video():
    return harness.pack_module("nodes.long_video")


@pytest.fixture(scope="module")
def keys():
    return harness.pack_module("nodes.cond_keys")


@pytest.fixture(scope="module")
def model():
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(tiny_dit_state_dict())


def clip_output(seed: int, dim: int = 48):
    import comfy.clip_vision

    out = comfy.clip_vision.Output()
    out["penultimate_hidden_states"] = torch.randn(1, 257, dim, generator=torch.Generator().manual_seed(seed))
    return out


def frames(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, H, W, 3, generator=torch.Generator().manual_seed(seed))


def text(seed: int) -> list:
    return [[torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(seed)), {}]]


def node_args(dit, **overrides) -> dict:
    args = dict(model=dit, positive=text(1), negative=text(2), vae=comfy_wan21_vae(),
                reference_image=frames(1, 3), pose_images=frames(N, 4), clip_vision_reference=clip_output(5),
                clip_vision_first_pose=clip_output(6), width=W, height=H, length=N, segment_frames=SEGMENT,
                carry_frames=CARRY, anchor="reference", color_match="reference", pose_strength_spatial=1.0,
                pose_strength_temporal=1.0, negative_pose_seed=0, seed=SEED, steps=STEPS, text_cfg=5.0,
                pose_cfg=1.0, pose_start=0.0, pose_end=0.9, formula="official", sampler_name="euler",
                scheduler="simple", negative_pose_images=frames(N, 7))
    args.update(overrides)
    return args


class Recorded:
    """One node run with what it handed to the shared builder and sampler, per segment."""

    def __init__(self, long_video, args: dict) -> None:
        import comfy.utils

        self.requests, self.conditionings, self.seeds, self.progress = [], [], [], []
        build, sample, render = long_video.build_conditionings, long_video.sample_dc_cfg, long_video.SegmentRenderer.__call__

        def record_build(*a, **k):
            self.conditionings.append(build(*a, **k))
            return self.conditionings[-1]

        def record_sample(model, seed, **k):
            self.seeds.append(seed)
            return sample(model, seed, **k)

        def record_render(renderer, request):
            self.requests.append(request)
            return render(renderer, request)

        hook = comfy.utils.PROGRESS_BAR_HOOK
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(long_video, "build_conditionings", record_build)
            patch.setattr(long_video, "sample_dc_cfg", record_sample)
            patch.setattr(long_video.SegmentRenderer, "__call__", record_render)
            comfy.utils.set_progress_bar_global_hook(lambda value, total, *_, **__: self.progress.append((value, total)))
            try:
                self.frames = long_video.SteadyDancerLongVideo.execute(**args).result[0]
            finally:
                comfy.utils.set_progress_bar_global_hook(hook)


@pytest.fixture(scope="module")
def long_run(long_video, model) -> Recorded:
    return Recorded(long_video, node_args(model))


def encode(images: torch.Tensor) -> torch.Tensor:
    i2v = harness.pack_module("nodes.image_to_video")
    return comfy_wan21_vae().encode(i2v.resize_frames(images, W, H))


def encode_pose(images: torch.Tensor) -> torch.Tensor:
    """Pose pictures as Image To Video encodes them: official resizing via the reference's size (H x W here, so
    the PIL step is skipped) after the 8-bit rounding of the pictures (the official code reads 8-bit files)."""
    i2v = harness.pack_module("nodes.image_to_video")
    return comfy_wan21_vae().encode(i2v.official_pose_frames(images, (H, W), W, H))


def test_long_video_gives_exactly_n_frames_over_three_segments(long_run):
    assert long_run.frames.shape == (N, H, W, 3) and long_run.frames.dtype == torch.float32
    assert [(r.segment.start, r.segment.length, r.segment.carried, r.segment.emitted) for r in long_run.requests] == [
        (0, 5, 0, 5), (4, 5, 1, 4), (8, 5, 1, 2)]
    # 8-bit frames, as every segment passes through the core's uint8 chain.
    assert torch.equal(long_run.frames, torch.round(long_run.frames * 255) / 255)


def test_long_video_segment_0_equals_image_to_video_ksampler_and_decode(long_run, model):
    """Same seed, same poses: bit for bit (after the 8-bit rounding every output frame goes through)."""
    import nodes as comfy_nodes

    i2v = harness.pack_module("nodes.image_to_video")
    sampling = harness.pack_module("nodes.sampling")
    pose = harness.pack_module("nodes.pose")
    args = node_args(model)
    positive, negative, negative_pose, latent = i2v.SteadyDancerImageToVideo.execute(
        positive=args["positive"], negative=args["negative"], vae=args["vae"],
        reference_image=args["reference_image"], pose_images=args["pose_images"],
        clip_vision_reference=args["clip_vision_reference"], clip_vision_first_pose=args["clip_vision_first_pose"],
        width=W, height=H, length=SEGMENT, negative_pose_images=args["negative_pose_images"]).result
    sampled = sampling.SteadyDancerKSampler.execute(model, SEED, STEPS, 5.0, 1.0, 0.0, 0.9, "euler", "simple", positive,
                                                    negative, negative_pose, latent, 1.0).result[0]
    decoded = comfy_nodes.VAEDecode().decode(args["vae"], sampled)[0]
    expected = pose.uint8_to_images(pose.images_to_uint8(decoded, "decoded"))
    assert torch.equal(long_run.frames[:SEGMENT], expected)
    assert long_run.seeds[0] == SEED and len(set(long_run.seeds)) == 3


def test_long_video_segment_conditionings_match_an_independent_construction(long_run, keys):
    """Later segments: mask keeps the carried frame only, the image latent is the previous output's last frame
    + grey, the poses are the segment's slice (last pose repeated), ref latents and CLIP stay the reference's."""
    positive0 = long_run.conditionings[0][0][0][1]
    reference_latent = encode(frames(1, 3))
    torch.testing.assert_close(positive0[keys.REF_IMAGE_LATENT], reference_latent, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(positive0[keys.REF_POSE_LATENT], encode_pose(frames(N, 4)[:1]))
    for request, (positive, negative, negative_pose, latent) in zip(long_run.requests[1:], long_run.conditionings[1:]):
        seg = request.segment
        cond = positive[0][1]
        # One kept pixel frame = latent frame 0 kept on all channels (0 = keep in ComfyUI's concat_mask).
        expected_mask = torch.ones(1, 1, 2, H // 8, W // 8)
        expected_mask[:, :, 0] = 0
        assert torch.equal(cond["concat_mask"], expected_mask)
        clip = torch.full((SEGMENT, H, W, 3), 0.5)
        clip[:CARRY] = long_run.frames[seg.start:seg.start + CARRY]
        torch.testing.assert_close(cond["concat_latent_image"], encode(clip))
        indices = [min(i, N - 1) for i in range(seg.start, seg.start + SEGMENT)]
        torch.testing.assert_close(cond[keys.POSE_LATENT], encode_pose(frames(N, 4)[indices]))
        torch.testing.assert_close(negative_pose[0][1][keys.POSE_LATENT], encode_pose(frames(N, 7)[indices]))
        for entry in (positive[0][1], negative[0][1], negative_pose[0][1]):
            assert entry[keys.REF_IMAGE_LATENT] is positive0[keys.REF_IMAGE_LATENT]
            assert entry[keys.REF_POSE_LATENT] is positive0[keys.REF_POSE_LATENT]
            assert entry["clip_vision_output"] is positive0["clip_vision_output"]
            assert entry[keys.POSE_CLIP_VISION_OUTPUT] is positive0[keys.POSE_CLIP_VISION_OUTPUT]
        assert latent["samples"].shape == (1, 16, 2, H // 8, W // 8)


def test_long_video_progress_runs_once_over_all_segments(long_run):
    total = 3 * STEPS
    assert [p for p in long_run.progress if p[1] == total] == [(i, total) for i in range(1, total + 1)]


def test_long_video_is_deterministic(long_video, model, long_run):
    again = long_video.SteadyDancerLongVideo.execute(**node_args(model)).result[0]
    assert torch.equal(again, long_run.frames)


def test_long_video_two_carried_frames_keep_a_partial_latent_frame(long_video, model):
    """carry 2: pixel frames 0 and 1 kept = latent frame 0 and channel 0 of latent frame 1."""
    run = Recorded(long_video, node_args(model, length=9, carry_frames=2, steps=1, color_match="none",
                                         pose_images=frames(9, 4), negative_pose_images=None))
    assert run.frames.shape == (9, H, W, 3)
    assert [(r.segment.start, r.segment.carried, r.segment.emitted) for r in run.requests] == [
        (0, 0, 5), (3, 2, 3), (6, 2, 1)]
    for request, (positive, _, negative_pose, _) in zip(run.requests[1:], run.conditionings[1:]):
        expected_mask = torch.ones(1, 4, 2, H // 8, W // 8)
        expected_mask[:, :, 0] = 0
        expected_mask[:, 0, 1] = 0
        assert torch.equal(positive[0][1]["concat_mask"], expected_mask)
        clip = torch.full((SEGMENT, H, W, 3), 0.5)
        clip[:2] = run.frames[request.segment.start:request.segment.start + 2]
        torch.testing.assert_close(positive[0][1]["concat_latent_image"], encode(clip))
        assert negative_pose == []  # no negative poses: the pose term is off in every segment


def test_long_video_segment_anchor_encodes_each_segments_first_frame_and_pose(long_video, keys):
    """anchor = segment: ref latents and CLIP of segment 1 are its own first frame (segment 0's last output
    frame) and first pose, each encoded alone; segment 0 keeps the reference's."""
    import comfy.clip_vision
    import comfy.sd

    from steadydancer_core.model import TINY

    clip_vision = comfy.clip_vision.load_clipvision_from_sd(random_clip_vision_vitl())
    model = comfy.sd.load_diffusion_model_state_dict(tiny_dit_state_dict(TINY.replace(clip_dim=CLIP_DIM)))
    reference_clip = clip_vision.encode_image(frames(1, 3), crop=False)
    pose_clip = clip_vision.encode_image(frames(9, 4)[:1], crop=False)
    run = Recorded(long_video, node_args(model, length=9, steps=1, anchor="segment", color_match="previous",
                                         pose_images=frames(9, 4), negative_pose_images=frames(9, 7),
                                         clip_vision_reference=reference_clip, clip_vision_first_pose=pose_clip,
                                         clip_vision=clip_vision))
    assert run.frames.shape == (9, H, W, 3) and len(run.requests) == 2
    first, second = (conds[0][0][1] for conds in run.conditionings)
    assert first["clip_vision_output"] is reference_clip and first[keys.POSE_CLIP_VISION_OUTPUT] is pose_clip
    anchor_frame, anchor_pose = run.frames[4:5], frames(9, 4)[4:5]
    torch.testing.assert_close(second[keys.REF_IMAGE_LATENT], encode(anchor_frame))
    torch.testing.assert_close(second[keys.REF_POSE_LATENT], encode_pose(anchor_pose))
    # CLIP with the official preprocessing: the frame as it is, the pose picture at the reference's size.
    clip_node = harness.pack_module("nodes.clip_vision")
    pose_native = official_inputs.poses_at_reference_size(
        (anchor_pose * 255).round().to(torch.uint8).numpy(), (H, W))
    for entry, images in ((second["clip_vision_output"], clip_node.images_to_model_range(anchor_frame)),
                          (second[keys.POSE_CLIP_VISION_OUTPUT], pose_native)):
        expected = clip_node.encode_model_range(clip_vision, images)[0]
        torch.testing.assert_close(entry.penultimate_hidden_states, expected.penultimate_hidden_states)
    # The negative-pose pass keeps the segment's positive first pose as ref_c.
    assert run.conditionings[1][2][0][1][keys.REF_POSE_LATENT] is second[keys.REF_POSE_LATENT]


def test_long_video_interrupt_stops_between_segments(long_video, model, monkeypatch):
    import comfy.model_management
    import comfy.utils

    calls = []
    sample = long_video.sample_dc_cfg

    def counting_sample(*a, **k):
        calls.append(1)
        return sample(*a, **k)

    def cancel_after_segment_0(value, total, *_, **__):
        if total == 3 * STEPS and value == STEPS:  # what the Cancel button does, at the last step of segment 0
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(long_video, "sample_dc_cfg", counting_sample)
    hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(cancel_after_segment_0)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            long_video.SteadyDancerLongVideo.execute(**node_args(model))
    finally:
        comfy.utils.set_progress_bar_global_hook(hook)
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 1


class NoVae:
    """Any VAE call fails loudly: the checks must all come first."""

    def encode(self, *_):
        raise AssertionError("VAE called before the inputs were checked")

    decode = encode


@pytest.mark.parametrize("overrides, message", [
    ({"width": 40}, "multiples of 16"),
    ({"length": 0}, "at least 1 frame"),
    ({"length": 12}, "pose_images has 11 frames but length is 12"),
    ({"negative_pose_images": frames(10, 7)}, "negative_pose_images has 10 frames"),
    ({"segment_frames": 6}, "segment_frames"),
    ({"carry_frames": 5}, "carry_frames must be between 1 and segment_frames - 1 = 4"),
    ({"anchor": "segment"}, "connect clip_vision"),
    ({"anchor": "first"}, "anchor must be one of"),
    ({"color_match": "mean"}, "color_match must be one of"),
    ({"clip_vision_first_pose": object()}, "clip_vision_first_pose has no penultimate hidden states"),
    ({"reference_image": torch.rand(1, 8, 8)}, "reference_image must be an IMAGE"),
    ({"model": object()}, "needs a SteadyDancer model"),
])
def test_long_video_bad_input_is_refused_before_any_segment(long_video, model, monkeypatch, overrides, message):
    def no_sampling(*_, **__):
        raise AssertionError("sampling started before the inputs were checked")

    monkeypatch.setattr(long_video, "sample_dc_cfg", no_sampling)
    with pytest.raises(ValueError, match=message):
        long_video.SteadyDancerLongVideo.execute(**node_args(model, vae=NoVae(), **overrides))


def test_long_video_negative_poses_from_keypoints(long_video, model, keys):
    """Without negative images, the negatives are made from POSE_KEYPOINT (official augmentation, seeded)
    for the whole video and sliced per segment like the positives."""
    from tests.test_nodes_image_to_video import pose_keypoint_doc

    i2v = harness.pack_module("nodes.image_to_video")
    doc = pose_keypoint_doc(N)
    run = Recorded(long_video, node_args(model, steps=1, negative_pose_images=None, pose_keypoints=doc,
                                         negative_pose_seed=9))
    pictures = i2v.negative_pose_frames(doc, N, W, H, 9)
    for request, (_, _, negative_pose, _) in zip(run.requests, run.conditionings):
        torch.testing.assert_close(negative_pose[0][1][keys.POSE_LATENT],
                                   encode_pose(pictures[torch.from_numpy(np.asarray(request.pose_indices))]))
