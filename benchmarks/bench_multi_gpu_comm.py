"""Multi-GPU inference on paper: bytes each rank moves per sampling step against the compute of the step, and
the speed-up that bounds, for the 14B DiT at 832x480x81 and 1280x720x81; then a measured gloo run of a tiny
DiT whose counted collective bytes must equal the same formulas.

    python benchmarks/bench_multi_gpu_comm.py

Model of a step: the 3 DC-CFG passes of a pose-window step as one batched call (rows = 3; 2 outside the
window), bf16. Per transformer block, Ulysses passes one all-to-all of q|k|v (3 x rows x L/N x dim) and one of
the attention output (rows x L/N x dim); after the head one all-gather of the 64-channel output. CFG
parallelism all-gathers the predictions (rows/K x 16 x T x H x W). FSDP2 all-gathers every weight once per
forward. "Passed" = the input tensors handed to the collectives (what the gloo run counts); "sent" = bytes
leaving the rank: (N-1)/N of an all-to-all, N-1 times the input of a ring all-gather.

Compute per step = 2 x multiply-adds of every layer (linear layers, both attentions, per row). The time bound
assumes the communication is not overlapped with compute (Ulysses' exchanges sit on the critical path) and a
sustained 400 TFLOP/s bf16 per GPU (an assumption, about 40 % of an H100/H200's dense peak): speed-up(N) =
t_1 / (t_1 / N + sent / bandwidth), with the link bandwidth as stated (NVLink 900 GB/s, PCIe 64 GB/s).
"""
from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from steadydancer_core.model import OFFICIAL_14B, DiTConfig  # noqa: E402
from steadydancer_core.parallel.memory import parameter_counts, token_count  # noqa: E402

SUSTAINED_FLOPS = 400e12
LINKS = {"NVLink 900 GB/s": 900e9, "PCIe 64 GB/s": 64e9}
CONTEXT_TOKENS = (512, 257)  # text (padded to text_len), CLIP
SIZES = {"832x480x81": (21, 60, 104), "1280x720x81": (21, 90, 160)}


@dataclass(frozen=True)
class StepBytes:
    passed: dict[str, int]
    sent: int


