"""``animate`` under torchrun: layout errors before anything loads, --dry-run's memory per GPU, and a real
2-process gloo run whose video equals the single-process one (rank 0 writes and logs, rank 1 stays quiet)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from steadydancer_core import cli_animate
from steadydancer_core.parallel import session as parallel_session
from tiny_models import build_tiny_dit_checkpoint, build_tiny_wan_dir

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
WIDTH, HEIGHT = 48, 32  # latent 4 x 6: (2 + 2) token frames x 2 x 3 = 24 tokens at 5 frames


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel_cli")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(root / "ref.png")
    for name in ("poses", "negative"):
        (root / name).mkdir()
        for i in range(9):
            Image.fromarray(rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    # No Wan components here (building them imports transformers): the checks below come before they are needed.
    return {"root": root, "wan": root / "no_wan", "dit": build_tiny_dit_checkpoint(root / "dit.safetensors")}


@pytest.fixture(scope="module")
def assets_with_wan(assets):
    return {**assets, "wan": build_tiny_wan_dir(assets["root"] / "wan")}


def animate_args(assets, out: Path, *extra: str) -> list[str]:
    root = assets["root"]
    return ["--image", str(root / "ref.png"), "--poses", str(root / "poses"), "--negative-poses", str(root / "negative"),
            "--prompt", "a person dances", "--wan-dir", str(assets["wan"]), "--dit", str(assets["dit"]),
            "--out", str(out), "--frames", "5", "--steps", "3", "--device", "cpu", "--no-progress",
            "--max-area", str(WIDTH * HEIGHT), *extra]


def run_in_process(monkeypatch, capsys, world: int, args: list[str]) -> tuple[int, str]:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")

    def refuse(*_a, **_k):
        raise AssertionError("a process group was started")

    monkeypatch.setattr(parallel_session.ParallelSession, "__init__", refuse)
    parser = cli_animate.add_arguments(__import__("argparse").ArgumentParser())
    code = cli_animate.run(parser.parse_args(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("world, extra, message", [
    (2, ["--ulysses", "4"], "the layout needs 4 processes (--ulysses 4 x CFG 1) but 2 are running"),
    (1, ["--ulysses", "2"], "torchrun --nproc_per_node=2"),
    (3, ["--ulysses", "3"], "--ulysses 3 must divide the DiT's 2 attention heads"),
    (2, ["--ulysses", "2", "--dist-backend", "nccl"], "--dist-backend nccl needs CUDA GPUs"),
    (2, ["--cfg-parallel", "--sequential-conditions"], "cannot be combined with --sequential-conditions"),
    (1, ["--dit-fsdp"], "--dit-fsdp shards the DiT over several processes"),
    (1, ["--dist-backend", "gloo"], "--dist-backend gloo applies to multi-process runs"),
    (2, ["--cfg-parallel", "--w-text", "1", "--w-pose", "0"], "leaves one pass per step"),
    (2, ["--ulysses", "2", "--dtype", "fp8"], "are for one process; with --ulysses/--cfg-parallel use --dit-fsdp"),
    (2, ["--cfg-parallel", "--offload", "blocks"], "are for one process; with --ulysses/--cfg-parallel use --dit-fsdp"),
    (2, [], "the layout needs 1 process (--ulysses 1 x CFG 1) but 2 are running"),
    (2, ["--ulysses", "2", "--device", "cuda:1"], None),
])
def test_ulysses_layout_errors_come_before_any_process_group(assets, tmp_path, monkeypatch, capsys, world, extra,
                                                            message):
    code, err = run_in_process(monkeypatch, capsys, world, animate_args(assets, tmp_path / "o.mp4", *extra))
    assert code == 2
    if message is None:  # "cuda:1": refused either as unknown (no GPU here) or as an explicit index
        assert "--device cuda:1" in err
    else:
        assert message in err
    assert not (tmp_path / "o.mp4").exists()


def test_ulysses_dry_run_prints_memory_per_gpu(assets, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "1")
    parser = cli_animate.add_arguments(__import__("argparse").ArgumentParser())
    args = parser.parse_args(animate_args(assets, tmp_path / "o.mp4", "--ulysses", "2", "--cfg-parallel",
                                          "--dit-fsdp", "--dry-run"))
    assert cli_animate.run(args) == 2  # the plan is printed, then the missing Wan components are reported
    out = capsys.readouterr().out
    assert "4 processes: Ulysses sequence parallel x2, CFG parallel x2, DiT sharded with FSDP2" in out
    # latent 4 x 6 x 2 frames -> (2 + 2) x 2 x 3 = 24 tokens, 12 per rank
    assert "(24 tokens, 12 per rank)" in out


def read_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed beside the interpreter")
def test_torchrun_animate_two_processes_writes_the_single_process_video(assets_with_wan, tmp_path):
    assets = assets_with_wan
    single, parallel = tmp_path / "single.mp4", tmp_path / "parallel.mp4"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    assert cli_animate.main(animate_args(assets, single)) == 0
    logs = tmp_path / "logs"
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--log-dir", str(logs),
                           "--redirects", "3", "-m", "steadydancer_core", "animate",
                           *animate_args(assets, parallel, "--cfg-parallel")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.abs(read_mp4(parallel).astype(int) - read_mp4(single).astype(int)).max() <= 1
    rank_logs = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert "wrote" in rank_logs["0"] and "2 processes" in rank_logs["0"]
    assert rank_logs["1"].strip() == ""
