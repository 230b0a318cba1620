"""Ulysses sequence parallelism for the SteadyDancer DiT on ``torch.distributed``.

The token sequence ``[B, L, dim]`` (video, ref_x, ref_c token frames) is zero-padded at its end to a
multiple of the group size N and split into N contiguous blocks, one per rank, together with the RoPE
tables. Everything in a block is per token except self-attention, so only self-attention communicates:
q, k and v go through one all-to-all (tokens split -> heads split), each rank attends over the WHOLE
sequence for its H/N heads, and a second all-to-all returns the output to the token split. Cross-attention
(queries = local tokens, keys = the replicated text/CLIP context), the FFN, the norms and the head stay local.
After the head, the per-token outputs (``prod(patch) * out_dim`` = 64 channels, 80x fewer bytes than the
5120-wide tokens) are all-gathered and the padding dropped.

Padding is exact: the N*ceil(L/N) - L padding tokens sit at the end of the gathered sequence, and the keys
and values are cut to the first L tokens before the attention call, so a real token's attention is
computed over exactly the real tokens (no mask, so any injected attention kernel works). Padding tokens
only ever act as queries; their outputs are dropped. Every other layer treats tokens independently.

The pose branch is NOT split: it runs whole on every rank before the token split (``SteadyDancerDiT``
computes it before the tokens exist). Its convolutions need 3x3 spatial neighbours, the DYModule a
per-frame global mean and instance norm, and the alignment unit attends over time per pixel; computing it
whole keeps all of that exact without any communication, and together with the patch embeddings it costs
6.7e-5 of a 14B step's FLOPs at 832x480x81 (388 GFLOP of 5.8 PFLOP, ``benchmarks/bench_multi_gpu_comm.py``).

The real length of the sequence whose local block has ``L_local`` tokens is kept per ``L_local`` (not "the
last forward"), so recomputing a block under gradient checkpointing after a forward with another token
count still cuts the keys right; two token counts with the same ``L_local`` raise instead of guessing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.attention import AttentionFn
from .comm import GatherTokens, HeadsToSequence, ProcessGroup, SequenceToHeads, group_rank, group_size


def check_heads_divisible(num_heads: int, ulysses: int) -> None:
    """Ulysses gives each rank ``num_heads / N`` heads: N must divide the head count."""
    if ulysses < 1 or num_heads % ulysses:
        divisors = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise ValueError(f"--ulysses {ulysses} must divide the DiT's {num_heads} attention heads "
                         f"(each rank attends over num_heads / N heads); possible values: {divisors}")


class UlyssesSharding:
    """The token split of one process group: what ``SteadyDancerDiT.sequence_parallel`` holds.

    ``shard`` runs before the transformer blocks, ``gather`` after the head.
    """

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group
        self.world = group_size(group)
        self.rank = group_rank(group)
        self._real_length: dict[int, int] = {}

    def local_length(self, length: int) -> int:
        return -(-length // self.world)

    def real_length(self, local_length: int) -> int:
        """The unpadded token count of the sequence whose blocks hold ``local_length`` tokens."""
        try:
            return self._real_length[local_length]
        except KeyError:
            raise RuntimeError(f"no sequence with {local_length} tokens per rank was split by this group") from None

    def _register(self, length: int) -> int:
        local = self.local_length(length)
        known = self._real_length.setdefault(local, length)
        if known != length:
            raise RuntimeError(
                f"sequence parallel: token counts {known} and {length} both give {local} tokens per rank on "
                f"{self.world} ranks; their padding cannot be told apart (use another frame count or size)")
        return local

    def shard(self, tokens: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``tokens [B, L, dim]`` and the RoPE tables ``[L, d/2]`` -> this rank's block of each (padded)."""
        length = tokens.shape[1]
        local = self._register(length)
        pad = local * self.world - length
        start, stop = self.rank * local, (self.rank + 1) * local
        # A copy, not a view: the whole sequence must not stay alive through the blocks.
        tokens = F.pad(tokens, (0, 0, 0, pad))[:, start:stop].clone()
        # Padding rows of the tables: the identity rotation (the values never reach a real token).
        rope_cos = F.pad(rope_cos, (0, 0, 0, pad), value=1.0)[start:stop]
        rope_sin = F.pad(rope_sin, (0, 0, 0, pad))[start:stop]
        return tokens, rope_cos, rope_sin

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """This rank's ``[B, L_local, C]`` -> the whole unpadded ``[B, L, C]`` on every rank of the group."""
        length = self.real_length(tokens.shape[1])
        return GatherTokens.apply(tokens, self.group)[:, :length]


class UlyssesAttention:
    """Self-attention over the whole sequence from token-split q/k/v, around any attention function."""

    def __init__(self, inner: AttentionFn, sharding: UlyssesSharding) -> None:
        self.inner = inner
        self.sharding = sharding

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        n = self.sharding.world
        check_heads_divisible(heads, n)
        b, local, inner_dim = q.shape
        head_dim = inner_dim // heads
        qkv = torch.stack([q, k, v]).view(3, b, local, heads, head_dim)
        qkv = SequenceToHeads.apply(qkv, self.sharding.group)  # [3, B, N*L_local, H/N, d]
        length = self.key_length(local)
        q, k, v = qkv.flatten(3).unbind(0)
        # Keys/values cut to the real tokens: exact attention for every real query (module docstring).
        out = self.inner(q, k[:, :length], v[:, :length], heads=heads // n)
        out = HeadsToSequence.apply(out.view(b, n * local, heads // n, head_dim), self.sharding.group)
        return out.reshape(b, local, inner_dim)

    def key_length(self, local_length: int) -> int:
        """How many of the gathered tokens are keys: the real ones (the padding is cut off)."""
        return self.sharding.real_length(local_length)


def enable_sequence_parallel(dit: torch.nn.Module, group: ProcessGroup) -> UlyssesSharding:
    """Split ``dit``'s tokens over ``group`` (Ulysses). Raises before any change if the heads do not divide.

    ``dit`` is a ``SteadyDancerDiT`` (possibly FSDP-sharded); only attributes change, no parameter, so
    state dicts, LoRA and FSDP are unaffected. :func:`disable_sequence_parallel` undoes it.
    """
    check_heads_divisible(dit.config.num_heads, group_size(group))
    if dit.sequence_parallel is not None:
        raise RuntimeError("sequence parallelism is already enabled on this DiT")
    sharding = UlyssesSharding(group)
    for block in dit.blocks:
        block.self_attn.attention = UlyssesAttention(block.self_attn.attention, sharding)
    dit.sequence_parallel = sharding
    return sharding


def disable_sequence_parallel(dit: torch.nn.Module) -> None:
    if dit.sequence_parallel is None:
        return
    for block in dit.blocks:
        block.self_attn.attention = block.self_attn.attention.inner
    dit.sequence_parallel = None
