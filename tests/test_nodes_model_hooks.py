"""Core ComfyUI nodes that hook into a model, on SteadyDancer (needs COMFYUI_PATH).

EasyCache (DIFFUSION_MODEL wrapper) and LazyCache (PREDICT_NOISE wrapper) must skip DiT evaluations on a
10-step run, counted at the DiT's ``forward_orig`` (which TeaCache-style packs replace); SkipLayerGuidanceDiT
must change the output through ``patches_replace["dit"]``; TorchCompileModel must trace the DiT without a
graph break (counted by torch._dynamo). bf16 and fp16 files load through core *Load Diffusion Model*.
"""
from __future__ import annotations

import pytest
import torch

from tests.comfyui import harness
from tests.comfyui.tiny_models import core_dit, tiny_dit_state_dict, tiny_i2v_conditionings

from steadydancer_core.model import TINY

STEPS = 10
TINY_AS_LOADED = TINY.replace(text_len=512)


@pytest.fixture(scope="module", autouse=True)
def registration():
    return harness.pack_module("nodes.model_registration")


@pytest.fixture(scope="module")
def dit_sd() -> dict[str, torch.Tensor]:
    return tiny_dit_state_dict()


@pytest.fixture(scope="module")
def model(dit_sd):
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(dict(dit_sd))


@pytest.fixture(scope="module")
def conditionings():
    return tiny_i2v_conditionings()  # positive, negative, latent


class EvaluationCounter:
    """Counts DiT evaluations at ``diffusion_model.forward_orig`` (replaced on the instance, as cache packs do)."""

    def __init__(self, patcher) -> None:
        self.dit = patcher.model.diffusion_model
        self.calls = 0

    def __enter__(self) -> "EvaluationCounter":
        original = self.dit.forward_orig

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        self.dit.forward_orig = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.dit.forward_orig


def sample(patcher, conditionings, steps: int = STEPS) -> torch.Tensor:
    import comfy.sample

    positive, negative, latent = conditionings
    noise = comfy.sample.prepare_noise(latent["samples"], 3)
    return comfy.sample.sample(patcher, noise, steps, 5.0, "euler", "simple", positive, negative, latent["samples"],
                               denoise=1.0, disable_pbar=True, seed=3)


def test_easycache_skips_dit_evaluations(model, conditionings, caplog):
    from comfy_extras.nodes_easycache import EasyCacheNode

    with EvaluationCounter(model) as plain:
        reference = sample(model, conditionings)
    cached_model = EasyCacheNode.execute(model, 0.2, 0.15, 0.95, False).result[0]
    with EvaluationCounter(model) as cached, caplog.at_level("INFO"):
        out = sample(cached_model, conditionings)
    print(f"EasyCache: {plain.calls} DiT evaluations without, {cached.calls} with (10 steps, cfg batched)")
    assert plain.calls == STEPS
    assert 0 < cached.calls < plain.calls
    assert torch.isfinite(out).all() and not torch.equal(out, reference)


def test_lazycache_skips_dit_evaluations(model, conditionings):
    from comfy_extras.nodes_easycache import LazyCacheNode

    with EvaluationCounter(model) as plain:
        sample(model, conditionings)
    cached_model = LazyCacheNode.execute(model, 0.2, 0.15, 0.95, False).result[0]
    with EvaluationCounter(model) as cached:
        out = sample(cached_model, conditionings)
    print(f"LazyCache: {plain.calls} DiT evaluations without, {cached.calls} with (10 steps, cfg batched)")
    assert plain.calls == STEPS
    assert 0 < cached.calls < plain.calls
    assert torch.isfinite(out).all()


def test_skip_layer_guidance_changes_the_output(model, conditionings):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    reference = sample(model, conditionings, steps=4)
    guided = SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, double_layers="1").result[0]
    out = sample(guided, conditionings, steps=4)
    assert torch.isfinite(out).all()
    assert (out - reference).abs().max() > 1e-3


def test_double_block_patch_replaces_that_block(model, dit_sd):
    """A patch returning its input skips block 1: the core DiT without block 1, through apply_model."""
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, c_concat = r(1, 16, 3, 4, 6), r(1, 20, 3, 4, 6)
    conds = {"clip_fea": r(1, 257, TINY.clip_dim), "clip_fea_c": r(1, 257, TINY.clip_dim),
             "pose_latents": r(1, 16, 3, 4, 6), "ref_x": r(1, 16, 1, 4, 6), "ref_c": r(1, 16, 1, 4, 6)}
    context = r(1, 7, TINY.text_dim)
    seen = []

    def skip(args, extra):
        seen.append(sorted(args))
        return args

    options = {"patches_replace": {"dit": {("double_block", 1): skip}}}
    with torch.no_grad():
        denoised = model.model.apply_model(x, torch.tensor([0.5]), c_concat=c_concat, c_crossattn=context,
                                           transformer_options=options, **conds)
        without_block_1 = core_dit(dit_sd, TINY_AS_LOADED)
        without_block_1.blocks = torch.nn.ModuleList([without_block_1.blocks[0]])
        velocity = without_block_1(torch.cat([x, c_concat], 1), torch.tensor([500.0]), context, conds["clip_fea"],
                                   conds["clip_fea_c"], conds["pose_latents"], conds["ref_x"], conds["ref_c"])
    torch.testing.assert_close(denoised, x - 0.5 * velocity, rtol=1e-4, atol=1e-5)
    assert seen == [["context_img_len", "img", "pe", "transformer_options", "txt", "vec"]]


