"""SteadyDancerDiT as a whole: shapes, batching, token path, injection points, dtypes, 14B tree, input checks."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dit_support import make_inputs, make_model, select
from steadydancer_core.model import OFFICIAL_14B, TINY, SteadyDancerDiT, sdpa_attention


@pytest.mark.parametrize("frames,height,width", [(1, 4, 6), (2, 8, 8), (3, 6, 10), (6, 4, 4)])
def test_forward_shape_for_latent_lengths_and_sizes(frames, height, width):
    """Latent T = 1 + (F-1)/4 for F = 1, 5, 9, 21 pixel frames; the two reference frames are sliced off."""
    model = make_model()
    inputs = make_inputs(frames=frames, height=height, width=width)
    with torch.no_grad():
        out = model(**inputs)
    assert out.shape == (1, TINY.out_dim, frames, height, width)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() > 0


def test_batch_of_two_equals_two_batches_of_one():
    model = make_model()
    inputs = make_inputs(batch=2, frames=3, height=6, width=8)
    inputs["timestep"] = torch.tensor([700.0, 120.0])
    with torch.no_grad():
        batched = model(**inputs)
        singles = torch.cat([model(**select(inputs, i)) for i in range(2)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-3


def _capture_block_input(model: SteadyDancerDiT, inputs: dict) -> torch.Tensor:
    captured = []
    handle = model.blocks[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return captured[0]


def test_tokens_without_pose_are_the_plain_wan_i2v_token_path():
    """With channels 36..67 (fused and aligned pose) of ``patch_embedding_fuse.weight`` set to zero, the video
    tokens are exactly the plain Wan2.1-I2V patch embedding of x with weight ``patch_embedding_fuse.weight[:, :36]``
    and its bias, whatever the pose latents. Zero pose latents alone are NOT enough: the pose branch of a
    zero input is not zero (temporal conv biases and SiLU, GroupNorm biases of the DYModule, the alignment
    unit's biases/LayerNorm2D), so the fuse weights are what must be zeroed. The two extra token frames are
    ``patch_embedding(ref_x | ones(4) | ref_x)`` and ``patch_embedding_ref_c(ref_c)``, in that order."""
    model = make_model()
    with torch.no_grad():
        model.patch_embedding_fuse.weight[:, TINY.in_dim:] = 0.0
    inputs = make_inputs(frames=3, height=6, width=8)
    inputs["pose_latents"] = torch.zeros_like(inputs["pose_latents"])
    with torch.no_grad():
        fused, aligned = model.pose_features(inputs["pose_latents"], inputs["x"][:, :16])
    assert fused.abs().max() > 1e-3 and aligned.abs().max() > 1e-3  # the pose branch of zero is not zero

    tokens = _capture_block_input(model, inputs)
    weight, bias = model.patch_embedding_fuse.weight, model.patch_embedding_fuse.bias
    x = inputs["x"]
    video = F.conv3d(x, weight[:, :TINY.in_dim], bias, stride=(1, 2, 2))
    ref_x_in = torch.cat([inputs["ref_x"], torch.ones(1, 4, 1, 6, 8), inputs["ref_x"]], dim=1)
    ref_x = F.conv3d(ref_x_in, model.patch_embedding.weight, model.patch_embedding.bias, stride=(1, 2, 2))
    ref_c = F.conv3d(inputs["ref_c"], model.patch_embedding_ref_c.weight, model.patch_embedding_ref_c.bias,
                     stride=(1, 2, 2))
    expected = torch.cat([video, ref_x, ref_c], dim=2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)

    other_pose = dict(inputs, pose_latents=torch.randn_like(inputs["pose_latents"]))
    torch.testing.assert_close(_capture_block_input(model, other_pose), tokens, atol=0, rtol=0)


def test_context_is_zero_padded_to_text_len():
    model = make_model()
    inputs = make_inputs(text_tokens=5)
    padded = dict(inputs, context=F.pad(inputs["context"], (0, 0, 0, TINY.text_len - 5)))
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), model(**padded), atol=0, rtol=0)
        # Padding is part of the model: the padded rows are attended to (official, no mask).
        truncated_attention = model(**dict(inputs, context=inputs["context"][:, :4]))
    assert (truncated_attention - model(**inputs)).abs().max() > 1e-5


def test_integer_and_float_timesteps_agree_and_matter():
    model = make_model()
    inputs = make_inputs()
    with torch.no_grad():
        as_float = model(**dict(inputs, timestep=torch.tensor([700.0])))
        as_int = model(**dict(inputs, timestep=torch.tensor([700])))
        scalar = model(**dict(inputs, timestep=700))
        other = model(**dict(inputs, timestep=torch.tensor([300.0])))
    assert torch.equal(as_float, as_int) and torch.equal(as_float, scalar)
    assert (as_float - other).abs().max() > 1e-3


def test_injected_attention_is_used_for_every_block():
    calls = []

    def counting_attention(q, k, v, heads):
        calls.append((q.shape[1], k.shape[1], heads))
        return sdpa_attention(q, k, v, heads)

    plain = make_model(seed=3)
    injected = make_model(seed=3, attention=counting_attention)
    inputs = make_inputs(frames=2, height=4, width=6, text_tokens=3)
    with torch.no_grad():
        torch.testing.assert_close(injected(**inputs), plain(**inputs), atol=0, rtol=0)
    tokens = (2 + 2) * 2 * 3
    per_block = [(tokens, tokens, TINY.num_heads), (tokens, TINY.text_len, TINY.num_heads),
                 (tokens, 257, TINY.num_heads)]
    assert calls == per_block * TINY.num_layers


class _CastingOps:
    """A stand-in for ``comfy.ops.manual_cast``: weights stay in their storage dtype and are cast to the
    input's dtype at every call."""

    class Linear(nn.Linear):
        def forward(self, x):
            return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    class Conv2d(nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    class Conv3d(nn.Conv3d):
        def forward(self, x):
            return self._conv_forward(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    class LayerNorm(nn.LayerNorm):
        def forward(self, x):
            weight = None if self.weight is None else self.weight.to(x.dtype)
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)

    class GroupNorm(nn.GroupNorm):
        def forward(self, x):
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


#: The parameters that live outside an ``operations`` layer and are cast at use.
BARE_PARAMETER_SUFFIXES = ("modulation", "norm_q.weight", "norm_k.weight", "norm_k_img.weight",
                           "cross_attn.in_proj_weight", "cross_attn.in_proj_bias",
                           "align.norm1.weight", "align.norm1.bias", "align.norm2.weight", "align.norm2.bias")


def test_every_layer_comes_from_operations_and_bare_parameters_are_cast_at_use():
    ops_classes = tuple(getattr(_CastingOps, n) for n in ("Linear", "Conv2d", "Conv3d", "LayerNorm", "GroupNorm"))
    model = make_model(operations=_CastingOps, dtype=torch.float16)
    owners = dict(model.named_modules())
    for name, _ in model.named_parameters():
        owner = owners[name.rsplit(".", 1)[0]]
        assert isinstance(owner, ops_classes) or name.endswith(BARE_PARAMETER_SUFFIXES), name

    # fp16 storage, float32 compute: only possible if every weight is cast to the activation's dtype.
    reference = make_model()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    inputs = make_inputs(frames=2)
    with torch.no_grad():
        out = model(**inputs)
        expected = reference(**inputs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_bfloat16_model_gives_bfloat16_output_close_to_float32():
    model = make_model(dtype=torch.bfloat16)
    reference = make_model()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    inputs = make_inputs(frames=2)
    with torch.no_grad():
        out = model(**dict(inputs, x=inputs["x"].bfloat16()))  # other inputs stay float32: cast inside
        expected = reference(**inputs)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    relative = (out.float() - expected).norm() / expected.norm()
    assert relative < 0.05, relative


def test_official_14b_module_tree_on_meta_device():
    model = SteadyDancerDiT(OFFICIAL_14B, device="meta")
    state = model.state_dict()
    assert len(state) == 1345
    assert sum(v.numel() for v in state.values()) == 16_396_718_736
    assert "freqs" not in state and not list(model.buffers())
    expected_shapes = {
        "patch_embedding.weight": (5120, 36, 1, 2, 2),
        "patch_embedding_fuse.weight": (5120, 68, 1, 2, 2),
        "patch_embedding_ref_c.weight": (5120, 16, 1, 2, 2),
        "condition_embedding_spatial.conv.weight": (16, 16, 1, 1),
        "condition_embedding_spatial.conv_q.weight": (4, 16, 1, 1),
        "condition_embedding_spatial.fc.0.weight": (4, 16),
        "condition_embedding_spatial.fc.1.fc.0.weight": (4, 4),
        "condition_embedding_spatial.fc_phi.weight": (16, 4),
        "condition_embedding_spatial.fc_scale.weight": (16, 4),
        "condition_embedding_spatial.conv_p.weight": (16, 4, 1, 1),
        "condition_embedding_spatial.bn1.weight": (4,),
        "condition_embedding_spatial.bn2.bias": (4,),
        "condition_embedding_temporal.0.spatial.weight": (16, 1, 1, 3, 3),
        "condition_embedding_temporal.4.temporal.weight": (16, 16, 3, 1, 1),
        "condition_embedding_temporal.4.temporal.bias": (16,),
        "condition_embedding_align.proj_p.weight": (128, 16, 1, 1),
        "condition_embedding_align.proj_r.weight": (128, 16, 1, 1),
        "condition_embedding_align.proj_p_back.weight": (16, 128, 1, 1),
        "condition_embedding_align.cross_attn.in_proj_weight": (384, 128),
        "condition_embedding_align.cross_attn.in_proj_bias": (384,),
        "condition_embedding_align.cross_attn.out_proj.weight": (128, 128),
        "condition_embedding_align.ffn_pose.2.weight": (128, 128, 1, 1),
        "condition_embedding_align.norm1.weight": (1, 128, 1, 1),
        "condition_embedding_align.norm2.bias": (1, 128, 1, 1),
        "blocks.39.modulation": (1, 6, 5120),
        "blocks.0.self_attn.norm_q.weight": (5120,),
        "blocks.0.norm3.weight": (5120,),
        "blocks.0.cross_attn.k_img.weight": (5120, 5120),
        "blocks.0.cross_attn.norm_k_img.weight": (5120,),
        "blocks.0.ffn.0.weight": (13824, 5120),
        "blocks.0.ffn.2.weight": (5120, 13824),
        "head.modulation": (1, 2, 5120),
        "head.head.weight": (64, 5120),
        "img_emb.proj.0.weight": (1280,),
        "img_emb.proj.1.weight": (1280, 1280),
        "img_emb.proj.3.weight": (5120, 1280),
        "img_emb.proj.4.weight": (5120,),
        "text_embedding.0.weight": (5120, 4096),
        "time_embedding.0.weight": (5120, 256),
        "time_projection.1.weight": (30720, 5120),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    prefixes = {}
    for key, value in state.items():
        prefix = key.split(".")[0]
        count, params = prefixes.get(prefix, (0, 0))
        prefixes[prefix] = (count + 1, params + value.numel())
    assert prefixes == {  # model_spec §1.2
        "patch_embedding": (2, 742_400), "patch_embedding_fuse": (2, 1_397_760),
        "patch_embedding_ref_c": (2, 332_800), "condition_embedding_spatial": (11, 608),
        "condition_embedding_temporal": (9, 2_784), "condition_embedding_align": (18, 106_000),
        "text_embedding": (4, 47_196_160), "time_embedding": (4, 27_535_360),
        "time_projection": (2, 157_317_120), "blocks": (1280, 16_153_538_560), "head": (3, 337_984),
        "img_emb": (8, 8_211_200),
    }


@pytest.mark.parametrize("change,message", [
    (lambda i: i.update(x=i["x"][:, :20]), r"x must be \[B, 36, T, H, W\].*got \(1, 20, 3, 8, 12\)"),
    (lambda i: i.update(x=i["x"][..., :7, :], pose_latents=i["pose_latents"][..., :7, :],
                        ref_x=i["ref_x"][..., :7, :], ref_c=i["ref_c"][..., :7, :]),
     r"multiples of the patch size \(2, 2\); got H=7, W=12"),
    (lambda i: i.update(pose_latents=i["pose_latents"][:, :, :2]),
     r"pose_latents must be \[1, 16, 3, 8, 12\] to match x \(1, 36, 3, 8, 12\); got \(1, 16, 2, 8, 12\)"),
    (lambda i: i.update(ref_x=torch.zeros(1, 36, 1, 8, 12)), r"ref_x must be \[1, 16, 1, 8, 12\].*got \(1, 36, 1, 8, 12\)"),
    (lambda i: i.update(ref_c=i["pose_latents"]), r"ref_c must be \[1, 16, 1, 8, 12\].*got \(1, 16, 3, 8, 12\)"),
    (lambda i: i.update(clip_fea_c=i["clip_fea_c"][:, :1]), r"clip_fea_c must have the shape of clip_fea_x"),
    (lambda i: i.update(clip_fea_x=torch.zeros(1, 257, 7), clip_fea_c=torch.zeros(1, 257, 7)),
     r"clip_fea_x must be \[1, tokens, 48\]; got \(1, 257, 7\)"),
    (lambda i: i.update(context=torch.zeros(1, 5, 9)), r"context must be \[1, L, 32\]; got \(1, 5, 9\)"),
    (lambda i: i.update(timestep=torch.tensor([1.0, 2.0, 3.0])), r"timestep must hold 1 or B=1 values"),
    (lambda i: i.update(x=i["x"].long()), r"floating-point"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    model = make_model()
    inputs = make_inputs(frames=3, height=8, width=12)
    change(inputs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_configs_the_model_cannot_run_are_rejected():
    with pytest.raises(ValueError, match="temporal patch size of 1"):
        SteadyDancerDiT(TINY.replace(patch_size=(2, 2, 2)), device="meta")
