"""Multi-process inference on the CPU with gloo equals one process (fp32, <= 1e-5 relative).

Spawned groups of 2, 3 and 4 processes (``parallel_workers.py``) run the tiny 12-head DiT on 125 tokens, a
count that none of 2, 3, 4 divides, so every Ulysses check goes through the padding: the DiT forward and
its weight gradients (training), and 3 full DC-CFG sampling steps (one with the negative-pose pass) under
``--ulysses``, ``--cfg-parallel``, both, and ``--dit-fsdp``.
"""
from __future__ import annotations

import json
import socket

import pytest
import torch.multiprocessing as mp

import parallel_workers
from tiny_models import build_tiny_dit_checkpoint

TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("parallel") / "dit.safetensors"
    return build_tiny_dit_checkpoint(path, parallel_workers.CONFIG)


@pytest.fixture(scope="module")
def results(checkpoint, tmp_path_factory) -> dict:
    """One spawn of 4 gloo processes runs every check (see ``parallel_workers.main``)."""
    out = tmp_path_factory.mktemp("results")
    # fork: the children inherit the imported torch (spawning 4 fresh interpreters costs more than every check)
    mp.start_processes(parallel_workers.main, args=(4, free_port(), str(out), str(checkpoint)), nprocs=4,
                       start_method="fork")
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("world", [2, 3])
def test_ulysses_dit_forward_and_gradients_equal_one_process(results, world):
    assert results[f"ulysses{world}_forward"] <= TOLERANCE
    assert results[f"ulysses{world}_gradients"] <= TOLERANCE


@pytest.mark.parametrize("world", [2, 3])
def test_ulysses_padding_tokens_must_be_cut_from_the_keys(results, world):
    """The negative control: with the padding left among the keys the output is visibly wrong."""
    assert results[f"ulysses{world}_padding_keys_kept"] > 10 * TOLERANCE


def test_ulysses_bytes_passed_to_the_collectives_match_the_formula(results):
    """Tiny 12-head DiT, 3 rows (batch), 125 tokens -> 63 per rank, 2 blocks, fp32: per block one all-to-all of
    q|k|v and one of the output, then one all-gather of the head's 64-channel output."""
    rows, local, dim, blocks, head_out, fp32 = 3, 63, 192, 2, 64, 4
    assert results["ulysses2_bytes"] == {"all_to_all_single": blocks * 4 * rows * local * dim * fp32,
                                         "all_gather_single": rows * local * head_out * fp32}
    local = 42  # ceil(125 / 3)
    assert results["ulysses3_bytes"]["all_to_all_single"] == blocks * 4 * rows * local * dim * fp32


@pytest.mark.parametrize("check", ["sample_ulysses2", "sample_ulysses3", "sample_cfg2", "sample_cfg3",
                                   "sample_ulysses2_cfg2"])
def test_sequence_parallel_sampling_equals_one_process(results, check):
    assert results[check] <= TOLERANCE, results


@pytest.mark.parametrize("check", ["sample_ulysses2_cfg2_fsdp_w5", "sample_ulysses2_cfg2_fsdp_w1"])
def test_sequence_parallel_dit_fsdp_sampling_equals_one_process(results, check):
    assert results[check] <= TOLERANCE, results
