"""``benchmarks/gpu_check.py``: its ``--smoke`` run on the CPU (the same code as on a GPU, tiny config), its refusal
without CUDA, and its analytic FLOP count against a hand computation and against PyTorch's FlopCounterMode."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from dit_support import make_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

from steadydancer_core.model import OFFICIAL_14B, TINY  # noqa: E402


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OFFICIAL_SD_DIR"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is a CPU run even where a GPU exists
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "smoke.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--repeats", "1", "--out", str(out)],
                            capture_output=True, text=True, env=_env(), cwd=REPO_ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    report["stdout"] = result.stdout
    return report


def _rows(report: dict, section: str) -> list[dict]:
    return [row for row in report["rows"] if row["section"] == section]


# ---- the smoke run -------------------------------------------------------------------------------

def test_smoke_run_measures_every_section(smoke):
    facts = smoke["facts"]
    assert facts["smoke"] and facts["main_tokens"] == 120  # (3 + 2) token frames x 4 x 6 patches
    forward = {row["variant"]: row for row in _rows(smoke, "forward") if row["size"] == "96x64x9"}
    assert forward["sdpa-math"]["median_s"] > 0 and forward["sdpa-math"]["tokens"] == 120
    assert forward["sdpa-efficient"]["note"].startswith("failed:")  # no CPU kernel: said, not hidden
    assert "rel. diff" in forward["sdpa-flash"]["note"]
    large = [row for row in _rows(smoke, "forward") if row["size"] == "128x64x9"]
    assert large and large[0]["tokens"] == 160 and large[0]["median_s"] > 0
    batched, three = _rows(smoke, "dc-cfg step")
    assert batched["batch"] == three["batch"] == 3 and batched["median_s"] > 0 and three["median_s"] > 0
    assert "per-sample rel. diff" in batched["note"]
    estimates = {row["variant"]: row for row in _rows(smoke, "estimate")}
    per_eval = forward["sdpa-math"]["median_s"]
    assert estimates["4-step preset"]["median_s"] == pytest.approx(5 * per_eval)
    assert estimates["40-step official"]["median_s"] == pytest.approx(91 * per_eval)
    (precision,) = _rows(smoke, "bf16 vs fp32")
    error = float(precision["note"].split("rel. L2 error ")[1].split(";")[0])
    assert 0 < error < 0.05 and facts["bf16_relative_l2_error"] == pytest.approx(error, rel=1e-2)
    assert _rows(smoke, "official")[0]["note"] == "not measured: OFFICIAL_SD_DIR not set"
    assert _rows(smoke, "compile")[0]["note"] == "not measured: pass --compile"
    assert "CUDA only" in _rows(smoke, "24 GB")[0]["note"]
    assert gpu_check.HEADER in smoke["stdout"]  # the printed table


def test_smoke_flop_count_is_the_hand_computation(smoke):
    assert smoke["facts"]["flops_main_forward"]["total"] == _hand_flops_tiny_96x64x9()


# ---- without CUDA ----------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_with_a_message(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                            env=_env(), cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "--smoke" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


# ---- the FLOP count ---------------------------------------------------------------------------------

def _hand_flops_tiny_96x64x9() -> int:
    """TINY (dim 256, ffn 512, 2 layers, text_len 16, text_dim 32, clip 48, freq 32) at 96x64x9, batch 1, written
    out: latent 3 x 8 x 12, patches 4 x 6 = 24 per frame, 72 video tokens, 120 tokens with the two reference
    frames; 16 text tokens, 257 CLIP tokens; 288 latent pixels for the pose branch (3 frames of 96)."""
    L, d, f = 120, 256, 512
    block = (4 * 2 * L * d * d                             # self-attention q, k, v, o
             + 2 * (2 * L * L * d)                          # QK^T and PV over 120 tokens
             + 2 * 2 * L * d * d                            # cross q, o
             + 2 * 2 * 16 * d * d + 2 * 2 * 257 * d * d     # cross k, v (text) and k_img, v_img
             + 4 * L * 16 * d + 4 * L * 257 * d             # cross attention over text and CLIP tokens
             + 2 * L * d * f + 2 * L * f * d)               # ffn
    embeddings = (2 * 72 * d * 68 * 4 + 2 * 24 * d * 36 * 4 + 2 * 24 * d * 16 * 4   # three patch embeddings
                  + 2 * 16 * 32 * d + 2 * 16 * d * d                                # text embedding
                  + 2 * 32 * d + 2 * d * d + 2 * d * 6 * d                          # time embedding + projection
                  + 2 * (2 * 257 * 48 * 48 + 2 * 257 * 48 * d))                     # img_emb, called twice
    head = 2 * L * d * 64
    pixels = 288
    temporal = 3 * (2 * pixels * 16 * 9 + 2 * pixels * 16 * 16 * 3)   # depthwise 1x3x3, full 3x1x1
    spatial = (2 * pixels * (16 * 16 + 16 * 4 + 4 * 4 + 4 * 16)        # conv, conv_q, phi @ u, conv_p
               + 2 * 3 * (16 * 4 + 4 * 4 + 4 * 16 + 4 * 16))           # fc, SE, fc_phi, fc_scale per frame
    align = (2 * pixels * 16 * 128 * 2                                 # proj_p, proj_r
             + 3 * 2 * pixels * 128 * 128                              # in_proj q, k, v
             + 96 * 2 * (2 * 3 * 3 * 128)                              # per pixel: QK^T, PV over 3 frames
             + 2 * pixels * 128 * 128 + 2 * 2 * pixels * 128 * 128     # out_proj, ffn_pose (two 1x1 convs)
             + 2 * pixels * 128 * 16)                                  # proj_p_back
    return 2 * block + embeddings + head + temporal + spatial + align


def _math_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA as two matmuls, so FlopCounterMode sees attention (it counts no CPU SDPA kernel)."""
    assert attn_mask is None and dropout_p == 0.0 and not is_causal
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def test_flop_count_equals_pytorch_flop_counter_on_the_tiny_model(monkeypatch):
    grid = gpu_check.Grid.of(96, 64, 9)
    model = make_model(TINY)
    inputs = gpu_check.make_inputs(TINY, grid, 2, torch.float32, torch.device("cpu"))
    monkeypatch.setattr(F, "scaled_dot_product_attention", _math_sdpa)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs)
    assert gpu_check.dit_flops(TINY, grid, batch=2)["total"] == counter.get_total_flops()
    assert gpu_check.dit_flops(TINY, grid, batch=2)["total"] == 2 * _hand_flops_tiny_96x64x9()


def test_token_counts_of_the_measured_sizes():
    assert gpu_check.Grid.of(832, 480, 81).tokens(OFFICIAL_14B) == 23 * 30 * 52 == 35_880
    assert gpu_check.Grid.of(1024, 576, 81).tokens(OFFICIAL_14B) == 23 * 36 * 64 == 52_992
    with pytest.raises(ValueError, match="multiples of 16"):
        gpu_check.Grid.of(840, 480, 81)


def test_14b_forward_flops_are_dominated_by_the_blocks():
    flops = gpu_check.dit_flops(OFFICIAL_14B, gpu_check.Grid.of(832, 480, 81))
    blocks = flops["block_linear"] + flops["self_attention"] + flops["cross_attention"]
    assert blocks / flops["total"] > 0.999
    # Self-attention by hand: 40 layers x 4 x 35,880^2 x 5,120.
    assert flops["self_attention"] == 40 * 4 * 35_880**2 * 5_120
