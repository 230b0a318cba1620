"""Load and save SteadyDancer DiT checkpoints without holding two copies of the weights.

Layouts read (DESIGN D1/D10, model_spec §7):

* one ``.safetensors`` file, keys bare or prefixed ``model.diffusion_model.`` / ``model.``;
* a diffusers-style folder (``diffusion_pytorch_model.safetensors.index.json`` + shards +
  ``config.json``), as MCG-NJU/SteadyDancer-14B ships;
* scaled-fp8 files (Kijai's ``*_fp8_e4m3fn_scaled_KJ``), dequantised to the compute dtype.

Layouts written: one file (config stored in the safetensors metadata) or the sharded folder.

Memory: :func:`load_dit` reads only headers first (keys, shapes, dtypes), rejects a wrong model
before touching a weight, builds the DiT on the meta device and assigns the loaded tensors
(``load_state_dict(assign=True)``). A tensor already in the requested dtype is the memory-mapped
tensor itself (zero copy); a tensor needing conversion is read into a private buffer, converted,
and the buffer dropped — so peak memory is one copy of the result plus one tensor.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .attention import AttentionFn
from .checkpoint_errors import (CheckpointError, CorruptCheckpointError, MissingShardError,
                                NotSteadyDancerError, StateDictMismatchError, summarize)
from .config import DiTConfig
from .dit import SteadyDancerDiT
from .fp8_scaled import FP8_DTYPES, QuantizationPlan, dequantize, plan_dequantization
from .safetensors_io import SafetensorsFile, TensorInfo, write_safetensors

#: Prefixes stripped from keys (ComfyUI full checkpoints / some conversions), longest first.
KEY_PREFIXES = ("model.diffusion_model.", "model.")
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
#: safetensors metadata entry holding ``DiTConfig.to_official_json()`` in single files we write.
METADATA_CONFIG_KEY = "steadydancer_config"
#: The key that tells SteadyDancer from plain Wan2.1-I2V (ComfyUI detection uses it too, D2).
STEADYDANCER_KEY = "patch_embedding_fuse.weight"
#: diffusers' default shard size.
DEFAULT_MAX_SHARD_BYTES = 10 * 1024**3
#: Head width of every released Wan2.1/SteadyDancer DiT; the shape-based config inference relies on it.
INFERRED_HEAD_DIM = 128
_NOT_SAFETENSORS_SUFFIXES = {".gguf": "GGUF files load through city96's ComfyUI-GGUF loader",
                             ".pt": "pickled PyTorch files are not loaded (unsafe); convert to safetensors",
                             ".pth": "pickled PyTorch files are not loaded (unsafe); convert to safetensors",
                             ".ckpt": "pickled PyTorch files are not loaded (unsafe); convert to safetensors",
                             ".bin": "pickled PyTorch files are not loaded (unsafe); convert to safetensors"}


@dataclass(frozen=True)
class _Entry:
    file: SafetensorsFile
    stored_name: str  # key as written in the file (possibly prefixed)

    @property
    def info(self) -> TensorInfo:
        return self.file.infos[self.stored_name]


class _OpenCheckpoint:
    """Headers of every file of one checkpoint, keys canonicalised (prefix stripped)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files: list[SafetensorsFile] = []
        self.config_json: dict | None = None
        self.metadata: dict[str, str] = {}
        self._scratch: torch.Tensor | None = None
        try:
            stored = self._open_layout()
            self.entries = self._canonicalise(stored)
            self.quant: QuantizationPlan = plan_dequantization(
                {k: e.info.shape for k, e in self.entries.items()}, self.metadata,
                lambda key: self.entries[key].file.copy(self.entries[key].stored_name), str(self.path))
        except BaseException:
            self.close()
            raise

    # ---- layout ----------------------------------------------------------------------------

    def _open_file(self, path: Path) -> SafetensorsFile:
        reason = _NOT_SAFETENSORS_SUFFIXES.get(path.suffix.lower())
        if reason is not None:
            raise CorruptCheckpointError(path, f"not a safetensors file ({reason})")
        handle = SafetensorsFile(path)
        self.files.append(handle)
        return handle

    def _open_layout(self) -> list[tuple[str, _Entry]]:
        path = self.path
        if not path.exists():
            raise CorruptCheckpointError(path, "no such file or folder")
        if path.is_file() and path.name.endswith(".index.json"):
            return self._open_sharded(path)
        if path.is_dir():
            if (path / INDEX_NAME).is_file():
                return self._open_sharded(path / INDEX_NAME)
            indexes = sorted(path.glob("*.safetensors.index.json"))
            if len(indexes) == 1:
                return self._open_sharded(indexes[0])
            candidates = [path / SINGLE_NAME] if (path / SINGLE_NAME).is_file() else sorted(path.glob("*.safetensors"))
            if len(candidates) != 1:
                found = [p.name for p in sorted(path.iterdir())][:20]
                raise CorruptCheckpointError(
                    path, f"expected {INDEX_NAME} (sharded) or a single {SINGLE_NAME} in this folder; found {found}")
            self._read_config_json(path / CONFIG_NAME)
            return self._entries_of(self._open_file(candidates[0]))
        handle = self._open_file(path)
        self.metadata = handle.metadata
        if METADATA_CONFIG_KEY in handle.metadata:
            try:
                self.config_json = json.loads(handle.metadata[METADATA_CONFIG_KEY])
            except json.JSONDecodeError as err:
                raise CorruptCheckpointError(path, f"metadata {METADATA_CONFIG_KEY!r} is not JSON ({err})") from err
        return self._entries_of(handle)

    def _read_config_json(self, path: Path) -> None:
        if path.is_file():
            try:
                self.config_json = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CorruptCheckpointError(path, f"{type(err).__name__}: {err}") from err

    @staticmethod
    def _entries_of(handle: SafetensorsFile) -> list[tuple[str, _Entry]]:
        return [(name, _Entry(handle, name)) for name in handle.infos]

    def _open_sharded(self, index_path: Path) -> list[tuple[str, _Entry]]:
        folder = index_path.parent
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(index_path, f"not a valid shard index ({type(err).__name__}: {err})") from err
        shards = sorted(set(weight_map.values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            counts = {name: sum(1 for v in weight_map.values() if v == name) for name in missing}
            raise MissingShardError(
                f"{index_path}: shard file(s) listed in weight_map not found in {folder}: "
                + ", ".join(f"{name} ({counts[name]} tensors)" for name in missing))
        self._read_config_json(folder / CONFIG_NAME)
        entries: list[tuple[str, _Entry]] = []
        for name in shards:
            handle = self._open_file(folder / name)
            listed = {k for k, v in weight_map.items() if v == name}
            absent = sorted(listed - handle.infos.keys())
            extra = sorted(handle.infos.keys() - listed)
            if absent:
                raise CorruptCheckpointError(handle.path, f"the index maps {len(absent)} tensor(s) to this shard "
                                                          f"but it does not contain them: {summarize(absent)}")
            if extra:
                raise CorruptCheckpointError(handle.path, f"{len(extra)} tensor(s) in this shard are not in "
                                                          f"{index_path.name}: {summarize(extra)}")
            entries.extend(self._entries_of(handle))
        return entries

    @staticmethod
    def _canonicalise(stored: list[tuple[str, _Entry]]) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for name, entry in stored:
            key = name
            for prefix in KEY_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    break
            if key in entries:
                raise CorruptCheckpointError(entry.file.path, f"tensor {key!r} is stored twice "
                                                              f"({entries[key].stored_name!r} and {name!r})")
            entries[key] = entry
        return entries

    # ---- tensors ---------------------------------------------------------------------------

    @property
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical parameter keys (quantisation bookkeeping removed) -> stored shape."""
        return {k: e.info.shape for k, e in self.entries.items() if k not in self.quant.auxiliary_keys}

    def _read_scratch(self, entry: _Entry) -> torch.Tensor:
        """The stored tensor in a scratch buffer shared by all conversions (valid until the next read)."""
        if self._scratch is None:  # sized once for the largest tensor: no regrowth, no fragmentation
            self._scratch = torch.empty(max(e.info.nbytes for e in self.entries.values()), dtype=torch.uint8)
        return entry.file.read_into(entry.stored_name, self._scratch)

    def tensor(self, key: str, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
        """Parameter ``key`` in ``dtype`` (None: as stored; fp8 -> float32) on ``device``."""
        entry = self.entries[key]
        stored = entry.info.dtype
        scale_key = self.quant.weight_scales.get(key)
        if scale_key is not None or stored in FP8_DTYPES:
            scale = None
            if scale_key is not None:
                scale = self.entries[scale_key].file.copy(self.entries[scale_key].stored_name)
            return dequantize(self._read_scratch(entry), scale, dtype or torch.float32).to(device)
        if device.type == "cpu" and dtype in (None, stored):
            return entry.file.mapped(entry.stored_name)
        # dtype or device differ, so .to() allocates a new tensor and the scratch is free again.
        return self._read_scratch(entry).to(device=device, dtype=dtype or stored, copy=True)

    def close(self) -> None:
        self._scratch = None
        for handle in self.files:
            handle.close()

    def __enter__(self) -> "_OpenCheckpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- model identification and configuration ---------------------------------------------------

def check_is_steadydancer(keys: Sequence[str] | set[str], source: str = "checkpoint") -> None:
    """Raise :class:`NotSteadyDancerError` unless ``keys`` (prefix-free) hold a SteadyDancer DiT."""
    keys = set(keys)
    if STEADYDANCER_KEY in keys:
        return
    if "patch_embedding.weight" in keys or "head.modulation" in keys:
        if any(k.startswith("img_emb.") for k in keys):
            raise NotSteadyDancerError(
                f"{source}: this is a Wan2.1 I2V model, not SteadyDancer (it has no {STEADYDANCER_KEY!r}, the "
                "pose-fused patch embedding). Load the SteadyDancer-14B weights (MCG-NJU/SteadyDancer-14B or "
                "Kijai's Wan21_SteadyDancer_* files) instead.")
        raise NotSteadyDancerError(
            f"{source}: this is a Wan DiT without image conditioning (text-to-video or another variant), not "
            f"SteadyDancer (no {STEADYDANCER_KEY!r}, no 'img_emb.*').")
    if any("lora" in k for k in keys):
        raise NotSteadyDancerError(f"{source}: this looks like a LoRA file, not a SteadyDancer DiT; "
                                   "apply it to a loaded model instead.")
    raise NotSteadyDancerError(
        f"{source}: not a SteadyDancer DiT checkpoint ({STEADYDANCER_KEY!r} and the Wan DiT keys are absent; "
        f"first keys: {summarize(sorted(keys), 5)})")


def infer_config(shapes: Mapping[str, Sequence[int]]) -> DiTConfig:
    """Architecture from state-dict shapes (prefix-free keys).

    ``num_heads = dim // 128`` (head width of every released Wan2.1 DiT, ComfyUI's rule too);
    ``text_len`` and ``eps`` cannot be seen in shapes and keep their official defaults.
    """
    def shape_of(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"cannot infer the DiT configuration: key {key!r} is missing "
                                  "(pass config= to load a non-standard checkpoint)")
        return tuple(shapes[key])

    embed_shape = shape_of("patch_embedding.weight")
    if len(embed_shape) != 5:
        raise CheckpointError(f"patch_embedding.weight must be a Conv3d weight (5-D); got shape {list(embed_shape)}")
    dim, in_dim, *patch = embed_shape
    layer_ids = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not layer_ids or layer_ids != set(range(len(layer_ids))):
        raise CheckpointError(f"transformer blocks must be numbered 0..N-1; found {sorted(layer_ids)[:10]}")
    if dim % INFERRED_HEAD_DIM:
        raise CheckpointError(f"dim {dim} is not a multiple of {INFERRED_HEAD_DIM}, so num_heads cannot be "
                              "inferred; pass config= (or a config.json) with num_heads")
    head_out = shape_of("head.head.weight")[0]
    patch_volume = math.prod(patch)
    if head_out % patch_volume:
        raise CheckpointError(f"head.head.weight has {head_out} outputs, not a multiple of the patch volume "
                              f"{patch_volume} (patch {patch})")
    return DiTConfig(
        dim=dim,
        ffn_dim=shape_of("blocks.0.ffn.0.weight")[0],
        num_heads=dim // INFERRED_HEAD_DIM,
        num_layers=len(layer_ids),
        freq_dim=shape_of("time_embedding.0.weight")[1],
        text_dim=shape_of("text_embedding.0.weight")[1],
        in_dim=in_dim,
        in_dim_c=shape_of("patch_embedding_ref_c.weight")[1],
        out_dim=head_out // patch_volume,
        clip_dim=shape_of("img_emb.proj.0.weight")[0],
        patch_size=tuple(patch),
        align_dim=shape_of("condition_embedding_align.proj_p.weight")[0],
    )


def check_state_dict_shapes(expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]],
                            source: str = "checkpoint") -> None:
    """Raise :class:`StateDictMismatchError` listing missing/unexpected keys and shape mismatches."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    mismatched = [f"{k} (checkpoint {list(found[k])}, model {list(expected[k])})"
                  for k in sorted(expected.keys() & found.keys()) if tuple(found[k]) != tuple(expected[k])]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(missing, unexpected, mismatched, context=source)


# ---- public API ----------------------------------------------------------------------------

def load_state_dict(path: str | Path, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Prefix-free state dict of any supported layout (no model check, no config needed).

    ``dtype=None`` keeps the stored dtypes (scaled/plain fp8 weights become float32); tensors not
    converted are zero-copy views of the memory-mapped file.
    """
    cpu = torch.device("cpu")
    with _OpenCheckpoint(path) as ckpt:
        return {key: ckpt.tensor(key, dtype, cpu) for key in ckpt.parameter_shapes}


def read_checkpoint_config(path: str | Path) -> DiTConfig:
    """The configuration of a checkpoint (config.json / metadata, else inferred) from headers only."""
    with _OpenCheckpoint(path) as ckpt:
        check_is_steadydancer(ckpt.parameter_shapes.keys(), str(ckpt.path))
        return _config_of(ckpt)


def _config_of(ckpt: _OpenCheckpoint) -> DiTConfig:
    if ckpt.config_json is not None:
        try:
            return DiTConfig.from_official_json(ckpt.config_json)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{ckpt.path}: invalid SteadyDancer config ({err})") from err
    return infer_config(ckpt.parameter_shapes)


def load_dit(path: str | Path, *, dtype: torch.dtype | None = torch.float32, device: torch.device | str = "cpu",
             operations=nn, attention: AttentionFn | None = None, config: DiTConfig | None = None) -> SteadyDancerDiT:
    """Build a :class:`SteadyDancerDiT` from a checkpoint (file, sharded folder/index, scaled fp8).

    Args:
        path: ``.safetensors`` file, diffusers folder, or its ``*.index.json``.
        dtype: parameter dtype; ``None`` keeps the stored dtypes (fp8 -> float32).
        device: where the parameters end up (CPU tensors in the stored dtype stay memory-mapped).
        operations, attention: injected into the DiT (ComfyUI ops, custom attention).
        config: overrides config.json / metadata / shape inference.

    Raises:
        NotSteadyDancerError, StateDictMismatchError, CorruptCheckpointError, MissingShardError —
        all before any weight is read.
    """
    device = torch.device(device)
    with _OpenCheckpoint(path) as ckpt:
        shapes = ckpt.parameter_shapes
        check_is_steadydancer(shapes.keys(), str(ckpt.path))
        config = config or _config_of(ckpt)
        extra = {} if attention is None else {"attention": attention}
        model = SteadyDancerDiT(config, operations=operations, dtype=dtype, device="meta", **extra)
        expected = model.state_dict()
        check_state_dict_shapes({k: t.shape for k, t in expected.items()}, shapes, str(ckpt.path))
        # Per key the meta tensor's dtype: the model decides (it was built with ``dtype``).
        state = {key: ckpt.tensor(key, None if dtype is None else expected[key].dtype, device) for key in expected}
        model.load_state_dict(state, strict=True, assign=True)
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:  # a non-persistent buffer the DiT would need to rebuild itself
        raise RuntimeError(f"after loading, tensors are still on the meta device: {summarize(still_meta)}")
    return model.eval()


def save_dit(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | Path, *,
             config: DiTConfig | None = None, sharded: bool = False,
             max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Save a DiT (or its state dict) as one ``.safetensors`` file or a diffusers-style sharded folder.

    Single file: the config goes into the safetensors metadata (``steadydancer_config``), so a
    non-standard config (e.g. tiny test models) reloads exactly. Sharded: ``path`` is a folder that
    receives ``config.json`` (``DiTConfig.to_official_json()``), the index and the shards
    ``diffusion_pytorch_model-0000k-of-0000n.safetensors`` of at most ``max_shard_bytes`` each
    (a tensor larger than that gets a shard of its own). Returns the file or folder written.
    """
    if isinstance(model_or_state_dict, nn.Module):
        config = config or getattr(model_or_state_dict, "config", None)
        state = model_or_state_dict.state_dict()
    else:
        state = dict(model_or_state_dict)
    on_meta = [k for k, t in state.items() if t.is_meta]
    if on_meta:
        raise ValueError(f"cannot save tensors on the meta device: {summarize(on_meta)}")
    if config is None:
        config = infer_config({k: t.shape for k, t in state.items()})
    config_json = json.dumps(config.to_official_json(), indent=2)
    path = Path(path)

    if not sharded:
        if path.suffix != ".safetensors":
            raise ValueError(f"a single-file checkpoint must end in .safetensors; got {path}")
        write_safetensors(path, state, {METADATA_CONFIG_KEY: config_json, "format": "pt"})
        return path

    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive; got {max_shard_bytes}")
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(key)
        shard_bytes += size
    path.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for number, keys in enumerate(shards, start=1):
        name = f"diffusion_pytorch_model-{number:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(path / name, {k: state[k] for k in keys}, {"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")
    (path / CONFIG_NAME).write_text(config_json, encoding="utf-8")
    return path
