"""The three stages end to end on a generated micro dataset (CPU, fp32, single process): finite and
falling loss on an overfit run, exports that ComfyUI's LoRA formula reproduces, exact resume, clear
errors before heavy work."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from steadydancer_core.errors import InputError  # noqa: E402
from steadydancer_core.model.checkpoint import load_dit, load_state_dict  # noqa: E402
from steadydancer_train.config import config_from_dict  # noqa: E402
from steadydancer_train.lora import load_comfy_lora  # noqa: E402
from steadydancer_train.model_setup import POSE_MODULES, NotWanI2VError  # noqa: E402
from steadydancer_train.synthetic import MICRO, write_random_cache, write_training_fixture  # noqa: E402
from steadydancer_train.trainer import StageRunner, run_stage  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine: intra-op threads only add spin-wait (40x slower here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return write_training_fixture(tmp_path_factory.mktemp("train_fixture"))


def stage_cfg(root: Path, out: Path, stage: int, **sections) -> dict:
    cfg = {
        "stage": stage, "seed": 7,
        "data": {"cache_dir": str(root / "cache")},
        "model": {"arch": str(root / "arch.json"), "wan_checkpoint": str(root / "wan.safetensors")},
        "lora": {"rank": 4, "alpha": 8.0},
        "optim": {"steps": 3, "lr": 1e-3, "warmup_steps": 0},
        "run": {"output_dir": str(out), "save_every": 1, "lora_dtype": "fp32", "merged_dtype": "fp32"},
        "compute": {"device": "cpu", "dtype": "fp32", "gradient_checkpointing": True, "strategy": "none"},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values) if isinstance(values, dict) else cfg.__setitem__(section, values)
    return cfg


@pytest.fixture(scope="module")
def stage1_run(fixture_dir) -> tuple[Path, list[dict]]:
    out = fixture_dir / "s1"
    cfg = stage_cfg(fixture_dir, out, 1, run={"overfit_one_sample": True, "output_dir": str(out), "save_every": 1,
                                              "lora_dtype": "fp32", "merged_dtype": "fp32"})
    return out, run_stage(config_from_dict(cfg))


def test_stage1_overfits_and_exports_reload_with_comfy_formula(stage1_run, fixture_dir):
    out, records = stage1_run
    losses = [r["loss"] for r in records]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[2] < losses[0]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3] and logged[2]["loss"] == pytest.approx(losses[2])
    assert (out / "config.resolved.yaml").is_file() and json.loads((out / "run_info.json").read_text())["world_size"] == 1

    final = out / "final"
    wan = load_file(str(fixture_dir / "wan.safetensors"))
    pose = load_file(str(final / "pose_modules.safetensors"))
    assert {k.split(".")[0] for k in pose} == set(POSE_MODULES)
    merged = load_state_dict(final / "dit_merged")
    lora = load_comfy_lora(final / "lora_comfy.safetensors")
    assert len(lora) == 12 * MICRO.num_layers
    assert any(float(up.abs().max()) > 0 for _, up, _ in lora.values())  # the LoRA moved
    for key, value in merged.items():
        module = key.rsplit(".", 1)[0]
        if key.split(".")[0] in POSE_MODULES:
            torch.testing.assert_close(value, pose[key])
        elif module in lora and key.endswith(".weight"):
            down, up, alpha = lora[module]
            torch.testing.assert_close(value, wan[key] + (alpha / down.shape[0]) * (up @ down), rtol=1e-6, atol=1e-7)
        else:
            torch.testing.assert_close(value, wan[key], rtol=0, atol=0)  # frozen: untouched
    assert not torch.equal(pose["condition_embedding_temporal.0.temporal.weight"],
                           torch.zeros_like(pose["condition_embedding_temporal.0.temporal.weight"]))
    model = load_dit(final / "dit_merged")
    assert model.config == MICRO


def test_stage1_resume_from_step2_reproduces_step3(fixture_dir):
    full = run_stage(config_from_dict(stage_cfg(fixture_dir, fixture_dir / "r_full", 1)))
    cfg = config_from_dict(stage_cfg(fixture_dir, fixture_dir / "r_cut", 1))
    first = run_stage(cfg, max_steps=2)
    assert (fixture_dir / "r_cut" / "ckpt" / "latest").read_text() == "step_000002"
    resumed = run_stage(cfg, resume="auto")
    assert [r["step"] for r in resumed] == [3]
    assert [r["loss"] for r in first] == [r["loss"] for r in full[:2]]
    assert resumed[0]["loss"] == pytest.approx(full[2]["loss"], rel=1e-6, abs=0)
    changed = stage_cfg(fixture_dir, fixture_dir / "r_cut", 1, optim={"steps": 4, "lr": 5e-4, "warmup_steps": 0})
    with pytest.raises(ValueError, match="config fingerprint"):
        run_stage(config_from_dict(changed), resume="auto")  # a different trajectory is refused
    a = load_state_dict(fixture_dir / "r_full" / "final" / "dit_merged")
    b = load_state_dict(fixture_dir / "r_cut" / "final" / "dit_merged")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_stage2_and_stage3_run_from_the_previous_stage(stage1_run, fixture_dir):
    s1 = stage1_run[0] / "final" / "dit_merged"
    out2 = fixture_dir / "s2"
    cfg2 = stage_cfg(fixture_dir, out2, 2, run={"overfit_one_sample": True, "output_dir": str(out2), "save_every": 3,
                                                "merged_dtype": "fp32"})
    cfg2["model"]["steadydancer_checkpoint"] = str(s1)
    records = run_stage(config_from_dict(cfg2))
    assert all("loss_uncond" in r and "loss_cond" in r for r in records)
    totals = [r["loss"] for r in records]
    assert all(torch.isfinite(torch.tensor(totals))) and totals[2] < totals[0]
    assert records[0]["loss"] == pytest.approx(records[0]["loss_uncond"] + records[0]["loss_cond"])
    assert not (out2 / "final" / "lora_comfy.safetensors").exists()
    student = load_state_dict(out2 / "final" / "dit_merged")
    start = load_state_dict(s1)
    assert any(not torch.equal(student[k], start[k]) for k in start if k.startswith("blocks."))  # full-parameter

    out3 = fixture_dir / "s3"
    cfg3 = stage_cfg(fixture_dir, out3, 3, run={"overfit_one_sample": True, "output_dir": str(out3), "save_every": 3,
                                                "merged_dtype": "fp32", "lora_dtype": "fp32"})
    cfg3["model"]["steadydancer_checkpoint"] = str(out2 / "final" / "dit_merged")
    records3 = run_stage(config_from_dict(cfg3))
    losses3 = [r["loss"] for r in records3]
    assert all(torch.isfinite(torch.tensor(losses3))) and losses3[2] < losses3[0]
    assert (out3 / "final" / "lora_comfy.safetensors").is_file()
    assert not (out3 / "final" / "pose_modules.safetensors").exists()  # stage 3 trains LoRA only


def _preflight(cfg: dict) -> None:
    StageRunner(config_from_dict(cfg)).check_only()


def test_clear_errors_before_heavy_work(stage1_run, fixture_dir, tmp_path):
    base = stage_cfg(fixture_dir, tmp_path / "o", 1)
    _preflight(base)
    missing = stage_cfg(fixture_dir, tmp_path / "o", 1, data={"cache_dir": str(tmp_path / "none")})
    with pytest.raises(InputError, match="cache folder not found"):
        _preflight(missing)
    # Cache written for another model width: named with the tensor and the expected shape.
    other = tmp_path / "other_cache"
    write_random_cache(other, MICRO.replace(text_dim=8), 1, clip_tokens=9)
    with pytest.raises(ValueError, match="context has shape"):
        _preflight(stage_cfg(fixture_dir, tmp_path / "o", 1, data={"cache_dir": str(other)}))
    # Stage 3 on a cache without Pose-Simulation latents (clips had no keypoints).
    no_kp = tmp_path / "nokp"
    write_random_cache(no_kp, MICRO, 1, sim_variants=(), clip_tokens=9)
    cfg3 = stage_cfg(fixture_dir, tmp_path / "o", 3, data={"cache_dir": str(no_kp)})
    cfg3["model"]["steadydancer_checkpoint"] = str(fixture_dir / "wan.safetensors")
    with pytest.raises(ValueError, match="stage 3 needs 'pose_lat_sim2'"):
        _preflight(cfg3)
    # Stage 2 with a SteadyDancer checkpoint given as the Wan2.1-I2V teacher.
    sd_ckpt = stage1_run[0] / "final" / "dit_merged"
    cfg2 = stage_cfg(fixture_dir, tmp_path / "o", 2)
    cfg2["model"].update({"steadydancer_checkpoint": str(sd_ckpt), "teacher_checkpoint": str(sd_ckpt)})
    with pytest.raises(NotWanI2VError, match="SteadyDancer checkpoint"):
        _preflight(cfg2)
    cfg2["model"]["teacher_checkpoint"] = str(fixture_dir / "wan.safetensors")
    _preflight(cfg2)
    cfg_bad_start = stage_cfg(fixture_dir, tmp_path / "o", 3)
    cfg_bad_start["model"]["steadydancer_checkpoint"] = str(fixture_dir / "wan.safetensors")
    with pytest.raises(ValueError, match="not a SteadyDancer DiT"):
        _preflight(cfg_bad_start)


def test_bf16_compute_trains_fp32_masters_and_merges_into_the_fp32_start(stage1_run, fixture_dir):
    start = stage1_run[0] / "final" / "dit_merged"
    out = fixture_dir / "bf16"
    cfg = stage_cfg(fixture_dir, out, 3, compute={"device": "cpu", "dtype": "bf16", "gradient_checkpointing": True,
                                                  "strategy": "none"})
    cfg["optim"]["steps"] = 2
    cfg["model"]["steadydancer_checkpoint"] = str(start)
    records = run_stage(config_from_dict(cfg))
    assert all(torch.isfinite(torch.tensor([r["loss"] for r in records])))
    merged = load_state_dict(out / "final" / "dit_merged")
    original = load_state_dict(start)
    lora = load_comfy_lora(out / "final" / "lora_comfy.safetensors")
    assert all(down.dtype == torch.float32 for down, _, _ in lora.values())  # fp32 masters
    for key, value in merged.items():
        if key.rsplit(".", 1)[0] not in lora:
            # frozen weights come from the fp32 start checkpoint, not from their bf16 training copy
            assert torch.equal(value, original[key]), key