def step_bytes(config: DiTConfig, tokens: int, latent: tuple[int, int, int], ulysses: int, cfg: int, fsdp: bool,
               rows: int = 3, element: int = 2) -> StepBytes:
    """Bytes one rank passes to each collective per step, and the bytes it sends to other ranks."""
    local_rows = -(-rows // cfg)
    local = -(-tokens // ulysses)
    passed: dict[str, int] = {}
    sent = 0.0
    if ulysses > 1:
        a2a = config.num_layers * 4 * local_rows * local * config.dim * element
        head = local_rows * local * math.prod(config.patch_size) * config.out_dim * element
        passed["all_to_all_single"] = a2a
        passed["all_gather_single"] = head
        sent += a2a * (ulysses - 1) / ulysses + head * (ulysses - 1)
    if cfg > 1:
        t, h, w = latent
        predictions = local_rows * config.out_dim * t * h * w * element
        passed["all_gather_single"] = passed.get("all_gather_single", 0) + predictions
        sent += predictions * (cfg - 1)
    if fsdp:
        world = ulysses * cfg
        total, _ = parameter_counts(config)
        shard = total / world * element
        passed["fsdp_all_gather"] = int(shard)
        sent += shard * (world - 1)
    return StepBytes(passed, int(sent))


def step_flops(config: DiTConfig, tokens: int, latent: tuple[int, int, int], rows: int = 3) -> tuple[float, float]:
    """(DiT FLOPs, pose-branch + patch-embedding FLOPs) of one step with ``rows`` batched passes."""
    d, f, length = config.dim, config.ffn_dim, tokens
    text, clip = CONTEXT_TOKENS
    per_block = (length * (6 * d * d + 2 * d * f)  # q k v o, cross q o, FFN
                 + 2 * (text + clip) * d * d  # cross-attention k v (text) and k_img v_img (CLIP)
                 + 2 * length * length * d  # self-attention QK^T and AV
                 + 2 * length * (text + clip) * d)  # cross-attention
    dit = 2 * rows * config.num_layers * per_block
    t, h, w = latent
    pixels = t * h * w
    c, a = config.in_dim_c, config.align_dim
    pose = pixels * (3 * (9 * c + 3 * c * c)  # temporal module: 3 x (depthwise 3x3 + temporal 3x1x1)
                     + 2 * c * a + 6 * a * a + a * c  # alignment unit: projections, q k v o, FFN, back
                     + 2 * t * a)  # its attention over T frames per pixel
    embed = length * config.fuse_in_dim * math.prod(config.patch_size) * d
    return dit, 2 * rows * (pose + embed)


def paper_table() -> None:
    config = OFFICIAL_14B
    print(f"14B DiT ({config.num_layers} blocks, dim {config.dim}, {config.num_heads} heads), bf16, a pose-window step "
          f"= 3 batched passes; compute at {SUSTAINED_FLOPS / 1e12:.0f} TFLOP/s sustained (assumed)")
    for name, latent in SIZES.items():
        tokens = token_count(config, *latent)
        dit, pose = step_flops(config, tokens, latent)
        t_one = dit / SUSTAINED_FLOPS
        print(f"\n{name}: {tokens} tokens; step compute {dit / 1e15:.2f} PFLOP = {t_one:.2f} s on one GPU; pose branch + "
              f"patch embedding {pose / 1e9:.1f} GFLOP ({pose / dit:.1e} of it, run whole on every rank)")
        header = f"  {'layout':<26}{'passed/rank':>14}{'sent/rank':>12}{'compute/rank':>14}"
        print(header + "".join(f"{'speed-up ' + link.split()[0]:>18}" for link in LINKS))
        for n in (2, 4, 8):
            layouts = [(f"ulysses {n}", n, 1, False), (f"ulysses {n} + FSDP", n, 1, True)]
            if n >= 4:
                layouts.append((f"ulysses {n // 2} x cfg 2", n // 2, 2, False))
            if n == 2:
                layouts.append(("cfg 2", 1, 2, False))
            for label, u, k, fsdp in layouts:
                moved = step_bytes(config, tokens, latent, u, k, fsdp)
                compute = t_one / n
                cells = []
                for bandwidth in LINKS.values():
                    cells.append(f"{t_one / (compute + moved.sent / bandwidth):>17.2f}x")
                print(f"  {label:<26}{sum(moved.passed.values()) / 1e9:>11.2f} GB{moved.sent / 1e9:>9.2f} GB"
                      f"{compute:>12.2f} s" + " ".join(cells))


def memory_table() -> None:
    """Weights + activations per GPU of each layout (``steadydancer_core.parallel.memory``, also --dry-run)."""
    from steadydancer_core.parallel.memory import memory_per_gpu
    from steadydancer_core.parallel.session import ParallelLayout

    config = OFFICIAL_14B
    layouts = [("1 GPU", ParallelLayout()), ("ulysses 2", ParallelLayout(ulysses=2)),
               ("cfg 2", ParallelLayout(cfg=2)), ("ulysses 2 + FSDP", ParallelLayout(ulysses=2, fsdp=True)),
               ("ulysses 4", ParallelLayout(ulysses=4)), ("ulysses 4 + FSDP", ParallelLayout(ulysses=4, fsdp=True)),
               ("ulysses 2 x cfg 2 + FSDP", ParallelLayout(ulysses=2, cfg=2, fsdp=True)),
               ("ulysses 8", ParallelLayout(ulysses=8)), ("ulysses 8 + FSDP", ParallelLayout(ulysses=8, fsdp=True)),
               ("ulysses 4 x cfg 2 + FSDP", ParallelLayout(ulysses=4, cfg=2, fsdp=True))]
    print("\nmemory per GPU (computed; DiT weights + peak activations, GiB, bf16; rank 0 adds the VAE, 0.47 GiB, "
          "and loads umT5 10.6 GiB / CLIP 1.2 GiB before the DiT)")
    print(f"  {'layout':<28}" + "".join(f"{name:>26}" for name in SIZES))
    for label, layout in layouts:
        cells = []
        for latent in SIZES.values():
            m = memory_per_gpu(config, layout, token_count(config, *latent))
            cells.append(f"{m.weights:.1f} + {m.activations:.1f} = {m.total:.1f}")
        print(f"  {label:<28}" + "".join(f"{cell:>26}" for cell in cells))


# ---- measured: a tiny DiT on gloo ------------------------------------------------------------------------

TINY_SP = OFFICIAL_14B.replace(dim=192, ffn_dim=384, num_heads=12, num_layers=2, freq_dim=32, text_dim=32,
                               text_len=16, clip_dim=48)
TINY_LATENT = (3, 10, 10)  # 9 frames at 80x80: 125 tokens, divisible by neither 2 nor 4


def _measure(rank: int, world: int, port: int, ulysses: int, cfg: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from steadydancer_core.model import SteadyDancerDiT
    from steadydancer_core.parallel.comm import count_collectives
    from steadydancer_core.parallel.session import LaunchEnv, ParallelLayout, ParallelSession

    session = ParallelSession(ParallelLayout(ulysses=ulysses, cfg=cfg, backend="gloo"), LaunchEnv.from_environ(),
                              torch.device("cpu"))
    torch.manual_seed(0)
    dit = session.build_dit_module(SteadyDancerDiT(TINY_SP).to(torch.bfloat16).eval())
    t, h, w = TINY_LATENT
    rows = 3
    g = torch.Generator().manual_seed(1)
    pose = torch.randn(rows, 16, t, h, w, generator=g)
    inputs = [torch.randn(rows, 36, t, h, w, generator=g), torch.full((rows,), 500.0),
              torch.randn(rows, 5, TINY_SP.text_dim, generator=g), torch.randn(rows, 257, TINY_SP.clip_dim, generator=g),
              torch.randn(rows, 257, TINY_SP.clip_dim, generator=g), pose, torch.randn(rows, 16, 1, h, w, generator=g),
              pose[:, :, :1]]
    with torch.no_grad(), count_collectives() as counter:
        dit(inputs[0].bfloat16(), *inputs[1:])
    if rank == 0:
        queue.put(dict(counter.bytes))
    session.close()


def measured_check() -> bool:
    import torch.multiprocessing as mp

    print(f"\nmeasured (gloo, CPU): tiny DiT dim {TINY_SP.dim}, {TINY_SP.num_heads} heads, {TINY_SP.num_layers} blocks, "
          f"bf16, 3 rows, latent {TINY_LATENT}; bytes passed to the collectives by rank 0 in one step")
    tokens = token_count(TINY_SP, *TINY_LATENT)
    context = mp.get_context("fork")
    ok = True
    for ulysses, cfg in ((2, 1), (4, 1), (1, 2), (2, 2)):
        world = ulysses * cfg
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        queue = context.SimpleQueue()
        mp.start_processes(_measure, args=(world, port, ulysses, cfg, queue), nprocs=world, start_method="fork")
        counted = queue.get()
        formula = step_bytes(TINY_SP, tokens, TINY_LATENT, ulysses, cfg, fsdp=False).passed
        match = counted == formula
        ok &= match
        print(f"  ulysses {ulysses} x cfg {cfg}: counted {counted}  formula {formula}  "
              f"{'equal' if match else 'DIFFERENT'}")
    return ok


if __name__ == "__main__":
    paper_table()
    memory_table()
    sys.exit(0 if measured_check() else 1)