def test_torch_compile_model_traces_the_dit_without_graph_breaks(model, conditionings):
    """TorchCompileModel's own wrapper (eager backend: dynamo's tracing without inductor's CPU compile time),
    with PyTorch SDPA attention (what ComfyUI picks on GPUs). ComfyUI's CPU default, sub-quadratic attention,
    asks psutil for free memory inside every call (a builtin ``open``), which dynamo cannot trace: that break
    is ComfyUI's and hits core Wan the same way."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from comfy.ldm.modules.attention import attention_pytorch
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    compiled = TorchCompileModel.execute(model, "eager").result[0]
    compiled.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = (
        lambda func, *args, **kwargs: attention_pytorch(*args, **kwargs))
    torch._dynamo.reset()
    counters.clear()
    out = sample(compiled, conditionings, steps=2)
    breaks = sum(counters["graph_break"].values())
    print(f"TorchCompileModel: {breaks} graph breaks, {counters['stats']['unique_graphs']} graphs")
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did trace the DiT
    assert breaks == 0, dict(counters["graph_break"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_file_loads_through_load_diffusion_model(registration, dit_sd, tmp_path, dtype):
    import folder_paths
    import nodes
    from safetensors.torch import save_file

    name = f"steadydancer_tiny_{str(dtype).split('.')[-1]}.safetensors"
    save_file({k: v.to(dtype) for k, v in dit_sd.items()}, str(tmp_path / name))
    folder_paths.add_model_folder_path("diffusion_models", str(tmp_path))
    patcher = nodes.UNETLoader().load_unet(name, "default")[0]
    assert isinstance(patcher.model, registration.SteadyDancerModel)
    # The file's values arrive (ComfyUI stores them in its inference dtype: float32 on the CPU).
    loaded = patcher.model.diffusion_model.state_dict()
    for key in ("blocks.0.self_attn.q.weight", "condition_embedding_align.cross_attn.in_proj_weight",
                "patch_embedding_fuse.weight"):
        torch.testing.assert_close(loaded[key].float(), dit_sd[key].to(dtype).float(), rtol=0, atol=0)

    g = torch.Generator().manual_seed(4)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, c_concat, context = r(1, 16, 3, 4, 6), r(1, 20, 3, 4, 6), r(1, 7, TINY.text_dim)
    conds = {"clip_fea": r(1, 257, TINY.clip_dim), "clip_fea_c": r(1, 257, TINY.clip_dim),
             "pose_latents": r(1, 16, 3, 4, 6), "ref_x": r(1, 16, 1, 4, 6), "ref_c": r(1, 16, 1, 4, 6)}
    with torch.no_grad():
        denoised = patcher.model.apply_model(x, torch.tensor([0.5]), c_concat=c_concat, c_crossattn=context, **conds)
        rounded = {k: v.to(dtype).float() for k, v in dit_sd.items()}
        velocity = core_dit(rounded, TINY_AS_LOADED)(torch.cat([x, c_concat], 1), torch.tensor([500.0]), context,
                                                     conds["clip_fea"], conds["clip_fea_c"], conds["pose_latents"],
                                                     conds["ref_x"], conds["ref_c"])
    expected = x - 0.5 * velocity
    compute = patcher.model.manual_cast_dtype or patcher.model.get_dtype()
    relative = ((denoised.float() - expected).norm() / (expected - x).norm()).item()
    print(f"{dtype} file, compute {compute}: relative deviation from the float32 core DiT with the same weights "
          f"{relative:.2e}")
    assert relative < (1e-5 if compute == torch.float32 else 3e-2)


def test_easycache_skips_dit_evaluations_under_steadydancer_ksampler(model, conditionings):
    """The pack's own sampler (DC-CFG guider) goes through the same wrappers."""
    from comfy_extras.nodes_easycache import EasyCacheNode

    sampling = harness.pack_module("nodes.sampling")
    positive, negative, latent = conditionings

    def run(patcher):
        return sampling.SteadyDancerKSampler.execute(patcher, 3, STEPS, 5.0, 1.0, 0.1, 0.4, "euler", "simple",
                                                     positive, negative, [], latent, 1.0).result[0]["samples"]

    with EvaluationCounter(model) as plain:
        run(model)
    with EvaluationCounter(model) as cached:
        out = run(EasyCacheNode.execute(model, 0.2, 0.15, 0.95, False).result[0])
    print(f"EasyCache + SteadyDancer KSampler: {plain.calls} DiT evaluations without, {cached.calls} with")
    assert plain.calls == STEPS and 0 < cached.calls < plain.calls
    assert torch.isfinite(out).all()
