"""Training configuration: one dataclass tree, loaded from YAML/TOML/JSON with a strict key check.

Every field that the paper leaves open carries its default here and a comment in the shipped
``training/configs/stage{1,2,3}.yaml`` files. Unknown keys are an error (a typo must never silently
fall back to a default for a 12,000-step run), and so is a value of the wrong type: every problem is a
:class:`ConfigError` naming the file and line, the ``--set`` override or the key and what it expects.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from steadydancer_core.errors import InputError


class ConfigError(InputError):
    """A config file, ``--set`` override, key or value that cannot be used."""


@dataclass
class DataConfig:
    manifest: str = ""  # metadata.jsonl (precompute input)
    cache_dir: str = ""  # one <id>.safetensors per clip (precompute output, training input)
    num_frames: int = 81  # frames per clip (4n+1)
    fps: float = 16.0
    max_area: int = 640 * 640  # pixel area of a clip after resize (H, W multiples of 16)
    min_frames: int = 81  # shorter clips are reported and skipped by precompute
    encoders_dir: str = ""  # Diffusers-format Wan2.1-I2V folder (vae/, text_encoder/, image_encoder/, ...)
    encoder_dtype: str = "bf16"
    pose_sim_variants: bool = True  # precompute the stage-3 Pose-Simulation latents (T* = 2, 3, 4)


@dataclass
class ModelConfig:
    arch: str = "official_14b"  # official_14b | tiny | path to an official config.json
    init: str = "wan"  # stage 1: wan (Wan2.1-I2V + new pose modules) | steadydancer (a SteadyDancer checkpoint)
    wan_checkpoint: str = ""  # Wan2.1-I2V DiT (official names); stage-1 base and stage-2 teacher default
    steadydancer_checkpoint: str = ""  # start weights: stage 1 (init=steadydancer), stage 2 student, stage 3 base
    teacher_checkpoint: str = ""  # stage 2 teacher; empty = wan_checkpoint
    fuse_pose_init: str = "zero"  # zero | random: init of patch_embedding_fuse's 32 pose input channels
    ref_c_init: str = "copy"  # copy (patch_embedding's first 16 input channels) | zero | random
    pose_dropout: bool = True  # keep the alignment unit's MultiheadAttention dropout (0.1) active in training


@dataclass
class LoraConfig:
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    # Suffixes of the Linear modules inside every block (12 per block incl. the I2V image k/v).
    targets: list[str] = field(default_factory=lambda: [
        "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
        "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
        "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2"])
    # Modules trained fully next to the LoRA; null = the stage default (stage 1: the five pose modules,
    # stage 3: none).
    full_modules: list[str] | None = None


@dataclass
class FlowConfig:
    sampler: str = "wan_grid"  # wan_grid | uniform | logit_normal | shift
    shift: float = 5.0  # wan_grid/shift: sigma' = s*sigma / (1 + (s-1)*sigma)
    grid_size: int = 1000  # wan_grid: number of grid points
    logit_mean: float = 0.0  # logit_normal/shift: sigma = sigmoid(mean + std * N(0,1))
    logit_std: float = 1.0
    weighting: str = "none"  # none | ds_bell (DiffSynth's Gaussian bell over t, mean 1)


@dataclass
class OptimConfig:
    steps: int = 12000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01  # LoRA / block parameters
    module_weight_decay: float = 0.0  # fully trained pose modules (small, zero-initialised channels)
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step and rank (micro-batch is always 1)


@dataclass
class DistillConfig:
    lambda_uncond: float = 1.0
    lambda_cond: float = 1.0
    # What the student does NOT see on the "unconditional" branch. Any subset of:
    #   pose   - the fused embedding gets zeros in its 32 pose channels
    #   ref_x  - no reference-image token frame
    #   ref_c  - no first-pose token frame
    #   clip_c - no CLIP feature of the first pose frame
    # All four = exactly the teacher's (Wan2.1-I2V) inputs.
    uncond_drop: list[str] = field(default_factory=lambda: ["pose", "ref_x", "ref_c", "clip_c"])


@dataclass
class PoseSimConfig:
    probability: float = 0.5  # chance that a training sample uses a pose-simulated variant
    variants: list[int] = field(default_factory=lambda: [2, 3, 4])  # T* candidates (uniform)


@dataclass
class RunConfig:
    output_dir: str = "out"
    save_every: int = 500
    keep_last: int = 3
    log_every: int = 1
    export_on_save: bool = False  # also write exports at every checkpoint (always at the end)
    lora_dtype: str = "bf16"  # dtype of lora_comfy.safetensors
    merged_dtype: str = "fp32"  # dtype of dit_merged/ (official release: fp32; stage-2 updates vanish in bf16)
    export_single_file: bool = False  # also steadydancer_stage{S}.safetensors for ComfyUI's diffusion_models/
    overfit_one_sample: bool = False  # debug: every step reuses sample 0 (clip, sigma, noise); the loss must fall


@dataclass
class ComputeConfig:
    device: str = "auto"  # auto (cuda if available) | cpu | cuda
    dtype: str = "bf16"  # compute dtype for the frozen/base weights and activations: bf16 | fp16 | fp32
    gradient_checkpointing: bool = True
    strategy: str = "auto"  # auto (stage 2: fsdp2, stages 1/3: ddp) | fsdp2 | ddp | none
    backend: str = "auto"  # auto (nccl on cuda, gloo on cpu) | nccl | gloo
    attention: str = "sdpa"
    # Ulysses sequence parallel group size (1 = off): each sample's tokens split over this many ranks, which then
    # see the same sample; data parallel over world / sequence_parallel groups (steadydancer_core.parallel).
    sequence_parallel: int = 1


@dataclass
class TrainConfig:
    stage: int = 1
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pose_sim: PoseSimConfig = field(default_factory=PoseSimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the training trajectory (not paths or logging)."""
        import hashlib

        data = self.to_dict()
        data.pop("run")
        for key in ("manifest", "cache_dir", "encoders_dir"):
            data["data"].pop(key)
        for key in ("wan_checkpoint", "steadydancer_checkpoint", "teacher_checkpoint"):
            data["model"].pop(key)
        data["optim"].pop("steps")  # extending a run is allowed
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_CHOICES: dict[str, tuple[str, ...]] = {
    "model.init": ("wan", "steadydancer"),
    "model.fuse_pose_init": ("zero", "random"),
    "model.ref_c_init": ("copy", "zero", "random"),
    "flow.sampler": ("wan_grid", "uniform", "logit_normal", "shift"),
    "flow.weighting": ("none", "ds_bell"),
    "compute.dtype": ("bf16", "fp16", "fp32"),
    "compute.device": ("auto", "cpu", "cuda"),
    "compute.strategy": ("auto", "fsdp2", "ddp", "none"),
    "compute.backend": ("auto", "nccl", "gloo"),
    "data.encoder_dtype": ("bf16", "fp16", "fp32"),
    "run.lora_dtype": ("bf16", "fp16", "fp32"),
    "run.merged_dtype": ("bf16", "fp16", "fp32"),
}


