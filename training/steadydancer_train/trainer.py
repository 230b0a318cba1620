"""The training loop shared by the three stages.

Stage 1 Action Supervision:          LoRA (blocks) + pose modules, loss ||v(x_t, c) - v*||^2.
Stage 2 Condition-Decoupled Distill.: all student weights, loss l_u ||v_u(student) - v(teacher)||^2
                                      + l_c ||v(student, c) - v*||^2 with the frozen Wan2.1-I2V teacher.
Stage 3 Motion Discontinuity Mitig.:  LoRA, loss as stage 1 with Pose-Simulation pose latents (p = 0.5).

A run owns the entries of ``run.output_dir`` named in :data:`RUN_OUTPUTS`. It never writes into a folder
holding an earlier run unless asked to continue it (``resume``) or to replace it (``overwrite``), and a run
stopped early by ``max_steps`` leaves a checkpoint to resume from but no ``final/``, which only a run that
trained all ``optim.steps`` writes (DESIGN D13).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from steadydancer_core.atomic_output import atomic_path, check_output_path
from steadydancer_core.errors import InputError
from steadydancer_core.parallel.sequence_parallel import enable_sequence_parallel

from . import checkpointing, flow
from .config import ConfigError, PoseSimConfig, TrainConfig, require
from .data import CachedClips, clip_index, global_sample_number, sample_generator, sample_torch_seed, sim_key
from .distributed import (DTYPES, DistInfo, all_reduce_mean, barrier, check_sequence_parallel, full_state_dict,
                          init_distributed, no_sync, resolve_strategy, sequence_parallel_group, shutdown)
from .exports import write_exports
from .losses import distill_mse, flow_mse
from .metrics import MetricsLog
from .model_setup import (WRAPPER_PREFIX, build_dit_module, check_steadydancer, check_wan_i2v, init_pose_modules,
                          lora_init_tensors, place, read_weights, resolve_arch, stage_plan, to_model_keys,
                          trainable_parameters)


#: What a run writes into run.output_dir; --overwrite replaces these and nothing else in the folder.
RUN_OUTPUTS = ("metrics.jsonl", "run_info.json", "config.resolved.yaml", "ckpt", "final", "exports")
#: Where --overwrite keeps the earlier run while the new one trains, and a failed new run's outputs.
REPLACED_RUN = ".replaced_run"
FAILED_RUN = ".failed_run"


@dataclass
class Batch:
    """One micro-batch (batch size 1: the alignment unit's released attention layout is per sample)."""
    x: torch.Tensor  # [1, in_dim, T, h, w] noisy latent | mask | image latent
    timestep: torch.Tensor
    target: torch.Tensor  # v* = eps - x0
    weight: float
    sigma: float
    inputs: dict[str, torch.Tensor]  # context, clip_fea_x, clip_fea_c, pose_latents, ref_x, ref_c
    clip: int
    pose_variant: int  # 0 = original pose, T* = Pose-Simulation variant


def choose_pose_variant(cfg: PoseSimConfig, generator: torch.Generator) -> int:
    """Stage 3's Pose Simulation draw: 0 (original poses) with probability 1 - p, else T* uniform over
    ``cfg.variants`` (the cached pose video whose frame 1 is p0 + (p_T* - p0) / T*)."""
    use_sim = float(torch.rand((1,), generator=generator)) < cfg.probability
    choice = cfg.variants[int(torch.randint(0, len(cfg.variants), (1,), generator=generator))]
    return choice if use_sim else 0


def make_batch(cfg: TrainConfig, clips: CachedClips, g: int, device: torch.device) -> Batch:
    index = clip_index(cfg.seed, g, len(clips))
    tensors = clips.load(index)
    gen = sample_generator(cfg.seed, cfg.stage, g)
    sigma = flow.sample_sigma(cfg.flow, gen)
    x0 = tensors["latents"].float()
    noise = torch.randn(x0.shape, generator=gen)
    pose_variant = 0
    pose = tensors["pose_lat"]
    if cfg.stage == 3:
        pose_variant = choose_pose_variant(cfg.pose_sim, gen)
        if pose_variant:
            pose = tensors[sim_key(pose_variant)]
    x_t = flow.add_noise(x0, noise, sigma)
    x = torch.cat([x_t, tensors["y"].float()], dim=0)[None]
    inputs = {
        "context": tensors["context"][None], "clip_fea_x": tensors["clip_x"][None], "clip_fea_c": tensors["clip_c"][None],
        "pose_latents": pose[None], "ref_x": tensors["ref_lat"][None], "ref_c": tensors["pose0_lat"][None],
    }
    inputs = {k: v.to(device=device, dtype=torch.float32) for k, v in inputs.items()}
    return Batch(x=x.to(device), timestep=flow.timestep_from_sigma(sigma, 1, device),
                 target=flow.velocity_target(x0, noise)[None].to(device), weight=flow.loss_weight(cfg.flow, sigma),
                 sigma=sigma, inputs=inputs, clip=index, pose_variant=pose_variant)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up then constant (stateless: nothing to restore on resume)."""
    warm = cfg.optim.warmup_steps
    return cfg.optim.lr * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in trainable_parameters(model):
        inner = name.split(WRAPPER_PREFIX, 1)[-1]
        lora = ".lora_A." in inner or ".lora_B." in inner
        # LoRA and (stage 2) block weights decay; fully trained pose modules use module_weight_decay.
        (decay if lora or cfg.stage == 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": cfg.optim.module_weight_decay})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise RuntimeError("no trainable parameters")
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class StageRunner:
    """Holds everything of one run; ``run()`` trains, checkpoints, exports.

    ``resume``: "" (a new run), "auto" (the latest checkpoint of ``run.output_dir``, if any) or a step folder.
    ``overwrite``: replace an earlier run in ``run.output_dir``: once every check has passed and the model is
    built, its :data:`RUN_OUTPUTS` are moved aside into :data:`REPLACED_RUN` (a rename, no copy), deleted when
    this run ends well and put back if it fails (the failed run's own outputs then go to :data:`FAILED_RUN`,
    so nothing is lost; the earlier checkpoints take their disk space until the end). ``max_steps`` stops early, before ``optim.steps``: a partial run, resumable, without ``final/``."""

    def __init__(self, cfg: TrainConfig, resume: str = "", max_steps: int | None = None,
                 overwrite: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.total_steps = cfg.optim.steps if max_steps is None else min(max_steps, cfg.optim.steps)
        self.partial = self.total_steps < cfg.optim.steps
        self.out = Path(cfg.run.output_dir)
        self.info: DistInfo | None = None

    # ---- checks before any heavy work --------------------------------------------------------
    def check_output_dir(self) -> None:
        """Refuse to mix this run into an earlier one in ``run.output_dir`` (before any file is written)."""
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in run.output_dir and --overwrite replaces it; give one")
        check_output_path(self.out, "run.output_dir", folder=True, existing_ok=bool(self.resume) or self.overwrite,
                          owned=RUN_OUTPUTS, remedy="continue it with --resume auto, replace it with --overwrite, "
                                                    "or choose another run.output_dir")
        if (self.out / REPLACED_RUN).exists():
            raise InputError(f"run.output_dir {self.out} holds {REPLACED_RUN}/, an earlier run that an interrupted "
                             "--overwrite set aside; move its contents back into the folder or delete it")
        if self.resume in ("", "auto") or not any((self.out / name).exists() for name in RUN_OUTPUTS):
            return
        if (self.out / "ckpt").resolve() not in Path(self.resume).resolve().parents:
            raise InputError(f"--resume {self.resume} is not a checkpoint of the run in run.output_dir {self.out}; "
                             "continue that run from its own ckpt/step_* folders, or start from this checkpoint "
                             "in another run.output_dir")

    def check_resume_point(self) -> None:
        """The checkpoint to resume must be of this stage and config, and not past where this run stops."""
        meta = checkpointing.read_meta(self.resume_from)
        if meta.get("stage") != self.cfg.stage or meta.get("fingerprint") != self.cfg.fingerprint():
            raise InputError(f"checkpoint {self.resume_from} is from stage {meta.get('stage')} with config fingerprint "
                             f"{meta.get('fingerprint')}; this run is stage {self.cfg.stage}, {self.cfg.fingerprint()}")
        if not isinstance(meta.get("step"), int) or meta["step"] > self.total_steps:
            raise InputError(f"checkpoint {self.resume_from} is at step {meta.get('step')}, past the "
                             f"{self.total_steps} steps this run trains to (optim.steps, --max_steps)")
        # Older checkpoints have no run id: continuing them starts a new one (their folders are then kept).
        self.run_id = meta.get("run_id") or self.run_id

    def preflight(self) -> None:
        cfg = self.cfg
        self.check_output_dir()
        require(cfg, "data.cache_dir")
        self.config = resolve_arch(cfg.model.arch)
        self.compute_dtype = DTYPES[cfg.compute.dtype]
        self.plan = stage_plan(cfg)
        self.clips = CachedClips(cfg.data.cache_dir)
        check_sequence_parallel(cfg.compute.sequence_parallel, self.info.world, self.config.num_heads)
        sims = cfg.pose_sim.variants if cfg.stage == 3 and cfg.pose_sim.probability > 0 else None
        c = self.config
        self.clips.validate(in_dim=c.in_dim, in_dim_c=c.in_dim_c, out_dim=c.out_dim, clip_dim=c.clip_dim,
                            text_dim=c.text_dim, text_len=c.text_len, patch_size=c.patch_size, sim_variants=sims)
        # Start weights, memory-mapped: only headers/shapes are looked at here.
        if cfg.stage == 1 and cfg.model.init == "wan":
            self.start = read_weights(cfg.model.wan_checkpoint, "model.wan_checkpoint")
            check_wan_i2v(self.start, c, cfg.model.wan_checkpoint)
        else:
            if not cfg.model.steadydancer_checkpoint:
                raise ConfigError(f"stage {cfg.stage} needs model.steadydancer_checkpoint "
                                  f"({'the previous stage dit_merged/' if cfg.stage > 1 else 'a SteadyDancer DiT'})")
            self.start = read_weights(cfg.model.steadydancer_checkpoint, "model.steadydancer_checkpoint")
            check_steadydancer(self.start, c, cfg.model.steadydancer_checkpoint)
        self.teacher_weights = None
        if cfg.stage == 2:
            teacher_key = "model.teacher_checkpoint" if cfg.model.teacher_checkpoint else "model.wan_checkpoint"
            teacher_path = cfg.model.teacher_checkpoint or cfg.model.wan_checkpoint
            if not teacher_path:
                raise ConfigError("stage 2 needs the Wan2.1-I2V teacher: model.teacher_checkpoint or model.wan_checkpoint")
            self.teacher_weights = read_weights(teacher_path, teacher_key)
            check_wan_i2v(self.teacher_weights, c, teacher_path)
        self.run_id = uuid.uuid4().hex
        self.resume_from = checkpointing.find_resume(self.out, self.resume)
        if self.resume_from is not None:
            self.check_resume_point()

    # ---- models ------------------------------------------------------------------------------
    def build(self) -> None:
        cfg, info = self.cfg, self.info
        self.strategy = resolve_strategy(cfg.compute.strategy, cfg.stage, info.world)
        needs_weights = info.is_main or self.strategy != "fsdp2"
        if cfg.stage == 1 and cfg.model.init == "wan":
            self.start = {**self.start, **init_pose_modules(self.start, self.config, cfg.model.fuse_pose_init,
                                                            cfg.model.ref_c_init, cfg.seed)}
        student = build_dit_module(self.config, cfg.lora if self.plan.lora else None, self.plan, self.compute_dtype,
                                   cfg.compute.gradient_checkpointing, cfg.model.pose_dropout)
        if cfg.compute.sequence_parallel > 1 and self.strategy == "none":
            raise ConfigError("compute.sequence_parallel needs DDP or FSDP2 to sum the ranks' partial gradients; "
                              "compute.strategy is none")
        sp_group = sequence_parallel_group(info, cfg.compute.sequence_parallel)
        if sp_group is not None:
            enable_sequence_parallel(student.dit, sp_group)
        weights = None
        if needs_weights:
            lora = lora_init_tensors(student.dit, cfg.seed) if self.plan.lora else {}
            weights = to_model_keys(student, self.start, lora, WRAPPER_PREFIX)
        self.model = place(student, weights, info, self.strategy, self.compute_dtype, trainable=True)
        self.model.train()
        self.teacher = None
        if self.teacher_weights is not None:
            teacher_plan = type(self.plan)(lora=False, full_modules=(), train_all=False)
            teacher = build_dit_module(self.config, None, teacher_plan, self.compute_dtype, False, False)
            if sp_group is not None:
                enable_sequence_parallel(teacher.dit, sp_group)
            # The teacher's pose modules are never called; they are filled with zeros to satisfy strict loading.
            tw = None
            if needs_weights:
                filled = dict(self.teacher_weights)
                for key, value in teacher.dit.state_dict().items():
                    filled.setdefault(key, torch.zeros(value.shape, dtype=value.dtype))
                tw = to_model_keys(teacher, filled, {}, WRAPPER_PREFIX)
            self.teacher = place(teacher, tw, info, self.strategy, self.compute_dtype, trainable=False)
            self.teacher.eval()
            self.teacher.requires_grad_(False)
        self.optimizer = build_optimizer(cfg, self.model)
        self.params = [p for _, p in trainable_parameters(self.model)]

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.compute_dtype)

    # ---- one micro-batch ---------------------------------------------------------------------
    def micro_step(self, g: int, scale: float, last: bool) -> dict[str, float]:
        cfg = self.cfg
        batch = make_batch(cfg, self.clips, g, self.info.device)
        # The DiT computes in x's dtype (its residual stream; the released model runs it in bf16); autocast
        # then runs the fp32 trainable weights' matmuls in the compute dtype too. Loss stays fp32.
        batch.x = batch.x.to(self.compute_dtype)
        torch.manual_seed(sample_torch_seed(cfg.seed, cfg.stage, g))  # dropout in the alignment unit
        terms: dict[str, float] = {}
        if cfg.stage == 2:
            with torch.no_grad(), self.autocast():
                v_teacher = self.teacher("teacher", batch.x, batch.timestep, batch.inputs["context"],
                                         batch.inputs["clip_fea_x"])
            with no_sync(self.model, True), self.autocast():
                v_uncond = self.model("uncond", batch.x, batch.timestep, drop=tuple(cfg.distill.uncond_drop),
                                      **batch.inputs)
                loss_u = cfg.distill.lambda_uncond * distill_mse(v_uncond, v_teacher)
            (loss_u * scale).backward()  # backward per branch halves the peak activation memory
            terms["loss_uncond"] = float(loss_u.detach())
        with no_sync(self.model, not last), self.autocast():
            prediction = self.model("full", batch.x, batch.timestep, **batch.inputs)
            loss_c = flow_mse(prediction, batch.target, batch.weight)
            if cfg.stage == 2:
                loss_c = cfg.distill.lambda_cond * loss_c
        (loss_c * scale).backward()
        terms["loss_cond" if cfg.stage == 2 else "loss_flow"] = float(loss_c.detach())
        terms["loss"] = sum(terms.values())
        terms["sigma"] = batch.sigma
        terms["pose_variant"] = batch.pose_variant
        return terms

    # ---- saving ------------------------------------------------------------------------------
    def save(self, step: int) -> None:
        meta = {"stage": self.cfg.stage, "fingerprint": self.cfg.fingerprint(), "world_size": self.info.world,
                "run_id": self.run_id}
        checkpointing.save_checkpoint(self.out, step, self.model, self.optimizer, meta, self.info, self.cfg.run.keep_last)

    def export(self, step: int, target: Path) -> None:
        trained = full_state_dict(self.model, trainable_only=True)  # collective
        if self.info.is_main:
            cfg = self.cfg
            write_exports(target, trained, self.start, stage=cfg.stage, step=step, config=self.config,
                          lora_alpha=cfg.lora.alpha, full_modules=self.plan.full_modules, lora_dtype=cfg.run.lora_dtype,
                          merged_dtype=cfg.run.merged_dtype, single_file=cfg.run.export_single_file)
        barrier(self.info)

    def write_run_info(self) -> None:
        if not self.info.is_main:
            return
        info = {"git_commit": _git_commit(), "world_size": self.info.world, "strategy": self.strategy,
                "device": str(self.info.device), "torch": torch.__version__, "python": platform.python_version(),
                "fingerprint": self.cfg.fingerprint(), "clips": len(self.clips),
                "global_batch": self.info.world // self.cfg.compute.sequence_parallel * self.cfg.optim.grad_accum,
                "trainable_parameters": sum(p.numel() for p in self.params)}  # DTensor.numel() is the global size
        for name, text in (("config.resolved.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)),
                           ("run_info.json", json.dumps(info, indent=2))):
            with atomic_path(self.out / name) as temporary:
                temporary.write_text(text)

    def set_earlier_run_aside(self) -> None:
        """``overwrite``: move the earlier run's outputs (only :data:`RUN_OUTPUTS`) into :data:`REPLACED_RUN`."""
        if self.overwrite and self.info.is_main:
            _move_outputs(self.out, self.out / REPLACED_RUN)
        barrier(self.info)

    def finish_overwrite(self, succeeded: bool) -> None:
        """Delete the earlier run after a good run; after a failure put it back, keeping the new outputs."""
        aside = self.out / REPLACED_RUN
        if not (self.overwrite and self.info.is_main and aside.exists()):
            return
        if succeeded:
            shutil.rmtree(aside)
            return
        failed = self.out / FAILED_RUN
        if failed.exists():
            shutil.rmtree(failed)
        _move_outputs(self.out, failed)
        _move_outputs(aside, self.out)
        aside.rmdir()
        print(f"the earlier run in {self.out} was restored; this run's outputs are in {failed}", file=sys.stderr)

    # ---- the loop ----------------------------------------------------------------------------
    def check_only(self) -> None:
        """Every check of ``run()`` that needs no model: config, cache headers, checkpoint headers."""
        self.info = init_distributed("cpu", "gloo")
        self.preflight()

    def run(self) -> list[dict[str, Any]]:
        self.info = init_distributed(self.cfg.compute.device, self.cfg.compute.backend)
        try:
            self.preflight()
            self.build()
            self.set_earlier_run_aside()  # only now: every check has passed and the model is built
            try:
                records = self._loop()
            except BaseException:
                self.finish_overwrite(succeeded=False)
                raise
            self.finish_overwrite(succeeded=True)
            return records
        finally:
            shutdown(self.info)

    def _loop(self) -> list[dict[str, Any]]:
        cfg, info = self.cfg, self.info
        start = 0
        if self.resume_from is not None:
            start = int(checkpointing.load_checkpoint(self.resume_from, self.model, self.optimizer)["step"])
        self.write_run_info()
        log = MetricsLog(self.out / "metrics.jsonl", info.is_main, self.total_steps, start)
        records: list[dict[str, Any]] = []
        accum = cfg.optim.grad_accum
        sp = cfg.compute.sequence_parallel
        try:
            for step in range(start, self.total_steps):
                began = time.perf_counter()
                if info.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(info.device)
                lr = lr_at(cfg, step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                sums: dict[str, float] = {}
                for micro in range(accum):
                    # The ranks of a sequence-parallel group share a sample; the engines average gradients over the
                    # world, where a group's ranks hold partial sums (their tokens' share): hence the factor sp.
                    g = 0 if cfg.run.overfit_one_sample else global_sample_number(step, micro, info.rank // sp,
                                                                                  info.world // sp, accum)
                    terms = self.micro_step(g, sp / accum, micro == accum - 1)
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0.0) + value / accum
                grad_norm = self._clip()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                record = {"step": step + 1, "lr": lr, "grad_norm": grad_norm,
                          **{k: all_reduce_mean(v, info) for k, v in sums.items() if k.startswith("loss")},
                          "sigma": all_reduce_mean(sums["sigma"], info), "step_time_s": time.perf_counter() - began}
                if info.device.type == "cuda":
                    record["peak_mem_gb"] = torch.cuda.max_memory_allocated(info.device) / 1024**3
                records.append(record)
                if (step + 1) % cfg.run.log_every == 0 or step + 1 == self.total_steps:
                    log.log(record)
                log.advance()
                done = step + 1
                if done % cfg.run.save_every == 0 or done == self.total_steps:
                    self.save(done)
                    if cfg.run.export_on_save and done != cfg.optim.steps:
                        self.export(done, self.out / "exports" / f"step_{done:06d}")
            if self.partial:
                self.report_partial()
            elif start < self.total_steps or not (self.out / "final").exists():
                self.export(self.total_steps, self.out / "final")
        finally:
            log.close()
        return records

    def report_partial(self) -> None:
        if self.info.is_main:
            print(f"stopped at step {self.total_steps} of {self.cfg.optim.steps} (--max_steps): checkpoint "
                  f"{checkpointing.step_dir(self.out, self.total_steps)}; final/ is written when the run completes "
                  "(continue with --resume auto)", file=sys.stderr)

    def _clip(self) -> float:
        if self.cfg.optim.grad_clip <= 0:
            return float("nan")
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)


def run_stage(cfg: TrainConfig, resume: str = "", max_steps: int | None = None,
              overwrite: bool = False) -> list[dict[str, Any]]:
    return StageRunner(cfg, resume, max_steps, overwrite).run()


def _move_outputs(source: Path, target: Path) -> None:
    """Rename the run outputs present in ``source`` into ``target`` (same file system: nothing is copied)."""
    target.mkdir(exist_ok=True)
    for name in RUN_OUTPUTS:
        if (source / name).exists():
            os.replace(source / name, target / name)
