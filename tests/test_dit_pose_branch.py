"""Each pose module against an independent computation written here from model_spec §2 steps 3-6."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dit_support import make_inputs, make_model
from steadydancer_core.model import TINY
from steadydancer_core.model.pose_branch import dynamic_conv_sizes


def _randomise_norms(model) -> None:
    """Give the affine norms non-trivial values (they initialise to ones/zeros) so the checks see them."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("condition_embedding") and ("bn" in name or "norm" in name or "in_proj_bias" in name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("weight") else 0.0))


def test_dynamic_conv_sizes_of_release():
    """model_spec §1.3: DYModule(16, 16) has latent dim 4 and squeeze width 4."""
    assert dynamic_conv_sizes(16) == (4, 4)


def test_temporal_module_equals_explicit_conv3d_calls():
    model = make_model()
    pose = make_inputs(frames=5)["pose_latents"]
    sd = model.state_dict()
    expected = pose
    for i in (0, 2, 4):
        expected = F.conv3d(expected, sd[f"condition_embedding_temporal.{i}.spatial.weight"], padding=(0, 1, 1),
                            groups=16)
        expected = F.silu(expected)
        expected = F.conv3d(expected, sd[f"condition_embedding_temporal.{i}.temporal.weight"],
                            sd[f"condition_embedding_temporal.{i}.temporal.bias"], padding=(1, 0, 0))
        expected = F.silu(expected)
    with torch.no_grad():
        out = model.condition_embedding_temporal(pose)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def _hsig(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(v + 3.0, 0.0, 6.0) / 3.0


def _instance_norm(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GroupNorm(4 groups, 4 channels) = normalise each channel over its positions, eps 1e-5."""
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + 1e-5) * weight[:, None] + bias[:, None]


def test_dymodule_equals_formula():
    """model_spec §2 step 4, per frame c [16, H, W]:
    r = conv(c); s = fc0(mean_HW c); s = s * hsig(W_se s); Phi = fc_phi(s) as 4x4; alpha = hsig(fc_scale s);
    u = bn1(conv_q c); out = conv_p(bn2(Phi u) + u) + alpha * r, hsig(v) = relu6(v+3)/3."""
    model = make_model()
    _randomise_norms(model)
    sd = {k[len("condition_embedding_spatial."):]: v for k, v in model.state_dict().items()
          if k.startswith("condition_embedding_spatial.")}
    frames = make_inputs(frames=4)["pose_latents"][0].transpose(0, 1)  # [T, 16, H, W]
    n, c, h, w = frames.shape
    expected = []
    for frame in frames:
        pixels = frame.reshape(c, h * w)
        r = sd["conv.weight"][:, :, 0, 0] @ pixels
        s = sd["fc.0.weight"] @ pixels.mean(dim=1)
        s = s * _hsig(sd["fc.1.fc.0.weight"] @ s)
        phi = (sd["fc_phi.weight"] @ s).view(4, 4)
        alpha = _hsig(sd["fc_scale.weight"] @ s)
        u = _instance_norm(sd["conv_q.weight"][:, :, 0, 0] @ pixels, sd["bn1.weight"], sd["bn1.bias"])
        u = _instance_norm(phi @ u, sd["bn2.weight"], sd["bn2.bias"]) + u
        out = sd["conv_p.weight"][:, :, 0, 0] @ u + alpha[:, None] * r
        expected.append(out.view(c, h, w))
    with torch.no_grad():
        out = model.condition_embedding_spatial(frames)
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=1e-5)


def _load_mha(model) -> torch.nn.MultiheadAttention:
    align = model.condition_embedding_align
    mha = torch.nn.MultiheadAttention(TINY.align_dim, TINY.align_heads, dropout=0.1, batch_first=False).eval()
    mha.load_state_dict({
        "in_proj_weight": align.cross_attn.in_proj_weight.detach(),
        "in_proj_bias": align.cross_attn.in_proj_bias.detach(),
        "out_proj.weight": align.cross_attn.out_proj.weight.detach(),
        "out_proj.bias": align.cross_attn.out_proj.bias.detach(),
    })
    return mha


def _official_alignment(model, pose: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The released computation for one sample: conv 1x1 per frame, MultiheadAttention(batch_first=False)
    on [T, H*W, 128] (time is the sequence), LayerNorm2D, residual FFN, LayerNorm2D, conv back."""
    sd = {k[len("condition_embedding_align."):]: v for k, v in model.state_dict().items()
          if k.startswith("condition_embedding_align.")}
    _, _, t, h, w = pose.shape
    p = F.conv2d(pose[0].transpose(0, 1), sd["proj_p.weight"], sd["proj_p.bias"]).flatten(2).transpose(1, 2)
    r = F.conv2d(latent[0].transpose(0, 1), sd["proj_r.weight"], sd["proj_r.bias"]).flatten(2).transpose(1, 2)
    out = _load_mha(model)(query=r, key=p, value=p, need_weights=False)[0]  # [T, HW, 128]
    out = out.transpose(1, 2).reshape(t, -1, h, w)

    def layer_norm_2d(v, prefix):
        mean = v.mean(dim=1, keepdim=True)
        var = v.var(dim=1, keepdim=True, unbiased=False)
        return (v - mean) / torch.sqrt(var + 1e-5) * sd[f"{prefix}.weight"] + sd[f"{prefix}.bias"]

    out = layer_norm_2d(out, "norm1")
    ffn = F.conv2d(F.silu(F.conv2d(out, sd["ffn_pose.0.weight"], sd["ffn_pose.0.bias"])),
                   sd["ffn_pose.2.weight"], sd["ffn_pose.2.bias"])
    out = layer_norm_2d(out + ffn, "norm2")
    out = F.conv2d(out, sd["proj_p_back.weight"], sd["proj_p_back.bias"])
    return out.transpose(0, 1)[None]


def test_alignment_unit_equals_multihead_attention_over_time():
    model = make_model()
    _randomise_norms(model)
    inputs = make_inputs(frames=6, height=6, width=10)
    pose, latent = inputs["pose_latents"], inputs["x"][:, :16]
    with torch.no_grad():
        out = model.condition_embedding_align(pose, latent)
        expected = _official_alignment(model, pose, latent)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


def test_alignment_unit_attends_over_time_per_pixel():
    """Perturbing the pose at one (frame, pixel) changes outputs at that pixel in every frame and nowhere else."""
    model = make_model()
    inputs = make_inputs(frames=4, height=4, width=6)
    pose, latent = inputs["pose_latents"], inputs["x"][:, :16]
    bumped = pose.clone()
    bumped[:, :, 1, 2, 3] += 5.0
    with torch.no_grad():
        delta = (model.condition_embedding_align(bumped, latent) - model.condition_embedding_align(pose, latent)).abs()
    changed = delta.amax(dim=(0, 1)) > 1e-6  # [T, H, W]
    expected = torch.zeros_like(changed)
    expected[:, 2, 3] = True
    assert torch.equal(changed, expected)


def test_alignment_unit_keeps_samples_independent():
    model = make_model()
    inputs = make_inputs(batch=2, frames=3, height=4, width=6)
    pose, latent = inputs["pose_latents"], inputs["x"][:, :16]
    with torch.no_grad():
        batched = model.condition_embedding_align(pose, latent)
        for i in range(2):
            single = _official_alignment(model, pose[i:i + 1], latent[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], single, atol=2e-5, rtol=1e-5)


def test_pose_strengths_scale_the_branch_outputs():
    """fused = pose + s_t * temporal(pose) + s_s * spatial(pose); s = 0 removes a branch exactly."""
    model = make_model()
    inputs = make_inputs(frames=3)
    pose, noise = inputs["pose_latents"], inputs["x"][:, :16]
    b, c, t, h, w = pose.shape
    with torch.no_grad():
        temporal = model.condition_embedding_temporal(pose)
        spatial = model.condition_embedding_spatial(pose.transpose(1, 2).reshape(b * t, c, h, w))
        spatial = spatial.view(b, t, c, h, w).transpose(1, 2)
        for s_s, s_t in [(1.0, 1.0), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.5, 1.7)]:
            fused, aligned = model.pose_features(pose, noise, pose_strength_spatial=s_s, pose_strength_temporal=s_t)
            torch.testing.assert_close(fused, pose + s_t * temporal + s_s * spatial, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(aligned, model.condition_embedding_align(fused, noise), atol=0, rtol=0)
        fused, _ = model.pose_features(pose, noise, 0.0, 0.0)
        assert torch.equal(fused, pose)


def test_pose_strength_defaults_are_official_and_zero_changes_output():
    model = make_model()
    inputs = make_inputs(frames=2)
    with torch.no_grad():
        default = model(**inputs)
        explicit = model(**inputs, pose_strength_spatial=1.0, pose_strength_temporal=1.0)
        no_spatial = model(**inputs, pose_strength_spatial=0.0)
        no_temporal = model(**inputs, pose_strength_temporal=0.0)
    assert torch.equal(default, explicit)
    assert (no_spatial - default).abs().max() > 1e-4
    assert (no_temporal - default).abs().max() > 1e-4
    assert (no_spatial - no_temporal).abs().max() > 1e-4
