"""The SteadyDancer DiT on a GPU, in one command: speed, memory, MFU, batched DC-CFG, bf16 error, fp8 and
offloading, and the official code on the same weights.

    python benchmarks/gpu_check.py --out gpu_check.json                # one H100/H200, within 8 minutes
    python benchmarks/gpu_check.py --out gpu_check.json --compile      # + the blocks under torch.compile
    OFFICIAL_SD_DIR=/path/to/SteadyDancer python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --smoke --out smoke.json            # the same code, tiny config, CPU, seconds

What it does, in this order (each row of the printed table is one measurement; the JSON holds the same rows):

1. builds the 14B-shaped DiT (``OFFICIAL_14B``) directly on the GPU in bf16 with random weights (no checkpoint);
2. one forward at 832x480x81 (35,880 tokens: 23 token frames = 21 video + ref_x + ref_c, of 30x52 patches;
   the count is checked against the tokens the first block really receives) per attention backend:
   PyTorch SDPA flash / memory-efficient / cuDNN through ``torch.nn.attention.sdpa_kernel``, and
   SageAttention when ``sageattention`` imports; then 1024x576x81 (52,992 tokens) with the fastest one if
   the time budget allows;
3. one DC-CFG step as one batched call (B=3) and as three calls; the 4-step preset (5 DiT evaluations:
   text cfg 1, the pose term inside 0.1-0.4) and the 40-step official setting (91 evaluations) estimated
   from the measured forward;
4. with ``OFFICIAL_SD_DIR``: the official ``WanModel`` (``wan/modules/model_dancer.py`` of MCG-NJU/SteadyDancer)
   sharing the very same bf16 weight tensors, on the same inputs, same dtype and the same SDPA kernel (its
   ``flash_attention`` is replaced by SDPA, as when the parity fixtures were recorded): ours/official time
   and the relative difference of the outputs;
5. with ``--compile``: the 40 blocks under ``torch.compile`` (first call = compile time, reported apart);
6. the standalone 24 GB options (``steadydancer_core.memory``): bf16 with ``--offload blocks`` (streamed from
   pinned memory), ``--dtype fp8`` resident, fp8 + offload: time, peak memory, output difference;
7. bf16 against fp32 on a mid-size config (dim 1536, 12 heads, 10 layers; 832x480x33) with the same weights.

MFU = analytic FLOPs / time / the GPU's dense bf16 peak (table below, or ``--peak-tflops``). The FLOP count
(:func:`dit_flops`) counts every matmul and convolution as 2 x multiply-accumulates and attention as
QK^T + PV (4 L_q L_k d per call), softmax, norms and element-wise work not counted; the smoke test checks it
against PyTorch's FlopCounterMode on the tiny config. Peak memory is ``torch.cuda.max_memory_allocated``
during the measured calls (weights included).

Without CUDA (and without ``--smoke``) it stops at once with a message and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steadydancer_core.atomic_output import atomic_path  # noqa: E402
from steadydancer_core.guidance import DCCFGConfig  # noqa: E402
from steadydancer_core.memory import offload_blocks  # noqa: E402
from steadydancer_core.model import OFFICIAL_14B, TINY, DiTConfig, SteadyDancerDiT  # noqa: E402
from steadydancer_core.model.attention import sdpa_attention  # noqa: E402
from steadydancer_core.model.dit import REFERENCE_FRAMES  # noqa: E402
from steadydancer_core.model.fp8_linear import store_linears_in_fp8  # noqa: E402
from steadydancer_core.model.layers import SelfAttention  # noqa: E402
from steadydancer_core.model.pose_branch import dynamic_conv_sizes  # noqa: E402

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "H100": 756.0, "A100": 312.0, "L40S": 362.1, "RTX 4090": 165.2,
                    "RTX 6000 Ada": 364.2, "A6000": 154.8, "RTX 3090": 71.0}
CLIP_TOKENS = 257
#: (width, height, frames).
MAIN_SIZE, LARGE_SIZE, MID_SIZE = (832, 480, 81), (1024, 576, 81), (832, 480, 33)
MAIN_TOKENS = 35_880  # (21 + 2) token frames x 30 x 52 patches: what the issue and the README quote
MID_CONFIG = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=10)
#: Smoke: the TINY test config at tiny sizes; with OFFICIAL_SD_DIR set, with the CLIP width the official
#: WanModel hard-codes (1280).
SMOKE_CONFIG = TINY
SMOKE_OFFICIAL_CONFIG = TINY.replace(clip_dim=1280)
SMOKE_MAIN, SMOKE_LARGE, SMOKE_MID = (96, 64, 9), (128, 64, 9), (64, 32, 5)
SMOKE_TOKENS = 120  # (3 + 2) x 4 x 6
BACKENDS_CUDA = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sage")
BACKENDS_CPU = ("sdpa-math", "sdpa-flash", "sdpa-efficient")  # efficient has no CPU kernel: its row says so


# ---- analytic FLOPs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """Latent grid of one forward: ``frames`` latent frames of ``height`` x ``width`` latent pixels."""

    frames: int
    height: int
    width: int

    @classmethod
    def of(cls, width: int, height: int, frames: int) -> "Grid":
        if width % 16 or height % 16 or (frames - 1) % 4:
            raise ValueError(f"size {width}x{height}x{frames}: width/height must be multiples of 16, frames 4n+1")
        return cls(frames=(frames - 1) // 4 + 1, height=height // 8, width=width // 8)

    def tokens(self, config: DiTConfig) -> int:
        """Transformer sequence length: video frames + the two reference frames, in patches."""
        pt, ph, pw = config.patch_size
        return (self.frames // pt + REFERENCE_FRAMES) * (self.height // ph) * (self.width // pw)


def dit_flops(config: DiTConfig, grid: Grid, batch: int = 1, text_tokens: int | None = None) -> dict[str, int]:
    """FLOPs of one DiT forward by part (2 per multiply-accumulate; attention = QK^T + PV).

    ``text_tokens``: the context length given (it is padded to ``text_len``; a longer one is used as given).
    """
    c = config
    b, t, hh, ww = batch, grid.frames, grid.height, grid.width
    p_vol = math.prod(c.patch_size)
    patches = (hh // c.patch_size[1]) * (ww // c.patch_size[2])
    video_tokens = t // c.patch_size[0] * patches
    seq = grid.tokens(config)
    text = max(text_tokens or c.text_len, c.text_len)
    d, f = c.dim, c.ffn_dim

    embeddings = 2 * b * d * p_vol * (video_tokens * c.fuse_in_dim + patches * (c.in_dim + c.in_dim_c))
    embeddings += 2 * b * text * (c.text_dim * d + d * d)                     # text_embedding
    embeddings += 2 * b * (c.freq_dim * d + d * d) + 2 * b * d * 6 * d         # time_embedding, time_projection
    embeddings += 2 * 2 * b * CLIP_TOKENS * (c.clip_dim * c.clip_dim + c.clip_dim * d)  # img_emb, two calls

    linear = 2 * b * d * d * (6 * seq + 2 * text + 2 * CLIP_TOKENS) + 2 * 2 * b * seq * d * f
    self_attention = 4 * b * seq * seq * d
    cross_attention = 4 * b * seq * (text + CLIP_TOKENS) * d

    pixels = b * t * hh * ww  # latent pixels the pose branch works on
    cp, a = c.in_dim_c, c.align_dim
    dy, squeeze = dynamic_conv_sizes(cp)
    temporal = 3 * (2 * pixels * cp * 9 + 2 * pixels * cp * cp * 3)
    spatial = 2 * pixels * (cp * cp + cp * dy + dy * dy + dy * cp)
    spatial += 2 * b * t * (cp * squeeze + squeeze * squeeze + squeeze * dy * dy + squeeze * cp)
    align = 2 * pixels * (cp * a + c.out_dim * a + 3 * a * a + a * a + 2 * a * a + a * cp) + 4 * pixels * t * a
    head = 2 * b * seq * d * p_vol * c.out_dim

    parts = {"block_linear": linear * c.num_layers, "self_attention": self_attention * c.num_layers,
             "cross_attention": cross_attention * c.num_layers, "embeddings": embeddings,
             "pose_branch": temporal + spatial + align, "head": head}
    parts["total"] = sum(parts.values())
    return parts


# ---- inputs, attention backends, timing --------------------------------------------------------------

def make_inputs(config: DiTConfig, grid: Grid, batch: int, dtype: torch.dtype, device: torch.device,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Random DiT inputs in our convention (x = noise | mask | image latent), ``text_len`` context tokens."""
    g = torch.Generator("cpu").manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    shape = (grid.frames, grid.height, grid.width)
    noise, image = randn(batch, config.out_dim, *shape), randn(batch, config.out_dim, *shape)
    mask = torch.zeros(batch, config.in_dim - 2 * config.out_dim, *shape, device=device, dtype=dtype)
    mask[:, :, 0] = 1
    pose = randn(batch, config.in_dim_c, *shape)
    return {"x": torch.cat([noise, mask, image], 1), "timestep": torch.full((batch,), 700.0, device=device),
            "context": randn(batch, config.text_len, config.text_dim),
            "clip_fea_x": randn(batch, CLIP_TOKENS, config.clip_dim),
            "clip_fea_c": randn(batch, CLIP_TOKENS, config.clip_dim),
            "pose_latents": pose, "ref_x": image[:, :, :1].clone(), "ref_c": pose[:, :, :1].clone()}


