"""Two gloo processes under torchrun (FSDP2 for the full-parameter stage 2, DDP for the LoRA stage 1)
match one process with the same global batch (grad_accum 2): same losses, same exported weights."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from steadydancer_core.model.checkpoint import load_state_dict  # noqa: E402
from steadydancer_train.config import config_from_dict  # noqa: E402
from steadydancer_train.synthetic import write_training_fixture  # noqa: E402
from steadydancer_train.trainer import run_stage  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return write_training_fixture(tmp_path_factory.mktemp("dist_fixture"))


def make_cfg(root: Path, name: str, stage: int, strategy: str, grad_accum: int) -> dict:
    return {
        "stage": stage, "seed": 3,
        "data": {"cache_dir": str(root / "cache")},
        "model": {"arch": str(root / "arch.json"), "wan_checkpoint": str(root / "wan.safetensors"),
                  "steadydancer_checkpoint": str(root / "start" / "final" / "dit_merged") if stage > 1 else ""},
        "lora": {"rank": 4, "alpha": 4.0},
        "optim": {"steps": 2, "lr": 1e-3, "warmup_steps": 0, "grad_accum": grad_accum},
        "run": {"output_dir": str(root / name), "save_every": 2, "lora_dtype": "fp32", "merged_dtype": "fp32"},
        "compute": {"device": "cpu", "dtype": "fp32", "gradient_checkpointing": True, "strategy": strategy,
                    "backend": "gloo"},
    }


def single_thread(fn, *args, **kwargs):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(previous)


def torchrun(root: Path, cfg: dict, stage: int) -> list[dict]:
    path = root / f"{Path(cfg['run']['output_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(REPO / "training" / "run_stage.py"),
                           "--stage", str(stage), "--config", str(path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(cfg["run"]["output_dir"])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(one: list[dict], two: list[dict], root: Path, name_one: str, name_two: str) -> None:
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        for key in ("loss", "sigma", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    merged_one = load_state_dict(root / name_one / "final" / "dit_merged")
    merged_two = load_state_dict(root / name_two / "final" / "dit_merged")
    assert merged_one.keys() == merged_two.keys()
    for key in merged_one:
        torch.testing.assert_close(merged_two[key], merged_one[key], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed beside the interpreter")
def test_two_process_runs_match_one_process_with_the_same_global_batch(fixture_dir):
    root = fixture_dir
    # Stage 1: DDP (2 ranks x 1 sample) vs one process accumulating 2 samples.
    one1 = single_thread(run_stage, config_from_dict(make_cfg(root, "s1_one", 1, "none", 2)))
    two1 = torchrun(root, make_cfg(root, "s1_ddp", 1, "ddp", 1), 1)
    assert_same_run(one1, two1, root, "s1_one", "s1_ddp")
    assert (root / "s1_ddp" / "final" / "lora_comfy.safetensors").is_file()

    # Stage 2 (full-parameter student + teacher): FSDP2 vs one process.
    shutil.copytree(root / "s1_one", root / "start")
    one2 = single_thread(run_stage, config_from_dict(make_cfg(root, "s2_one", 2, "none", 2)))
    two2 = torchrun(root, make_cfg(root, "s2_fsdp", 2, "fsdp2", 1), 2)
    assert_same_run(one2, two2, root, "s2_one", "s2_fsdp")
    assert all(r["loss_uncond"] > 0 for r in two2)
    info = json.loads((root / "s2_fsdp" / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["strategy"] == "fsdp2" and info["global_batch"] == 2
