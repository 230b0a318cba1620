"""The SteadyDancer DiT: Wan2.1-I2V-14B plus the pose branch, in ComfyUI's idiom (DESIGN D1, D3, D4).

Input convention (D3): ``x`` is ComfyUI's 36-channel I2V input, noise (16) | mask (4) | first-frame
image latent (16), concatenated by the caller; ``x[:, :16]`` is the alignment unit's query. The pose
latents, the reference latents ``ref_x``/``ref_c`` and both CLIP features arrive as extra arguments.
Token frames are ordered [video (T), ref_x (1), ref_c (1)] with RoPE frame positions 0..T+1; the two
reference frames are dropped from the output.

The forward runs in ``x.dtype`` (ComfyUI hands the model its compute dtype); all other inputs are
cast to it. Parameter names equal the official state-dict keys.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn as nn

from .attention import AttentionFn, sdpa_attention
from .config import DiTConfig
from .layers import AttentionBlock, Head, MLPProj, Operations, sinusoidal_embedding
from .pose_branch import DYModule, PoseAlignmentUnit, temporal_pose_module
from .rope import rope_cos_sin

#: Token frames appended after the video: ref_x, then ref_c.
REFERENCE_FRAMES = 2

#: A replacement for block ``i`` of the loop: ``replacement(args, {"original_block": run})`` returns a dict whose
#: ``"img"`` is the block's output tokens. ``args`` holds ``"img"`` (tokens [B, L, dim]), ``"txt"`` (context),
#: ``"vec"`` (projected time embedding e0 [B, 6, dim]), ``"pe"`` ((rope_cos, rope_sin)) and ``"context_img_len"``
#: (CLIP tokens at the front of the context); ``run(args)`` runs the original block on such a dict. The layout
#: is the one DiT block patches use (ComfyUI's ``patches_replace["dit"]``), so an adapter can pass them through.
BlockReplacement = Callable[[dict[str, Any], dict[str, Callable[[dict[str, Any]], dict[str, Any]]]], dict[str, Any]]


class TokenSharding(Protocol):
    """Splits the tokens over ranks before the blocks and gathers the head's output after them
    (``steadydancer_core.parallel.sequence_parallel.UlyssesSharding``)."""

    def shard(self, tokens: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def gather(self, tokens: torch.Tensor) -> torch.Tensor: ...


class SteadyDancerDiT(nn.Module):
    """SteadyDancer DiT with the official module tree (1,345 keys for the 14B config)."""

    def __init__(self, config: DiTConfig, operations: Operations = nn, attention: AttentionFn = sdpa_attention,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if config.patch_size[0] != 1:
            raise ValueError(f"SteadyDancer needs a temporal patch size of 1 (the reference token frames are single "
                             f"latent frames); got patch_size={config.patch_size}")
        if config.in_dim - 2 * config.out_dim <= 0:
            raise ValueError(f"in_dim ({config.in_dim}) must hold noise + mask + image latent "
                             f"(2 x out_dim = {2 * config.out_dim} plus mask channels)")
        self.config = config
        # ComfyUI's model_base reads ``diffusion_model.dtype`` as the storage dtype.
        self.dtype = dtype
        dim = config.dim
        ops = {"device": device, "dtype": dtype}

        # Condition-reconciliation: three patch embeddings (ref_x, video + pose, ref_c).
        self.patch_embedding = operations.Conv3d(config.in_dim, dim, kernel_size=config.patch_size,
                                                 stride=config.patch_size, **ops)
        self.patch_embedding_fuse = operations.Conv3d(config.fuse_in_dim, dim, kernel_size=config.patch_size,
                                                      stride=config.patch_size, **ops)
        self.patch_embedding_ref_c = operations.Conv3d(config.in_dim_c, dim, kernel_size=config.patch_size,
                                                       stride=config.patch_size, **ops)

        # Synergistic pose modulation.
        self.condition_embedding_spatial = DYModule(config.in_dim_c, operations, **ops)
        self.condition_embedding_temporal = temporal_pose_module(config.in_dim_c, operations, **ops)
        self.condition_embedding_align = PoseAlignmentUnit(config.in_dim_c, config.out_dim, config.align_dim,
                                                           config.align_heads, operations, **ops)

        self.text_embedding = nn.Sequential(
            operations.Linear(config.text_dim, dim, **ops), nn.GELU(approximate="tanh"),
            operations.Linear(dim, dim, **ops))
        self.time_embedding = nn.Sequential(
            operations.Linear(config.freq_dim, dim, **ops), nn.SiLU(), operations.Linear(dim, dim, **ops))
        self.time_projection = nn.Sequential(nn.SiLU(), operations.Linear(dim, dim * 6, **ops))

        self.blocks = nn.ModuleList([
            AttentionBlock(dim, config.ffn_dim, config.num_heads, config.eps, attention, operations, **ops)
            for _ in range(config.num_layers)
        ])
        self.head = Head(dim, config.out_dim, config.patch_size, config.eps, operations, **ops)
        self.img_emb = MLPProj(config.clip_dim, dim, operations, **ops)
        # Sequence parallelism (None: one process holds every token); set by steadydancer_core.parallel.
        self.sequence_parallel: TokenSharding | None = None

    # ---- input checks ------------------------------------------------------------------------

    def _validate(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                  clip_fea_x: torch.Tensor, clip_fea_c: torch.Tensor, pose_latents: torch.Tensor,
                  ref_x: torch.Tensor, ref_c: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x must be [B, {cfg.in_dim}, T, H, W] (noise {cfg.out_dim} | mask "
                             f"{cfg.in_dim - 2 * cfg.out_dim} | image latent {cfg.out_dim}); got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor; got dtype {x.dtype}")
        b, _, t, h, w = x.shape
        _, ph, pw = cfg.patch_size
        if h % ph or w % pw:
            raise ValueError(f"latent height and width must be multiples of the patch size ({ph}, {pw}); "
                             f"got H={h}, W={w} from x {tuple(x.shape)}")
        expected = {
            "pose_latents": (pose_latents, (b, cfg.in_dim_c, t, h, w)),
            "ref_x": (ref_x, (b, cfg.out_dim, 1, h, w)),
            "ref_c": (ref_c, (b, cfg.in_dim_c, 1, h, w)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must be {list(shape)} to match x {tuple(x.shape)}; "
                                 f"got {tuple(tensor.shape)}")
        if clip_fea_x.ndim != 3 or clip_fea_x.shape[0] != b or clip_fea_x.shape[2] != cfg.clip_dim:
            raise ValueError(f"clip_fea_x must be [{b}, tokens, {cfg.clip_dim}]; got {tuple(clip_fea_x.shape)}")
        if clip_fea_c.shape != clip_fea_x.shape:
            raise ValueError(f"clip_fea_c must have the shape of clip_fea_x {tuple(clip_fea_x.shape)} "
                             f"(the two are summed); got {tuple(clip_fea_c.shape)}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise ValueError(f"context must be [{b}, L, {cfg.text_dim}]; got {tuple(context.shape)}")
        if timestep.numel() not in (1, b):
            raise ValueError(f"timestep must hold 1 or B={b} values; got shape {tuple(timestep.shape)}")

    # ---- pieces of the forward ---------------------------------------------------------------

    def pose_features(self, pose_latents: torch.Tensor, noise: torch.Tensor, pose_strength_spatial: float = 1.0,
                      pose_strength_temporal: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused, aligned) pose features ``[B, in_dim_c, T, H, W]``.

        fused = pose + s_t * temporal(pose) + s_s * spatial(pose) (official: s = 1);
        aligned = alignment unit with ``noise`` as query and ``fused`` as key/value.
        """
        b, c, t, h, w = pose_latents.shape
        temporal = self.condition_embedding_temporal(pose_latents)
        frames = pose_latents.transpose(1, 2).reshape(b * t, c, h, w)
        spatial = self.condition_embedding_spatial(frames).view(b, t, c, h, w).transpose(1, 2)
        fused = pose_latents + pose_strength_temporal * temporal + pose_strength_spatial * spatial
        aligned = self.condition_embedding_align(fused, noise)
        return fused, aligned

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, F*h*w, prod(patch)*out_dim]`` (per token ordered (p, q, r, c)) -> ``[B, out_dim, F*p, h*q, w*r]``."""
        f, h, w = grid
        p, q, r = self.config.patch_size
        c = self.config.out_dim
        b = tokens.shape[0]
        u = tokens.view(b, f, h, w, p, q, r, c)
        u = u.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return u.reshape(b, c, f * p, h * q, w * r)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor,
                clip_fea_x: torch.Tensor, clip_fea_c: torch.Tensor, pose_latents: torch.Tensor,
                ref_x: torch.Tensor, ref_c: torch.Tensor, pose_strength_spatial: float = 1.0,
                pose_strength_temporal: float = 1.0,
                block_replacements: Mapping[int, BlockReplacement] | None = None) -> torch.Tensor:
        """Predict the flow velocity (noise - x0) ``[B, out_dim, T, H, W]`` in ``x.dtype``.

        Args:
            x: [B, 36, T, H, W] noise | mask | first-frame image latent.
            timestep: [B] (or one value) — int-truncated or float sigma*1000.
            context: [B, L, text_dim] T5 features, zero-padded here to ``text_len`` (no mask, as official);
                L > text_len (ComfyUI's umT5 does not truncate long prompts) is used as given.
            clip_fea_x, clip_fea_c: [B, 257, clip_dim] CLIP of the reference image and of the first positive
                pose frame; projected by the same ``img_emb`` and summed.
            pose_latents: [B, 16, T, H, W] positive or negative pose latents.
            ref_x: [B, 16, 1, H, W] image latent of frame 0.
            ref_c: [B, 16, 1, H, W] first POSITIVE pose latent frame (also in the negative-pose pass).
            pose_strength_spatial, pose_strength_temporal: multipliers of the spatial/temporal pose
                branch outputs in the fused pose (1.0 = official).
            block_replacements: ``{block index: BlockReplacement}`` run instead of those blocks (e.g. skip-layer
                guidance, block caches); None or empty runs every block as is.

        All inputs are cast to ``x.dtype``/``x.device``, which is the compute dtype of the whole forward.
        """
        timestep = torch.as_tensor(timestep)
        self._validate(x, timestep, context, clip_fea_x, clip_fea_c, pose_latents, ref_x, ref_c)
        cfg = self.config
        dtype, device = x.dtype, x.device
        b, _, t, h, w = x.shape
        context, clip_fea_x, clip_fea_c, pose_latents, ref_x, ref_c = (
            v.to(device=device, dtype=dtype) for v in (context, clip_fea_x, clip_fea_c, pose_latents, ref_x, ref_c))

        # Pose branch; the alignment query is the bare noisy latent (official x_noise_clone).
        fused, aligned = self.pose_features(pose_latents, x[:, :cfg.out_dim], pose_strength_spatial,
                                            pose_strength_temporal)

        # Tokens: video (x | fused | aligned), then ref_x with an all-ones mask, then ref_c.
        video = self.patch_embedding_fuse(torch.cat([x, fused, aligned], dim=1))
        mask_ones = torch.ones_like(x[:, cfg.out_dim:cfg.in_dim - cfg.out_dim, :1])
        ref_x_tokens = self.patch_embedding(torch.cat([ref_x, mask_ones, ref_x], dim=1))
        ref_c_tokens = self.patch_embedding_ref_c(ref_c)
        tokens = torch.cat([video, ref_x_tokens, ref_c_tokens], dim=2)
        del video, ref_x_tokens, ref_c_tokens  # the concatenation holds them; do not keep two copies alive
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)

        rope_dtype = torch.promote_types(dtype, torch.float32)
        frame_positions = torch.arange(grid[0], device=device)
        rope_cos, rope_sin = rope_cos_sin(frame_positions, grid[1], grid[2], cfg.head_dim, rope_dtype)

        # Time embedding: float64 sinusoid, then the compute dtype.
        timestep = timestep.to(device).flatten().expand(b)
        e = self.time_embedding(sinusoidal_embedding(timestep, cfg.freq_dim).to(device=device, dtype=dtype))
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim))

        # Context: CLIP tokens (reference + first pose frame, summed) then text padded to text_len.
        if context.shape[1] < cfg.text_len:
            context = torch.cat([context, context.new_zeros(b, cfg.text_len - context.shape[1], cfg.text_dim)], 1)
        context = self.text_embedding(context)
        context_clip = self.img_emb(clip_fea_x) + self.img_emb(clip_fea_c)
        context = torch.cat([context_clip, context], dim=1)
        image_tokens = context_clip.shape[1]
        if self.sequence_parallel is not None:  # this rank's block of the tokens (everything above is whole)
            tokens, rope_cos, rope_sin = self.sequence_parallel.shard(tokens, rope_cos, rope_sin)

        for i, block in enumerate(self.blocks):
            replacement = block_replacements.get(i) if block_replacements else None
            if replacement is None:
                tokens = block(tokens, e0, context, image_tokens, rope_cos, rope_sin)
            else:
                args = {"img": tokens, "txt": context, "vec": e0, "pe": (rope_cos, rope_sin),
                        "context_img_len": image_tokens}
                tokens = replacement(args, {"original_block": self._block_runner(block)})["img"]

        out = self.head(tokens, e)
        if self.sequence_parallel is not None:
            out = self.sequence_parallel.gather(out)
        out = self.unpatchify(out, grid)
        return out[:, :, :t]

    @staticmethod
    def _block_runner(block: nn.Module) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """``run(args) -> {"img": block output}`` for a :data:`BlockReplacement` that calls the original block."""
        def run(args: dict[str, Any]) -> dict[str, Any]:
            rope_cos, rope_sin = args["pe"]
            return {"img": block(args["img"], args["vec"], args["txt"], args["context_img_len"], rope_cos, rope_sin)}
        return run

    def extra_repr(self) -> str:
        cfg = self.config
        return f"dim={cfg.dim}, layers={cfg.num_layers}, heads={cfg.num_heads}"