def sample(inputs: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    return {k: v[index:index + 1] for k, v in inputs.items()}


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The DiT's attention through SageAttention (``sageattn``, NHD layout)."""
    from sageattention import sageattn

    batch, length, inner = q.shape
    d = inner // heads
    out = sageattn(q.view(batch, -1, heads, d), k.view(batch, -1, heads, d), v.view(batch, -1, heads, d),
                   tensor_layout="NHD", is_causal=False)
    return out.reshape(batch, length, inner)


def set_attention(model: nn.Module, attention: Callable) -> None:
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.attention = attention


@contextlib.contextmanager
def backend(name: str, model: nn.Module) -> Iterator[None]:
    """Run ``model`` with attention backend ``name`` (``sdpa-*`` restricts SDPA to one kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "sage":
        importlib.import_module("sageattention")
        set_attention(model, sage_attention)
        try:
            yield
        finally:
            set_attention(model, sdpa_attention)
        return
    kernels = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
               "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}
    with sdpa_kernel([kernels[name]]):
        yield


class Clock:
    """Wall time of calls on ``device`` (synchronised) and the peak memory they allocate."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 1024**3 if self.device.type == "cuda" else None

    def time(self, call: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        start = time.perf_counter()
        result = call()
        self.sync()
        return time.perf_counter() - start, result

    def median(self, call: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float], Any]:
        """(median seconds, every timed run, the last result) after ``warmup`` untimed calls."""
        result = None
        for _ in range(warmup):
            result = call()
        times = []
        for _ in range(repeats):
            seconds, result = self.time(call)
            times.append(seconds)
        return statistics.median(times), times, result


# ---- rows and the table ------------------------------------------------------------------------------

@dataclass
class Row:
    section: str
    variant: str
    size: str = ""
    batch: int | None = None
    tokens: int | None = None
    median_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    peak_gib: float | None = None
    tflops: float | None = None  # achieved
    mfu: float | None = None
    note: str = ""


class Report:
    def __init__(self, device: torch.device, peak_tflops: float | None, budget_s: float) -> None:
        self.rows: list[Row] = []
        self.device = device
        self.peak_tflops = peak_tflops
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.facts: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def over_budget(self, section: str, variant: str, estimate_s: float = 0.0) -> bool:
        """True (and a row saying so) when this measurement would end past the time budget."""
        if self.elapsed() + estimate_s <= self.budget_s:
            return False
        self.add(Row(section, variant, note=f"skipped: {self.elapsed():.0f} s elapsed + ~{estimate_s:.0f} s "
                                            f"> budget {self.budget_s:.0f} s (--budget-s)"))
        return True

    def add(self, row: Row, flops: int | None = None) -> Row:
        if flops is not None and row.median_s:
            row.tflops = flops / row.median_s / 1e12
            row.mfu = row.tflops / self.peak_tflops if self.peak_tflops else None
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def failed(self, section: str, variant: str, error: BaseException, **fields: Any) -> None:
        first = (str(error).strip().splitlines() or [""])[0][:160]
        self.add(Row(section, variant, note=f"failed: {type(error).__name__}: {first}", **fields))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


HEADER = f"{'section':<14} {'variant':<26} {'size':<12} {'B':>2} {'tokens':>7} {'median s':>9} {'peak GiB':>8} " \
         f"{'TFLOP/s':>8} {'MFU':>6}  note"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_row(row: Row) -> str:
    mfu = "-" if row.mfu is None else f"{100 * row.mfu:.1f}%"
    return (f"{row.section:<14} {row.variant:<26} {row.size:<12} {_fmt(row.batch, 'd'):>2} {_fmt(row.tokens, ',d'):>7} "
            f"{_fmt(row.median_s, '.3f'):>9} {_fmt(row.peak_gib, '.2f'):>8} {_fmt(row.tflops, '.1f'):>8} {mfu:>6}  "
            f"{row.note}")


# ---- measurements ------------------------------------------------------------------------------------

def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def count_block_tokens(model: SteadyDancerDiT, inputs: dict[str, torch.Tensor]) -> int:
    """The sequence length the first transformer block really receives."""
    seen: list[int] = []
    handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen[0]


def size_name(size: tuple[int, int, int]) -> str:
    return "x".join(map(str, size))


class Check:
    """All measurements of one run (``smoke``: tiny config on the CPU)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device, self.smoke = args, device, args.smoke
        self.clock = Clock(device)
        self.repeats = args.repeats
        smoke_config = SMOKE_OFFICIAL_CONFIG if os.environ.get("OFFICIAL_SD_DIR") else SMOKE_CONFIG
        self.config = smoke_config if self.smoke else OFFICIAL_14B
        self.main_size = SMOKE_MAIN if self.smoke else MAIN_SIZE
        self.large_size = SMOKE_LARGE if self.smoke else LARGE_SIZE
        self.mid_size = SMOKE_MID if self.smoke else MID_SIZE
        self.mid_config = SMOKE_CONFIG if self.smoke else MID_CONFIG
        self.expected_tokens = SMOKE_TOKENS if self.smoke else MAIN_TOKENS
        peak = args.peak_tflops
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        if peak is None and device.type == "cuda":
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        self.report = Report(device, peak, args.budget_s)
        self.report.facts.update(device=name, torch=torch.__version__, peak_bf16_tflops=peak, smoke=self.smoke,
                                 config=asdict(self.config))
        self.model: SteadyDancerDiT | None = None
        self.best_backend = "sdpa-math" if self.smoke else "sdpa-flash"
        self.reference: torch.Tensor | None = None  # bf16 output at the main size, B=1, best backend

    # -- helpers --------------------------------------------------------------------------------------

    def forward(self, inputs: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        with torch.no_grad():
            return (model or self.model)(**inputs)

    def measure(self, section: str, variant: str, size: tuple[int, int, int], batch: int, call: Callable[[], Any],
                config: DiTConfig | None = None, repeats: int | None = None, note: str = "") -> tuple[Row, Any]:
        config = config or self.config
        grid = Grid.of(*size)
        self.clock.reset_peak()
        median, times, result = self.clock.median(call, repeats or self.repeats)
        row = Row(section, variant, size_name(size), batch, grid.tokens(config), median, times,
                  self.clock.peak_gib(), note=note)
        return self.report.add(row, dit_flops(config, grid, batch)["total"]), result

    # -- 1. build --------------------------------------------------------------------------------------

    def build(self) -> None:
        torch.manual_seed(0)
        seconds, model = self.clock.time(
            lambda: SteadyDancerDiT(self.config, dtype=torch.bfloat16, device=self.device).eval())
        self.model = model
        params = sum(p.numel() for p in model.parameters())
        weights = torch.cuda.memory_allocated(self.device) / 1024**3 if self.device.type == "cuda" else None
        self.report.facts.update(parameters=params, build_s=seconds)
        self.report.add(Row("build", "bf16 random weights", median_s=seconds, peak_gib=weights,
                            note=f"{params:,} parameters built on {self.device.type} (peak GiB = weights allocated)"))
        inputs = make_inputs(self.config, Grid.of(*self.main_size), 1, torch.bfloat16, self.device)
        tokens = count_block_tokens(model, inputs)
        analytic = Grid.of(*self.main_size).tokens(self.config)
        self.report.facts["main_tokens"] = tokens
        if not tokens == analytic == self.expected_tokens:
            raise RuntimeError(f"token count at {size_name(self.main_size)}: the first block received {tokens}, "
                               f"the formula gives {analytic}, expected {self.expected_tokens}")

    # -- 2. forward per backend ------------------------------------------------------------------------

    def backends(self) -> None:
        inputs = make_inputs(self.config, Grid.of(*self.main_size), 1, torch.bfloat16, self.device)
        best = None
        for name in (BACKENDS_CPU if self.device.type == "cpu" else BACKENDS_CUDA):
            if name == "sage" and importlib.util.find_spec("sageattention") is None:
                self.report.add(Row("forward", name, size_name(self.main_size), 1,
                                    note="not measured: sageattention is not installed"))
                continue
            try:
                with backend(name, self.model):
                    row, out = self.measure("forward", name, self.main_size, 1, lambda: self.forward(inputs))
            except Exception as error:  # an unsupported kernel is a result, shown in its row
                self.report.failed("forward", name, error, size=size_name(self.main_size), batch=1)
                continue
            if name == self.best_backend:
                self.reference = out
            elif self.reference is not None:
                row.note = f"output vs {self.best_backend}: rel. diff {relative_difference(out, self.reference):.2e}"
            if best is None or row.median_s < best.median_s:
                best = row
        if best is None:
            raise RuntimeError("no attention backend ran the DiT forward")
        self.report.facts["fastest_backend"] = best.variant
        if self.reference is None:  # the default backend failed: later sections compare against the fastest
            self.best_backend = best.variant
            with backend(best.variant, self.model):
                self.reference = self.forward(inputs)

    def large(self) -> None:
        if self.report.over_budget("forward", f"{self.best_backend} (large)", 60):
            return
        inputs = make_inputs(self.config, Grid.of(*self.large_size), 1, torch.bfloat16, self.device)
        try:
            with backend(self.best_backend, self.model):
                self.measure("forward", self.best_backend, self.large_size, 1, lambda: self.forward(inputs),
                             repeats=max(1, self.repeats - 1))
        except Exception as error:
            self.report.failed("forward", self.best_backend, error, size=size_name(self.large_size), batch=1)

    # -- 3. DC-CFG ------------------------------------------------------------------------------------

    def dc_cfg(self) -> None:
        batched = make_inputs(self.config, Grid.of(*self.main_size), 3, torch.bfloat16, self.device, seed=1)
        singles = [sample(batched, i) for i in range(3)]
        with backend(self.best_backend, self.model):
            try:
                one, out_batched = self.measure("dc-cfg step", "one call, B=3", self.main_size, 3,
                                                lambda: self.forward(batched), repeats=max(1, self.repeats - 1))
            except Exception as error:
                self.report.failed("dc-cfg step", "one call, B=3", error, size=size_name(self.main_size), batch=3)
                one, out_batched = None, None
            three, outs = self.measure("dc-cfg step", "three calls, B=1", self.main_size, 3,
                                       lambda: [self.forward(s) for s in singles], repeats=max(1, self.repeats - 1))
        if one is not None:
            diff = max(relative_difference(out_batched[i:i + 1], outs[i]) for i in range(3))
            one.note = f"{three.median_s / one.median_s:.2f}x faster than three calls; per-sample rel. diff {diff:.1e}"
        forward_rows = [r for r in self.report.rows
                        if r.section == "forward" and r.variant == self.best_backend and r.median_s
                        and r.size == size_name(self.main_size)]
        per_eval = forward_rows[0].median_s
        for label, steps, w_text in (("4-step preset", 4, 1.0), ("40-step official", 40, 5.0)):
            guidance = DCCFGConfig(w_text=w_text, w_pose=1.0, start=0.1, end=0.4)
            evaluations = sum(guidance.evaluations(i, steps) for i in range(steps))
            self.report.add(Row("estimate", label, size_name(self.main_size), 1, median_s=per_eval * evaluations,
                                note=f"{evaluations} DiT evaluations x {per_eval:.3f} s (B=1 forward, "
                                     f"{self.best_backend}); DiT only, no VAE/encoders"))
            self.report.facts[f"{label} evaluations"] = evaluations

    # -- 4. the official code ---------------------------------------------------------------------------

    def official(self) -> None:
        root = os.environ.get("OFFICIAL_SD_DIR")
        if not root:
            self.report.add(Row("official", "WanModel (model_dancer)", note="not measured: OFFICIAL_SD_DIR not set"))
            return
        try:
            dancer = load_official_module(Path(root))
            official = build_official(dancer, self.model)
        except Exception as error:
            self.report.failed("official", "WanModel (model_dancer)", error)
            return
        shared = {n: p.data_ptr() for n, p in self.model.named_parameters()}
        if any(shared[n] != p.data_ptr() for n, p in official.named_parameters()):
            raise RuntimeError("the official WanModel does not hold our weight tensors")
        if self.device.type != "cuda":
            self.report.add(Row("official", "WanModel (model_dancer)",
                                note=f"built, holds our {len(shared)} weight tensors; forward not run: the official "
                                     "code hard-codes CUDA autocast (bf16) and bf16 casts"))
            return
        inputs = make_inputs(self.config, Grid.of(*self.main_size), 1, torch.bfloat16, self.device)
        official_inputs = to_official_inputs(inputs)
        autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        try:
            with backend(self.best_backend, self.model):
                ours, ours_out = self.measure("official", f"ours ({self.best_backend})", self.main_size, 1,
                                              lambda: self.forward(inputs))
                with autocast:
                    theirs, theirs_out = self.measure(
                        "official", f"official ({self.best_backend})", self.main_size, 1,
                        lambda: self.forward(official_inputs, official))
        except Exception as error:
            self.report.failed("official", "WanModel (model_dancer)", error)
            return
        difference = relative_difference(ours_out[0], theirs_out[0])
        ours.note = f"ours/official time {ours.median_s / theirs.median_s:.3f}; output rel. diff {difference:.2e}"
        self.report.facts["ours_over_official_time"] = ours.median_s / theirs.median_s

    # -- 5. torch.compile ------------------------------------------------------------------------------

    def compiled(self) -> None:
        if not self.args.compile:
            self.report.add(Row("compile", "blocks", note="not measured: pass --compile"))
            return
        if self.report.over_budget("compile", "blocks", 120):
            return
        inputs = make_inputs(self.config, Grid.of(*self.main_size), 1, torch.bfloat16, self.device)
        try:
            with backend(self.best_backend, self.model):
                for block in self.model.blocks:
                    block.compile()
                first, out = self.clock.time(lambda: self.forward(inputs))
                row, out = self.measure("compile", f"blocks ({self.best_backend})", self.main_size, 1,
                                        lambda: self.forward(inputs))
            row.note = (f"first call (compiles) {first:.1f} s; output vs eager rel. diff "
                        f"{relative_difference(out, self.reference):.2e}")
            self.report.facts["compile_first_call_s"] = first
        except Exception as error:
            self.report.failed("compile", "blocks", error, size=size_name(self.main_size), batch=1)
        finally:
            for block in self.model.blocks:  # back to eager for what follows
                block._compiled_call_impl = None
            torch._dynamo.reset()

    # -- 6. offload and fp8 -----------------------------------------------------------------------------

    def memory_options(self) -> None:
        """bf16 + offload, fp8 resident, fp8 + offload, each against the bf16 output. Ends with the DiT gone."""
        if self.device.type != "cuda":
            self.report.add(Row("24 GB", "offload / fp8", note="CUDA only (block streaming needs CUDA streams; "
                                                                 "the CPU tests check the same code exactly)"))
            return
        inputs = make_inputs(self.config, Grid.of(*self.main_size), 1, torch.bfloat16, self.device)
        model = self.model
        # One model throughout: moved to CPU memory and streamed, then back, quantised, and streamed again.
        steps: list[tuple[str, Callable[[], object]]] = [
            ("bf16, --offload blocks", lambda: (model.to("cpu"), offload_blocks(model, self.device))),
            ("fp8 resident", lambda: (remove_offloading(model), model.to(self.device),
                                      store_linears_in_fp8(model.blocks))),
            ("fp8, --offload blocks", lambda: (model.to("cpu"), offload_blocks(model, self.device))),
        ]
        fp8_out = None
        for variant, prepare in steps:
            if self.report.over_budget("24 GB", variant, 60):
                return
            try:
                seconds, _ = self.clock.time(prepare)
                with backend(self.best_backend, model):
                    self.forward(inputs)  # the first call sets the prefetch order up (blocking transfers)
                    row, out = self.measure("24 GB", variant, self.main_size, 1, lambda: self.forward(inputs))
            except Exception as error:
                self.report.failed("24 GB", variant, error, size=size_name(self.main_size), batch=1)
                return
            versus = ("bf16 resident", self.reference) if variant.startswith("bf16") or fp8_out is None \
                else ("fp8 resident", fp8_out)
            row.note = (f"set-up {seconds:.1f} s; output vs {versus[0]}: rel. diff "
                        f"{relative_difference(out, versus[1]):.2e}")
            if variant == "fp8 resident":
                fp8_out = out

    def release(self) -> None:
        self.model = None
        self.reference = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- 7. bf16 vs fp32 ------------------------------------------------------------------------------

    def precision(self) -> None:
        if self.device.type == "cuda":  # a true fp32 reference: no TF32 in matmuls or convolutions
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        torch.manual_seed(1)
        fp32 = SteadyDancerDiT(self.mid_config, dtype=torch.float32, device=self.device).eval()
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)  # the same weights, rounded once
        inputs = make_inputs(self.mid_config, Grid.of(*self.mid_size), 1, torch.float32, self.device, seed=2)
        inputs_bf16 = {k: v.to(torch.bfloat16) if k != "timestep" else v for k, v in inputs.items()}
        seconds, reference = self.clock.time(lambda: self.forward(inputs, fp32))
        out = self.forward(inputs_bf16, bf16)
        difference = relative_difference(out, reference)
        peak_error = float((out.double() - reference.double()).abs().max() / reference.double().abs().max())
        self.report.add(Row("bf16 vs fp32", "bf16 against fp32", size_name(self.mid_size), 1,
                            Grid.of(*self.mid_size).tokens(self.mid_config),
                            note=f"rel. L2 error {difference:.2e}; max abs error / max |fp32| {peak_error:.2e}; "
                                 f"dim {self.mid_config.dim}, {self.mid_config.num_layers} layers, same weights; "
                                 f"fp32 forward (no TF32) {seconds:.2f} s"))
        self.report.facts.update(bf16_relative_l2_error=difference, bf16_max_error_over_max=peak_error)


def remove_offloading(model: nn.Module) -> None:
    """Take diffusers' group-offloading hooks off ``model`` (its weights stay where the hooks left them)."""
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(model)
    for name in ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading"):
        registry.remove_hook(name, recurse=True)


# ---- the official WanModel ---------------------------------------------------------------------------

def load_official_module(root: Path) -> types.ModuleType:
    """``wan/modules/model_dancer.py`` of an MCG-NJU/SteadyDancer checkout, imported as a package of its own.

    Only ``wan/modules`` is imported (model_dancer and its relative imports: attention, small_archs,
    mobilenetv2_dcd), not ``wan/__init__.py``, which would pull in the whole official pipeline (T5, VAE,
    xfuser). Needs the official requirements diffusers and einops.
    """
    folder = root / "wan" / "modules"
    if not (folder / "model_dancer.py").is_file():
        raise FileNotFoundError(f"OFFICIAL_SD_DIR={root}: no wan/modules/model_dancer.py there (expected a "
                                "checkout of github.com/MCG-NJU/SteadyDancer)")
    package = types.ModuleType("official_steadydancer_modules")
    package.__path__ = [str(folder)]
    sys.modules[package.__name__] = package
    return importlib.import_module(f"{package.__name__}.model_dancer")


def sdpa_in_official_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_lens=None, k_lens=None,
                            dropout_p: float = 0.0, softmax_scale=None, q_scale=None, causal: bool = False,
                            window_size=(-1, -1), deterministic: bool = False, dtype=torch.bfloat16, version=None):
    """The official ``flash_attention(q, k, v, ...)`` ([B, L, N, D]) on PyTorch SDPA, with its dtype handling:
    q/k/v cast to ``dtype`` unless half already, the result returned in q's dtype. Batch 1, no padding."""
    if k_lens is not None and bool((k_lens < k.shape[1]).any()) or causal or tuple(window_size) != (-1, -1):
        raise NotImplementedError("padded keys, causal or windowed attention are not used by the DiT")
    out_dtype = q.dtype
    half = [t if t.dtype in (torch.float16, torch.bfloat16) else t.to(dtype) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in half), scale=softmax_scale)
    return out.transpose(1, 2).to(out_dtype)


