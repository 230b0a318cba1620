"""Training units: flow identities, LoRA (zero init, merge, ComfyUI export), trainable sets, the
teacher/unconditional forwards, stage-3 pose-variant statistics, sample order, config and input checks."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from steadydancer_core.errors import InputError  # noqa: E402
from steadydancer_core.model import SteadyDancerDiT  # noqa: E402
from steadydancer_train import flow  # noqa: E402
from steadydancer_train.config import (FlowConfig, LoraConfig, PoseSimConfig, TrainConfig,  # noqa: E402
                                       config_from_dict, load_config)
from steadydancer_train.data import CachedClips, clip_index, global_sample_number  # noqa: E402
from steadydancer_train.forwards import teacher_forward, uncond_forward  # noqa: E402
from steadydancer_train.lora import (COMFY_KEY, inject_lora, load_comfy_lora, merge_into,  # noqa: E402
                                     save_comfy_lora, split_state_dict)
from steadydancer_train.losses import distill_mse  # noqa: E402
from steadydancer_train.model_setup import (POSE_MODULES, NotWanI2VError, build_dit_module,  # noqa: E402
                                            check_wan_i2v, init_pose_modules, stage_plan)
from steadydancer_train.synthetic import MICRO, write_random_cache  # noqa: E402
from steadydancer_train.trainer import choose_pose_variant  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine: intra-op threads only add spin-wait (40x slower here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def micro_inputs(seed: int = 0, frames: int = 3, size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = MICRO

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g)
    return {"x": r(1, c.in_dim, frames, size, size), "timestep": torch.tensor([437.5]), "context": r(1, 5, c.text_dim),
            "clip_fea_x": r(1, 9, c.clip_dim), "clip_fea_c": r(1, 9, c.clip_dim),
            "pose_latents": r(1, c.in_dim_c, frames, size, size), "ref_x": r(1, c.out_dim, 1, size, size),
            "ref_c": r(1, c.in_dim_c, 1, size, size)}


def micro_dit(seed: int = 0) -> SteadyDancerDiT:
    torch.manual_seed(seed)
    return SteadyDancerDiT(MICRO).eval()


# ---- flow ----------------------------------------------------------------------------------

def test_flow_identities_and_shift():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(16, 3, 4, 4, generator=g), torch.randn(16, 3, 4, 4, generator=g)
    for sigma in (0.0, 0.3, 0.97, 1.0):
        x_t = flow.add_noise(x0, eps, sigma)
        v = flow.velocity_target(x0, eps)
        torch.testing.assert_close(x_t - sigma * v, x0)  # x0 = x_sigma - sigma v (the Wan solver's conversion)
        torch.testing.assert_close(x_t + (1 - sigma) * v, eps)
    sig = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = flow.shift_sigma(sig, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted.diff() > 0).all())
    assert float(flow.shift_sigma(torch.tensor(0.5, dtype=torch.float64), 5.0)) == pytest.approx(5 / 6)
    grid = flow.wan_sigma_grid(5.0)
    assert grid.shape == (1000,) and grid[0] == 1.0 and bool((grid.diff() < 0).all())
    assert flow.timestep_from_sigma(0.25).item() == 250.0


def test_ds_bell_weight_has_mean_one_over_the_grid_and_zero_minimum():
    grid = flow.wan_sigma_grid(5.0)
    weights = torch.tensor([flow.ds_bell_weight(float(s), 5.0) for s in grid])
    assert float(weights.mean()) == pytest.approx(1.0, abs=1e-9)
    assert float(weights.min()) == pytest.approx(0.0, abs=1e-12)
    assert flow.loss_weight(FlowConfig(weighting="none"), 0.3) == 1.0


def test_sigma_samplers_are_seeded_and_in_range():
    for sampler in ("wan_grid", "uniform", "logit_normal", "shift"):
        cfg = FlowConfig(sampler=sampler)
        a = [flow.sample_sigma(cfg, torch.Generator().manual_seed(s)) for s in range(200)]
        b = [flow.sample_sigma(cfg, torch.Generator().manual_seed(s)) for s in range(200)]
        assert a == b and all(0.0 <= s <= 1.0 for s in a) and len(set(a)) > 100
    grid = set(flow.wan_sigma_grid(5.0).tolist())
    assert all(flow.sample_sigma(FlowConfig(), torch.Generator().manual_seed(s)) in grid for s in range(50))


# ---- LoRA ----------------------------------------------------------------------------------

def test_lora_zero_init_merge_and_comfy_export_roundtrip(tmp_path):
    dit = micro_dit()
    inputs = micro_inputs()
    with torch.no_grad():
        before = dit(**inputs)
    base_state = {k: v.clone() for k, v in dit.state_dict().items()}
    names = inject_lora(dit, LoraConfig(rank=4, alpha=8.0))
    assert len(names) == 12 * MICRO.num_layers
    assert all(p.requires_grad == (".lora_" in n) for n, p in dit.named_parameters())
    with torch.no_grad():
        # Zero-initialised up matrices. (Not bit-exact: CPU SDPA in the alignment unit is not run-to-run
        # bit-reproducible under thread contention; differences are ~1e-6.)
        torch.testing.assert_close(dit(**inputs), before, rtol=0, atol=1e-5)
        g = torch.Generator().manual_seed(3)
        for name, param in dit.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
        unmerged = dit(**inputs)
    assert (unmerged - before).abs().max() > 1e-3

    base, lora = split_state_dict(dit.state_dict())
    assert set(base) == set(base_state)
    merged = merge_into(base, lora, alpha=8.0)
    plain = micro_dit()
    plain.load_state_dict(merged)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs), unmerged, rtol=1e-4, atol=1e-5)

    path = tmp_path / "lora.safetensors"
    save_comfy_lora(path, lora, 8.0, {"stage": "1"})
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["rank"] == "4"
    assert keys and all(COMFY_KEY.match(k) for k in keys)
    assert sum(k.endswith(".alpha") for k in keys) == len(names)
    loaded = load_comfy_lora(path)
    strength = 0.7
    for module, (down, up, alpha) in loaded.items():
        # ComfyUI (comfy/lora.py): W + strength * (alpha / rank) * up @ down, rank = down.shape[0]
        expected = base_state[f"{module}.weight"] + strength * (alpha / down.shape[0]) * (up @ down)
        torch.testing.assert_close(merge_into(base_state, {module: (down, up)}, alpha, strength)[f"{module}.weight"], expected)
        torch.testing.assert_close(base_state[f"{module}.weight"] + (alpha / down.shape[0]) * (up @ down),
                                   merged[f"{module}.weight"], rtol=1e-6, atol=1e-7)


# ---- trainable sets --------------------------------------------------------------------------

def _trainable_prefixes(stage: int, full_modules=None) -> tuple[set[str], int]:
    cfg = config_from_dict({"stage": stage, "lora": {"rank": 2, "alpha": 2, "full_modules": full_modules}})
    plan = stage_plan(cfg)
    wrapper = build_dit_module(MICRO, cfg.lora if plan.lora else None, plan, torch.bfloat16, False, True)
    trainable = [n for n, p in wrapper.named_parameters() if p.requires_grad]
    assert all(p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16) for p in wrapper.parameters())
    kinds = {("lora" if ".lora_" in n else n.split(".")[1]) for n in trainable}
    return kinds, len(trainable)


def test_trainable_parameter_sets_per_stage():
    kinds1, _ = _trainable_prefixes(1)
    assert kinds1 == {"lora", *POSE_MODULES}
    kinds2, n2 = _trainable_prefixes(2)
    assert n2 == len(list(SteadyDancerDiT(MICRO, device="meta").parameters()))
    assert "lora" not in kinds2
    kinds3, n3 = _trainable_prefixes(3)
    assert kinds3 == {"lora"} and n3 == 2 * 12 * MICRO.num_layers
    assert _trainable_prefixes(3, ["condition_embedding_align"])[0] == {"lora", "condition_embedding_align"}
    with pytest.raises(ValueError, match="must train the new pose modules"):
        stage_plan(config_from_dict({"stage": 1, "lora": {"full_modules": ["patch_embedding_fuse"]}}))


# ---- forwards and the stage-2 loss ----------------------------------------------------------------

def test_uncond_forward_without_drops_is_the_steadydancer_forward():
    dit = micro_dit()
    inputs = micro_inputs()
    with torch.no_grad():
        torch.testing.assert_close(uncond_forward(dit, drop=(), **inputs), dit(**inputs), rtol=0, atol=1e-5)


def test_stage2_distill_loss_is_zero_when_student_uncond_equals_teacher():
    teacher = micro_dit(seed=5)
    wan = {k: v for k, v in teacher.state_dict().items() if k.split(".")[0] not in POSE_MODULES}
    student = micro_dit(seed=9)
    student.load_state_dict({**wan, **init_pose_modules(wan, MICRO, "zero", "copy", seed=1)})
    inputs = micro_inputs(seed=2)
    with torch.no_grad():
        v_teacher = teacher_forward(teacher, inputs["x"], inputs["timestep"], inputs["context"], inputs["clip_fea_x"])
        v_u = uncond_forward(student, drop=("pose", "ref_x", "ref_c", "clip_c"), **inputs)
        assert float(distill_mse(v_u, v_teacher)) < 1e-10
        # Keeping the reference tokens makes it a different function (so the zero above is not trivial).
        v_keep = uncond_forward(student, drop=("pose", "ref_c", "clip_c"), **inputs)
        assert float(distill_mse(v_keep, v_teacher)) > 1e-6
        # The full SteadyDancer forward at init differs from the teacher by ref tokens and pose modules.
        assert float(distill_mse(student(**inputs), v_teacher)) > 1e-6


def test_new_module_init_copies_the_wan_patch_embedding():
    teacher = micro_dit(seed=5)
    wan = {k: v for k, v in teacher.state_dict().items() if k.split(".")[0] not in POSE_MODULES}
    init = init_pose_modules(wan, MICRO, "zero", "copy", seed=0)
    fuse = init["patch_embedding_fuse.weight"]
    torch.testing.assert_close(fuse[:, :MICRO.in_dim], wan["patch_embedding.weight"])
    assert float(fuse[:, MICRO.in_dim:].abs().max()) == 0.0
    torch.testing.assert_close(init["patch_embedding_ref_c.weight"], wan["patch_embedding.weight"][:, :16])
    assert set(k.split(".")[0] for k in init) == set(POSE_MODULES)


def test_teacher_checkpoint_must_be_wan_i2v():
    dit = micro_dit()
    full = dit.state_dict()
    with pytest.raises(NotWanI2VError, match="SteadyDancer checkpoint"):
        check_wan_i2v(full, MICRO, "sd.safetensors")
    wan = {k: v for k, v in full.items() if k.split(".")[0] not in POSE_MODULES}
    check_wan_i2v(wan, MICRO, "wan.safetensors")
    t2v = {k: v for k, v in wan.items() if not k.startswith("img_emb") and "k_img" not in k and "v_img" not in k}
    with pytest.raises(NotWanI2VError, match="text-to-video"):
        check_wan_i2v(t2v, MICRO, "t2v.safetensors")
    wrong = dict(wan)
    wrong["blocks.0.ffn.0.weight"] = torch.zeros(7, MICRO.dim)
    with pytest.raises(ValueError, match="shape mismatch"):
        check_wan_i2v(wrong, MICRO, "other.safetensors")


# ---- stage-3 pose simulation draw --------------------------------------------------------------

def test_pose_variant_choice_statistics():
    cfg = PoseSimConfig()
    draws = [choose_pose_variant(cfg, torch.Generator().manual_seed(s)) for s in range(2000)]
    n_sim = sum(d != 0 for d in draws)
    # Binomial(2000, 0.5): 5 standard deviations = 112.
    assert abs(n_sim - 1000) < 112
    counts = [sum(d == t for d in draws) for t in (2, 3, 4)]
    assert all(abs(c - n_sim / 3) < 5 * math.sqrt(n_sim * 2 / 9) for c in counts)
    assert all(choose_pose_variant(PoseSimConfig(probability=0.0), torch.Generator().manual_seed(s)) == 0 for s in range(50))


# ---- sample order ------------------------------------------------------------------------------

def test_stateless_order_covers_each_clip_once_per_epoch_across_ranks():
    n, world, accum = 7, 2, 2
    seen = []
    for step in range(7):
        for micro in range(accum):
            for rank in range(world):
                seen.append(clip_index(11, global_sample_number(step, micro, rank, world, accum), n))
    for epoch in range(len(seen) // n):
        assert sorted(seen[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert seen[:n] != seen[n:2 * n]  # a fresh permutation each epoch
    # One process with grad_accum 2 sees the same samples per step as two processes with grad_accum 1.
    single = [global_sample_number(s, m, 0, 1, 2) for s in range(3) for m in range(2)]
    double = [global_sample_number(s, 0, r, 2, 1) for s in range(3) for r in range(2)]
    assert single == double


# ---- config and cache checks -------------------------------------------------------------------

def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config keys in optim: \['learning_rate'\]"):
        config_from_dict({"optim": {"learning_rate": 1.0}})
    with pytest.raises(ValueError, match="flow.sampler must be one of"):
        config_from_dict({"flow": {"sampler": "cosine"}})
    with pytest.raises(ValueError, match="4n\\+1"):
        config_from_dict({"data": {"num_frames": 80}})
    for stage in (1, 2, 3):
        cfg = load_config(REPO / "training" / "configs" / f"stage{stage}.yaml", stage=stage)
        assert (cfg.optim.lr, cfg.optim.steps) == {1: (1e-4, 12000), 2: (1e-6, 2000), 3: (1e-4, 500)}[stage]
    with pytest.raises(ValueError, match="--stage 2 but config"):
        load_config(REPO / "training" / "configs" / "stage1.yaml", stage=2)
    cfg = load_config(REPO / "training" / "configs" / "stage3.yaml", ["optim.lr=0.5", "pose_sim.variants=[2]"], stage=3)
    assert cfg.optim.lr == 0.5 and cfg.pose_sim.variants == [2]
    assert isinstance(TrainConfig().fingerprint(), str)


def test_cache_validation_names_the_problem(tmp_path):
    with pytest.raises(InputError, match="run training/precompute.py"):
        CachedClips(tmp_path / "nothing")
    write_random_cache(tmp_path / "c", MICRO, 1, sim_variants=(), clip_tokens=9)
    clips = CachedClips(tmp_path / "c")
    kwargs = dict(in_dim=MICRO.in_dim, in_dim_c=MICRO.in_dim_c, out_dim=MICRO.out_dim, clip_dim=MICRO.clip_dim,
                  text_dim=MICRO.text_dim, text_len=MICRO.text_len, patch_size=MICRO.patch_size)
    clips.validate(sim_variants=None, **kwargs)
    with pytest.raises(ValueError, match="stage 3 needs 'pose_lat_sim2'"):
        clips.validate(sim_variants=[2, 3, 4], **kwargs)
    with pytest.raises(ValueError, match=r"clip_x has shape \[9, 16\], expected \[257, 1280\]"):
        clips.validate(sim_variants=None, **{**kwargs, "clip_dim": 1280})
    with pytest.raises(ValueError, match="context has shape"):
        clips.validate(sim_variants=None, **{**kwargs, "text_dim": 4096})