def _number(value: Any, path: str, kind: type) -> int | float:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if kind is int else float(value)  # ints kept exact (a float would round large seeds)
    number = None
    # YAML 1.1 reads 1e-4 (no dot, unsigned exponent) as a string, so numeric strings are accepted.
    if isinstance(value, (float, str)):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise ConfigError(f"config {path} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return int(number) if kind is int else number


def _convert(value: Any, hint: Any, path: str) -> Any:
    """``value`` as the field type ``hint`` (from the dataclass annotations), or a ConfigError naming ``path``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_dataclass(hint):
        return _build(hint, value, path)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        return None if value is None else _convert(value, inner, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config {path} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        return _number(value, path, hint)
    if hint is str:
        if value is None:  # "key:" with nothing after it, or --set key=, is YAML null: an empty setting
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"config {path} must be a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config {path} must be a list, got {value!r}")
        if origin is tuple and len(value) != len(args):
            raise ConfigError(f"config {path} must be a list of {len(args)} values, got {value!r}")
        items = args if origin is tuple else args * len(value)
        return origin(_convert(item, kind, f"{path}[{index}]") for index, (item, kind) in enumerate(zip(value, items)))
    raise TypeError(f"config field {path} has an unsupported annotation {hint!r}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {where or '<root>'} must be a mapping, got {data!r}")
    known = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config keys in {where or '<root>'}: {unknown}; known: {sorted(known)}")
    return cls(**{name: _convert(value, known[name], f"{where}.{name}" if where else name)
                  for name, value in data.items()})


def validate(cfg: TrainConfig) -> None:
    """Value checks that need no files; raise before any heavy work."""
    if cfg.stage not in (1, 2, 3):
        raise ConfigError(f"stage must be 1, 2 or 3, got {cfg.stage}")
    for path, choices in _CHOICES.items():
        section, name = path.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"config {path} must be one of {list(choices)}, got {value!r}")
    if cfg.optim.steps < 1 or cfg.optim.grad_accum < 1:
        raise ConfigError("optim.steps and optim.grad_accum must be >= 1")
    if cfg.run.save_every < 1 or cfg.run.log_every < 1:
        raise ConfigError(f"run.save_every and run.log_every must be >= 1, got {cfg.run.save_every} and "
                          f"{cfg.run.log_every}")
    if not cfg.run.output_dir.strip():
        raise ConfigError("config run.output_dir is empty; an empty path would silently mean the current folder")
    if cfg.lora.rank < 1:
        raise ConfigError(f"lora.rank must be >= 1, got {cfg.lora.rank}")
    unknown_drop = sorted(set(cfg.distill.uncond_drop) - {"pose", "ref_x", "ref_c", "clip_c"})
    if unknown_drop:
        raise ConfigError(f"distill.uncond_drop entries must be pose/ref_x/ref_c/clip_c, got {unknown_drop}")
    if not 0.0 <= cfg.pose_sim.probability <= 1.0:
        raise ConfigError(f"pose_sim.probability must be in [0, 1], got {cfg.pose_sim.probability}")
    bad_t = sorted(set(cfg.pose_sim.variants) - {2, 3, 4})
    if bad_t or not cfg.pose_sim.variants:
        raise ConfigError(f"pose_sim.variants must be a non-empty subset of [2, 3, 4], got {cfg.pose_sim.variants}")
    if cfg.data.num_frames < 1 or (cfg.data.num_frames - 1) % 4:
        raise ConfigError(f"data.num_frames must be 4n+1 (Wan VAE time stride 4), got {cfg.data.num_frames}")


def require(cfg: TrainConfig, *keys: str) -> None:
    """Refuse empty path settings that the command needs (``"data.cache_dir"``, ...): an empty path would
    silently mean the current folder."""
    for key in keys:
        section, name = key.split(".")
        if not str(getattr(getattr(cfg, section), name)).strip():
            raise ConfigError(f"config {key} is empty; set it in the config or with --set {key}=PATH "
                              "(an empty path would silently mean the current folder)")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A PyYAML error as one line: its str() spans several lines with an excerpt of the source."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _parse(text: str, path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML ({_yaml_problem(error)})") from None
    except tomllib.TOMLDecodeError as error:  # its message names the line and column
        raise ConfigError(f"config {path} is not valid TOML: {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config {path} is not valid JSON at line {error.lineno}, column {error.colno}: "
                          f"{error.msg}") from None
    raise ConfigError(f"config {path} must be .yaml, .yml, .toml or .json")


def read_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    data = _parse(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def set_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (value parsed as YAML) onto a raw config mapping."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML ({_yaml_problem(error)})") from None
    node = data
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: {'.'.join(parts[:depth + 1])} is a value, not a config section")
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None, stage: int | None = None) -> TrainConfig:
    """Load, apply ``--set`` overrides, check keys and values. ``stage`` must agree with the file."""
    data = read_mapping(path)
    for item in overrides or []:
        set_override(data, item)
    if stage is not None:
        file_stage = data.get("stage")
        if file_stage is not None and _number(file_stage, "stage", int) != stage:
            raise ConfigError(f"--stage {stage} but config {path} is for stage {file_stage}")
        data["stage"] = stage
    return config_from_dict(data)


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    cfg = _build(TrainConfig, data, "")
    validate(cfg)
    return cfg