def build_official(dancer: types.ModuleType, ours: SteadyDancerDiT) -> nn.Module:
    """The official WanModel of ``ours.config`` holding ``ours``' weight tensors themselves (no copy)."""
    c = ours.config
    dancer.flash_attention = sdpa_in_official_layout  # model_dancer calls the name it imported
    with torch.device("meta"):
        official = dancer.WanModel(model_type="i2v", patch_size=c.patch_size, text_len=c.text_len, in_dim=c.in_dim,
                                   in_dim_c=c.in_dim_c, dim=c.dim, ffn_dim=c.ffn_dim, freq_dim=c.freq_dim,
                                   text_dim=c.text_dim, out_dim=c.out_dim, num_heads=c.num_heads,
                                   num_layers=c.num_layers, eps=c.eps)
    official.load_state_dict(ours.state_dict(), strict=True, assign=True)
    # Its RoPE table is a plain attribute made in __init__ (on meta above): rebuilt with its own function.
    d = c.dim // c.num_heads
    official.freqs = torch.cat([dancer.rope_params(1024, d - 4 * (d // 6)), dancer.rope_params(1024, 2 * (d // 6)),
                                dancer.rope_params(1024, 2 * (d // 6))], dim=1)
    return official.eval()


def to_official_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Our batch-1 inputs in the official calling convention (model_spec §2)."""
    x, pose = inputs["x"][0], inputs["pose_latents"][0]
    ones, zeros = torch.ones_like(x[16:20, :1]), torch.zeros_like(x[16:20, :1])
    ref_x, ref_c = inputs["ref_x"][0], inputs["ref_c"][0]
    return {"x": [x[:16]], "y": [x[16:]], "t": inputs["timestep"], "context": [inputs["context"][0]],
            "seq_len": None, "condition": pose, "ref_x": torch.cat([ref_x, ones, ref_x]),
            "ref_c": torch.cat([ref_c, zeros, ref_c]), "clip_fea_x": inputs["clip_fea_x"],
            "clip_fea_c": inputs["clip_fea_c"]}


# ---- main --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the table (written when the run is complete)")
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU: the same code, in seconds")
    parser.add_argument("--compile", action="store_true", help="also time the blocks under torch.compile")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median; default 3)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak of the GPU for MFU (default: from the device name, when known)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="optional rows (1024x576, compile, offload) are skipped once this is exceeded")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA GPU: torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). "
              "Run it on a GPU machine, or pass --smoke for the CPU self-test.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the measurements
    if out.is_dir():
        print(f"--out {out} is a folder; expected a .json file path", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    check = Check(args, device)
    print(f"device: {check.report.facts['device']}, torch {torch.__version__}, peak bf16 "
          f"{check.report.facts['peak_bf16_tflops'] or 'unknown (MFU not computed; pass --peak-tflops)'} TFLOP/s")
    print(HEADER)
    check.build()
    check.backends()
    check.large()
    check.dc_cfg()
    check.official()
    check.compiled()
    check.memory_options()
    check.release()
    check.precision()
    facts = check.report.facts
    facts["elapsed_s"] = check.report.elapsed()
    facts["flops_main_forward"] = dit_flops(check.config, Grid.of(*check.main_size), 1)
    print(f"total {facts['elapsed_s']:.0f} s")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"facts": facts, "rows": [asdict(r) for r in check.report.rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
