"""What the spawned gloo processes of ``test_parallel_sequence_parallel.py`` run (one module so children import it).

Every check builds the same seeded tiny DiT and inputs on every rank, computes the single-process result
locally (no communication) and the distributed one, and rank 0 writes ``{check: relative error}`` as JSON.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from steadydancer_core.conditioning import ConditioningLatents
from steadydancer_core.model import TINY, SteadyDancerDiT
from steadydancer_core.parallel.cfg_parallel import CFGParallelDiT
from steadydancer_core.parallel import fsdp as _fsdp  # noqa: F401  (imported once here, inherited by the forks)
from steadydancer_core.parallel.comm import count_collectives
from steadydancer_core.parallel.sequence_parallel import UlyssesAttention, enable_sequence_parallel
from steadydancer_core.parallel.session import LaunchEnv, ParallelLayout, ParallelSession
from steadydancer_core.pipeline import Conditioning, SamplingSettings, SteadyDancerPipeline, make_plan

#: 12 heads divide by 2, 3 and 4; head dim 16.
CONFIG = TINY.replace(dim=192, ffn_dim=384, num_heads=12)
#: 80x80 pixels, 9 frames -> latent 3 x 10 x 10 -> (3 + 2) x 5 x 5 = 125 tokens: divisible by none of 2, 3, 4.
WIDTH = HEIGHT = 80
FRAMES = 9
STEPS = 3  # step 1 of 3 is inside the pose window 0.1..0.4: 3 passes there, 2 elsewhere


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).abs().max() / reference.abs().max())


def make_dit(seed: int = 0) -> SteadyDancerDiT:
    torch.manual_seed(seed)
    return SteadyDancerDiT(CONFIG).eval()


def make_conditioning(seed: int = 1) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    t, h, w = 1 + (FRAMES - 1) // 4, HEIGHT // 8, WIDTH // 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    latents = ConditioningLatents.from_latents(randn(1, 16, t, h, w), randn(1, 16, t, h, w), randn(1, 16, t, h, w))
    return Conditioning(latents=latents, context=randn(1, 7, CONFIG.text_dim), negative_context=randn(1, 4, CONFIG.text_dim),
                        clip_x=randn(1, 257, CONFIG.clip_dim), clip_c=randn(1, 257, CONFIG.clip_dim),
                        reference_frame=None)


def sample(dit: torch.nn.Module, **changes) -> torch.Tensor:
    settings = SamplingSettings(frames=FRAMES, size=(WIDTH, HEIGHT), steps=STEPS, seed=5, **changes)
    plan = make_plan((HEIGHT, WIDTH), settings, pose_guidance=True)
    assert plan.pose_steps == (1,), plan.pose_steps
    pipeline = SteadyDancerPipeline("", "", device="cpu")
    return pipeline.sample(dit, make_conditioning(), plan, settings, progress=False)


def forward_inputs(seed: int = 2, batch: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, h, w = 1 + (FRAMES - 1) // 4, HEIGHT // 8, WIDTH // 8
    pose = torch.randn(batch, 16, t, h, w, generator=g)
    image = torch.randn(batch, 16, t, h, w, generator=g)
    mask = torch.zeros(batch, 4, t, h, w)
    mask[:, :, 0] = 1
    return {"x": torch.cat([torch.randn(batch, 16, t, h, w, generator=g), mask, image], 1),
            "timestep": torch.tensor([900.0, 500.0, 100.0][:batch]),
            "context": torch.randn(batch, 6, CONFIG.text_dim, generator=g),
            "clip_fea_x": torch.randn(batch, 257, CONFIG.clip_dim, generator=g),
            "clip_fea_c": torch.randn(batch, 257, CONFIG.clip_dim, generator=g),
            "pose_latents": pose, "ref_x": image[:, :, :1].clone(), "ref_c": pose[:, :, :1].clone()}


def layout_session(fsdp: bool = False) -> ParallelSession:
    """The 4 ranks as 2 CFG groups x 2 Ulysses groups (``rank = cfg * 2 + ulysses``)."""
    return ParallelSession(ParallelLayout(ulysses=2, cfg=2, fsdp=fsdp, backend="gloo"), LaunchEnv.from_environ(),
                           torch.device("cpu"))


class AttentionWithPaddingKeys(UlyssesAttention):
    """The negative control: the padding tokens left among the keys."""

    def key_length(self, local_length: int) -> int:
        return local_length * self.sharding.world


def check_forward_and_backward(results: dict, name: str, group) -> None:
    """DiT output, and the gradients of a loss on it (the training use), under Ulysses over ``group``."""
    inputs = forward_inputs()
    reference_dit, dit = make_dit(), make_dit()
    reference = reference_dit(**inputs)
    reference.square().mean().backward()
    enable_sequence_parallel(dit, group)
    with count_collectives() as counter:
        out = dit(**inputs)
    results[f"{name}_forward"] = relative_error(out.detach(), reference.detach())
    results[f"{name}_bytes"] = dict(counter.bytes)
    # Weights' gradients are partial sums over the group's ranks (each rank's tokens): summed they are the whole.
    out.square().mean().backward()
    worst = 0.0
    for (_, p_ref), (_, p) in zip(reference_dit.named_parameters(), dit.named_parameters()):
        if p_ref.grad is not None:
            grad = p.grad.clone()
            dist.all_reduce(grad, group=group)
            worst = max(worst, relative_error(grad, p_ref.grad))
    results[f"{name}_gradients"] = worst
    with torch.no_grad():
        for block in dit.blocks:
            block.self_attn.attention.__class__ = AttentionWithPaddingKeys
        results[f"{name}_padding_keys_kept"] = relative_error(dit(**inputs), reference.detach())


def ulysses(group):
    def build(dit: SteadyDancerDiT) -> SteadyDancerDiT:
        enable_sequence_parallel(dit, group)
        return dit
    return build


_references: dict[float, torch.Tensor] = {}


def check_sampling(results: dict, name: str, build, **changes) -> None:
    """``build(dit)`` -> the distributed module; its samples against one process's (the same seeded weights)."""
    key = changes.get("w_text", 5.0)
    if key not in _references:
        _references[key] = sample(make_dit(), **changes)
    results[name] = relative_error(sample(build(make_dit()), **changes), _references[key])


def main(rank: int, world: int, port: int, out_dir: str, checkpoint: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results: dict = {}
    run = layout_session()
    three = dist.new_group([0, 1, 2])  # every rank takes part in creating it; rank 3 sits the checks out
    with torch.no_grad():
        check_sampling(results, "sample_ulysses2", ulysses(run.ulysses_group))
        check_sampling(results, "sample_cfg2", lambda dit: CFGParallelDiT(dit, run.cfg_group))
        check_sampling(results, "sample_ulysses2_cfg2", run.build_dit_module)
        fsdp = layout_session(fsdp=True)
        for w_text in (5.0, 1.0):  # at w_text 1 a CFG group gets no pass outside the window and must still run
            check_sampling(results, f"sample_ulysses2_cfg2_fsdp_w{w_text:g}",
                           lambda _: fsdp.build_dit(checkpoint, torch.float32), w_text=w_text)
        if rank < 3:
            check_sampling(results, "sample_ulysses3", ulysses(three))
            check_sampling(results, "sample_cfg3", lambda dit: CFGParallelDiT(dit, three))
    check_forward_and_backward(results, "ulysses2", run.ulysses_group)
    if rank < 3:
        check_forward_and_backward(results, "ulysses3", three)
    if rank == 0:
        Path(out_dir, "results.json").write_text(json.dumps(results))
    dist.destroy_process_group()
