"""DC-CFG sampling in ComfyUI: a GUIDER for SamplerCustomAdvanced, an all-in-one KSampler and the
official sigma schedule. The math (window test, combination) is ``steadydancer_core.guidance``.

ComfyUI hands a guider x0 ("denoised") predictions. Every DC-CFG form is an affine combination
whose weights sum to 1, and for flow models x0 = x - sigma * v is affine in v, so combining x0
predictions equals the official combination of velocities.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from ..steadydancer_core import guidance, schedule, solvers
from .model_registration import require_steadydancer_model

CATEGORY = "SteadyDancer"
OFFICIAL_SCHEDULER = "steadydancer_official"
OFFICIAL_SAMPLER = "steadydancer_unipc"
#: auto = the official shift rule by output size; model = the model's own shift (ModelSamplingSD3 or the default).
SHIFT_MODES = ("auto", "model")
#: Wan2.1's VAE: one latent pixel per 8x8 output pixels.
LATENT_STRIDE = 8


def step_of_sigma(sigma: float, sample_sigmas: torch.Tensor) -> int:
    """Step index of the sigma a sampler evaluates at.

    Grid sigmas map to their own step; samplers that also evaluate between grid points (Heun,
    ancestral, SDE ...) get the step whose interval [sigma_i, sigma_i+1) contains the sigma.
    """
    try:
        return guidance.step_index_for_sigma(sigma, sample_sigmas)
    except ValueError:
        grid = sample_sigmas.detach().to("cpu", torch.float64).flatten()[:-1]
        return max(int((grid >= float(sigma)).sum()) - 1, 0)


class DCCFGGuider(comfy.samplers.CFGGuider):
    """Positive, negative-text and negative-pose conditionings, evaluated in one batched call.

    Per step: positive always, negative text unless text cfg is 1, negative pose only inside the
    pose window (and when one was given). ComfyUI's ``calc_cond_batch`` batches them into one model
    call when memory allows.
    """

    def set_config(self, config: guidance.DCCFGConfig) -> None:
        self.dc_config = config

    def set_conds(self, positive: list, negative: list, negative_pose: list) -> None:
        conds = {"positive": positive, "negative": negative}
        if negative_pose:
            conds["negative_pose"] = negative_pose
        elif self.dc_config.pose_coefficient != 0.0:
            logging.warning("SteadyDancer DC-CFG: the negative_pose conditioning is empty (no negative pose "
                            "images were given), so the pose guidance term is off")
            self.dc_config = dataclasses.replace(self.dc_config, w_pose=0.0, formula="official")
        self.inner_set_conds(conds)

    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict = {},
                      seed: int | None = None) -> torch.Tensor:
        sample_sigmas = model_options["transformer_options"]["sample_sigmas"]
        num_steps = sample_sigmas.numel() - 1
        step = step_of_sigma(float(timestep[0]), sample_sigmas)
        positive = self.conds.get("positive")
        negative = self.conds.get("negative") if self.dc_config.text_pass_needed else None
        negative_pose = (self.conds.get("negative_pose") if self.dc_config.pose_active(step, num_steps)
                         else None)
        cond, uncond_text, uncond_pose = comfy.samplers.calc_cond_batch(
            self.inner_model, [positive, negative, negative_pose], x, timestep, model_options)
        return guidance.combine_predictions(
            self.dc_config, step, num_steps, cond,
            uncond_text if negative is not None else None,
            uncond_pose if negative_pose is not None else None)


def make_guider(model: Any, positive: list, negative: list, negative_pose: list, text_cfg: float,
                pose_cfg: float, pose_start: float, pose_end: float, node_name: str,
                formula: str = "official") -> DCCFGGuider:
    require_steadydancer_model(model, node_name)
    guider = DCCFGGuider(model)
    guider.set_config(guidance.DCCFGConfig(w_text=text_cfg, w_pose=pose_cfg, start=pose_start, end=pose_end,
                                           formula=formula))
    guider.set_conds(positive, negative, negative_pose)
    return guider


def guidance_inputs() -> list:
    return [
        io.Float.Input("text_cfg", default=guidance.DEFAULT_TEXT_SCALE, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Text guidance w_t (official 5.0). At 1.0 the negative-text pass is skipped."),
        io.Float.Input("pose_cfg", default=guidance.DEFAULT_POSE_SCALE, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Pose guidance w_p on (pos - neg pose), official convention: 0 = off, "
                               "1.0 = the authors' setting (adds one full pose term)."),
        io.Float.Input("pose_start", default=guidance.DEFAULT_POSE_START, min=0.0, max=1.0, step=0.01,
                       tooltip="Pose term active while start < step/steps < end (official 0.1)."),
        io.Float.Input("pose_end", default=guidance.DEFAULT_POSE_END, min=0.0, max=1.0, step=0.01,
                       tooltip="End of the pose window (official 0.4)."),
        io.Combo.Input("formula", options=list(guidance.FORMULAS), default="official",
                       tooltip="official = the authors' code (pose_cfg 0 = off); paper = usual CFG convention "
                               "(pose_cfg 1 = off, paper 2.0 = official 1.0)."),
    ]


def conditioning_inputs() -> list:
    return [
        io.Conditioning.Input("positive", tooltip="Positive output of 'SteadyDancer Image To Video'."),
        io.Conditioning.Input("negative", tooltip="Negative (text) output of 'SteadyDancer Image To Video'."),
        io.Conditioning.Input("negative_pose", tooltip="Negative-pose output of 'SteadyDancer Image To Video' "
                              "(empty when no negative poses were given: the pose term is then off)."),
    ]


class SteadyDancerDCCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerDCCFGGuider",
            display_name="SteadyDancer DC-CFG Guider",
            category=CATEGORY,
            description="Decoupled text/pose classifier-free guidance for SamplerCustomAdvanced: "
                        "uncond_text + w_t (cond - uncond_text) + w_p (cond - uncond_pose), the pose term "
                        "only inside the step window.",
            inputs=[io.Model.Input("model", tooltip="A SteadyDancer model (Load Diffusion Model).")]
                   + conditioning_inputs() + guidance_inputs(),
            outputs=[io.Guider.Output(display_name="GUIDER")],
        )

    @classmethod
    def execute(cls, model: Any, positive: list, negative: list, negative_pose: list, text_cfg: float,
                pose_cfg: float, pose_start: float, pose_end: float, formula: str = "official") -> io.NodeOutput:
        return io.NodeOutput(make_guider(model, positive, negative, negative_pose, text_cfg, pose_cfg,
                                         pose_start, pose_end, "SteadyDancer DC-CFG Guider", formula))


def official_sigmas(steps: int, shift: float, denoise: float = 1.0) -> torch.Tensor:
    """The official UniPC sigma grid; with denoise < 1 the last ``steps`` of a longer grid (as KSampler)."""
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    total = int(steps / denoise)
    return schedule.official_unipc_schedule(total, shift).sigmas[-(steps + 1):]


def model_shift(model: Any) -> float:
    """The flow shift the model samples with (ModelSamplingSD3 / the model's default)."""
    shift = getattr(model.get_model_object("model_sampling"), "shift", None)
    if shift is None:
        raise ValueError("the model has no flow shift (not a flow-matching model)")
    return float(shift)


def sampling_shift(model: Any, shift_mode: str, latent: torch.Tensor) -> tuple[float, str]:
    """The flow shift a sampler node uses for a ``latent`` [B, C, T, h, w], and why (for the log)."""
    if shift_mode == "model":
        return model_shift(model), "the model's shift (ModelSamplingSD3, or the SteadyDancer default 5)"
    if shift_mode != "auto":
        raise ValueError(f"shift must be one of {SHIFT_MODES}, got {shift_mode!r}")
    width, height = latent.shape[-1] * LATENT_STRIDE, latent.shape[-2] * LATENT_STRIDE
    return schedule.default_shift(width, height), f"auto: the official rule for {width}x{height}"


def with_shift(model: Any, shift: float) -> Any:
    """A clone of ``model`` whose flow sampling uses ``shift`` (what ModelSamplingSD3 does); ``model`` when it
    already does."""
    base = model.get_model_object("model_sampling")
    if float(base.shift) == shift:
        return model
    patched = copy.deepcopy(base)  # set_parameters re-registers buffers: never touch the shared object
    patched.set_parameters(shift=shift, multiplier=base.multiplier)
    clone = model.clone()
    clone.add_object_patch("model_sampling", patched)
    return clone


def sample_official_unipc(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                          callback: Any = None, disable: bool | None = None) -> torch.Tensor:
    """ComfyUI sampler function: the official FlowUniPC (bh2, order 2) over ``sigmas``, fed x0 predictions."""
    extra_args = extra_args or {}
    solver = solvers.FlowUniPCSolver(sigmas)
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:  # ComfyUI's progress bar and previews hang on this callback
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = solver.step_x0(denoised, x)
    return x


def sampler_for(name: str) -> Any:
    if name == OFFICIAL_SAMPLER:
        return comfy.samplers.KSAMPLER(sample_official_unipc)
    return comfy.samplers.sampler_object(name)


def with_official_timesteps(model: Any, official: schedule.FlowSchedule) -> Any:
    """A clone of ``model`` that samples like the official code on the official grid.

    Two official behaviours ComfyUI's flow sampling lacks: the DiT receives the integer-truncated
    timestep of each grid sigma (ComfyUI: the float ``1000 * sigma``), and sampling from an empty
    latent starts from the bare noise at the first sigma (ComfyUI: ``sigma_0 * noise``).
    """
    base = model.get_model_object("model_sampling")

    class OfficialTimestepSampling(type(base)):
        def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
            steps = []
            for value in sigma.flatten().tolist():
                try:
                    steps.append(official.timestep_for_sigma(value))
                except ValueError:  # a sampler evaluating between grid points: plain truncation
                    steps.append(int(value * schedule.NUM_TRAIN_TIMESTEPS))
            return torch.tensor(steps, dtype=sigma.dtype, device=sigma.device).view(sigma.shape)

        def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor,
                          max_denoise: bool = False) -> torch.Tensor:
            starts_grid = abs(float(sigma) - float(official.sigmas[0])) < 1e-6
            if starts_grid and torch.count_nonzero(latent_image) == 0:
                return noise
            return super().noise_scaling(sigma, noise, latent_image, max_denoise)

    patched = copy.copy(base)
    patched.__class__ = OfficialTimestepSampling
    clone = model.clone()
    clone.add_object_patch("model_sampling", patched)
    return clone


class SteadyDancerOfficialSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerOfficialSchedule",
            display_name="SteadyDancer Official Schedule",
            category=CATEGORY,
            description="The authors' UniPC sigma grid: linspace(0.999, 0, steps+1) shifted; ComfyUI's "
                        "'simple' scheduler starts at 1.0 instead. In SamplerCustomAdvanced two ComfyUI "
                        "conventions remain: the start is sigma_0 * noise (official: the bare noise) and the DiT "
                        "gets the float timestep 1000 * sigma (official: int(1000 * sigma)); 'SteadyDancer "
                        "KSampler' with the steadydancer_official scheduler has neither difference.",
            inputs=[
                io.Int.Input("steps", default=schedule.DEFAULT_STEPS, min=1, max=1000,
                             tooltip="Sampling steps (official 40)."),
                io.Float.Input("shift", default=schedule.DEFAULT_SHIFT, min=0.01, max=100.0, step=0.01,
                               tooltip="Flow shift (official 5.0; 3.0 for 480p). Use the same value in "
                                       "ModelSamplingSD3."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run (1.0 = from pure noise)."),
            ],
            outputs=[io.Sigmas.Output(display_name="SIGMAS")],
        )

    @classmethod
    def execute(cls, steps: int, shift: float, denoise: float) -> io.NodeOutput:
        return io.NodeOutput(official_sigmas(steps, shift, denoise))


class SteadyDancerOfficialSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerOfficialSampler",
            display_name="SteadyDancer Official Sampler",
            category=CATEGORY,
            description="The official FlowUniPC solver (bh2, order 2, x0 history) as a SAMPLER for "
                        "SamplerCustomAdvanced; pair it with 'SteadyDancer Official Schedule' (see there how "
                        "that route differs from the official start and timesteps).",
            inputs=[],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(sampler_for(OFFICIAL_SAMPLER))


#: ComfyUI's sampler callback: (step, x0, x, total_steps), as latent_preview.prepare_callback makes it.
SamplerCallback = Callable[[int, torch.Tensor, torch.Tensor, int], None]


def sample_dc_cfg(model: Any, seed: int, steps: int, text_cfg: float, pose_cfg: float, pose_start: float,
                  pose_end: float, formula: str, sampler_name: str, scheduler: str, positive: list, negative: list,
                  negative_pose: list, latent_image: dict, denoise: float = 1.0,
                  callback: SamplerCallback | None = None, *, node_name: str, shift: str = "auto") -> dict:
    """DC-CFG sampling of one latent: the flow shift (``sampling_shift``), the schedule (official grid or a
    ComfyUI scheduler), the guider and the sampler, as 'SteadyDancer KSampler' runs it; shared with
    'SteadyDancer Long Video' (one per segment).

    ``callback`` defaults to ComfyUI's progress bar + latent preview over these ``steps``.
    """
    total = int(steps / denoise)
    value, reason = sampling_shift(model, shift, latent_image["samples"])
    model_value = model_shift(model)
    ignored = f"; the model's shift {model_value:g} is not used (shift = model uses it)" if value != model_value else ""
    logging.info(f"{node_name}: flow shift {value:g} ({reason}){ignored}")
    model = with_shift(model, value)
    if scheduler == OFFICIAL_SCHEDULER:
        official = schedule.official_unipc_schedule(total, value)
        sigmas = official.sigmas[-(steps + 1):]
        model = with_official_timesteps(model, official)
    else:
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler,
                                                 total).cpu()[-(steps + 1):]
    guider = make_guider(model, positive, negative, negative_pose, text_cfg, pose_cfg, pose_start, pose_end,
                         node_name, formula)
    latent = latent_image.copy()
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    latent["samples"] = samples
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    if callback is None:
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    out = guider.sample(noise, samples, sampler_for(sampler_name), sigmas,
                        denoise_mask=latent.get("noise_mask"), callback=callback,
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    latent["samples"] = out.to(comfy.model_management.intermediate_device())
    return latent


def model_input() -> io.Model.Input:
    return io.Model.Input("model", tooltip="A SteadyDancer model (Load Diffusion Model, optionally "
                          "through ModelSamplingSD3 / LoRA loaders).")


def sampling_inputs(seed_tooltip: str) -> list:
    """seed, steps, the DC-CFG settings, sampler and scheduler: the widgets of every SteadyDancer sampler node."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                     tooltip=seed_tooltip),
        io.Int.Input("steps", default=schedule.DEFAULT_STEPS, min=1, max=10000,
                     tooltip="Sampling steps (official 40; 4 with a distilled LoRA)."),
    ] + guidance_inputs() + [
        io.Combo.Input("sampler_name", options=[OFFICIAL_SAMPLER] + list(comfy.samplers.SAMPLER_NAMES),
                       default=OFFICIAL_SAMPLER,
                       tooltip="steadydancer_unipc = the official FlowUniPC (bh2, order 2); or any "
                               "ComfyUI sampler."),
        io.Combo.Input("scheduler", options=[OFFICIAL_SCHEDULER] + list(comfy.samplers.SCHEDULER_NAMES),
                       default=OFFICIAL_SCHEDULER,
                       tooltip="steadydancer_official = the authors' sigma grid with the shift below, "
                               "integer timesteps and pure-noise start as in the official code; "
                               "or any ComfyUI scheduler."),
        io.Combo.Input("shift", options=list(SHIFT_MODES), default="auto",
                       tooltip="Flow shift, for every scheduler; the value used is logged. auto = the official "
                               "rule by output size: 3.0 up to 832x480 pixels (the 480p preset), else 5.0. "
                               "model = the model's own shift: ModelSamplingSD3's, or 5.0 (the SteadyDancer "
                               "default) without one."),
    ]


class SteadyDancerKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SteadyDancerKSampler",
            display_name="SteadyDancer KSampler",
            category=CATEGORY,
            description="All-in-one DC-CFG sampler for SteadyDancer (the guider + a sampler + a schedule).",
            inputs=[model_input()] + sampling_inputs("Seed of the initial noise.") + conditioning_inputs() + [
                io.Latent.Input("latent_image", tooltip="Latent output of 'SteadyDancer Image To Video'."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run (1.0 = from pure noise)."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT")],
        )

    @classmethod
    def execute(cls, model: Any, seed: int, steps: int, text_cfg: float, pose_cfg: float, pose_start: float,
                pose_end: float, sampler_name: str, scheduler: str, positive: list, negative: list,
                negative_pose: list, latent_image: dict, denoise: float = 1.0,
                formula: str = "official", shift: str = "auto") -> io.NodeOutput:
        require_steadydancer_model(model, "SteadyDancer KSampler")
        if denoise == 0.0:
            return io.NodeOutput(latent_image)
        return io.NodeOutput(sample_dc_cfg(model, seed, steps, text_cfg, pose_cfg, pose_start, pose_end, formula,
                                           sampler_name, scheduler, positive, negative, negative_pose, latent_image,
                                           denoise, node_name="SteadyDancer KSampler", shift=shift))
