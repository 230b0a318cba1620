"""Low-memory safetensors reading and writing, one tensor at a time.

Why not ``safetensors.torch.load_file`` / ``save_file``: loading a 65 GB fp32 DiT must not hold a
second copy of the weights, and ``save_file`` serialises every tensor to ``bytes`` before writing
(a full extra copy). Here:

* the header is parsed by :func:`read_header` (validated against the file size) so keys, dtypes
  and shapes are known before any weight is touched;
* :class:`SafetensorsFile` hands out either a zero-copy tensor that lives in safetensors' own
  memory map (``safe_open(framework="pt")``) or a private copy read with ``readinto`` — the latter
  for dtype/device conversions, so the converted result is the only resident copy (pages of a
  mapping stay in the process RSS after they were read; page-cache reads do not);
* :func:`write_safetensors` streams tensors to disk one by one.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import safe_open

from .checkpoint_errors import CorruptCheckpointError

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
# A header longer than this is not a real safetensors header (the 14B DiT's is ~150 kB).
_MAX_HEADER_BYTES = 100 * 1024 * 1024
# Byte alignment of tensors in files we write (a cache line; what torch's CPU allocator gives).
_ALIGN = 64


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives inside a safetensors file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: ``({name: TensorInfo}, metadata)``.

    Raises :class:`CorruptCheckpointError` naming the file and the defect (truncated file, bad
    JSON, unknown dtype, offsets outside the data section, size/shape disagreement).
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CorruptCheckpointError(path, f"file is {file_size} bytes, too short for a safetensors header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
                raise CorruptCheckpointError(
                    path, f"header length field says {header_len} bytes but the file has {file_size} "
                          "bytes — not a safetensors file, or truncated")
            raw = handle.read(header_len)
    except OSError as err:
        raise CorruptCheckpointError(path, f"{type(err).__name__}: {err.strerror or err}") from err
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(path, f"header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(path, "header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = file_size - data_start
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except KeyError as err:
            raise CorruptCheckpointError(path, f"tensor {name!r}: unsupported dtype or missing field {err}") from err
        except (TypeError, ValueError) as err:
            raise CorruptCheckpointError(path, f"tensor {name!r}: malformed header entry {entry!r}") from err
        expected = math.prod(shape) * dtype.itemsize
        if not 0 <= begin <= end <= data_size or end - begin != expected:
            raise CorruptCheckpointError(
                path, f"tensor {name!r} ({entry['dtype']} {list(shape)}) has byte range [{begin}, {end}) "
                      f"but needs {expected} bytes inside a data section of {data_size} bytes "
                      "(file truncated or corrupt)")
        infos[name] = TensorInfo(name, dtype, shape, path, data_start + begin, expected)
    return infos, dict(metadata)


class SafetensorsFile:
    """An open safetensors file serving tensors either memory-mapped or as private copies."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.infos, self.metadata = read_header(self.path)
        self._mapped = None
        self._raw = None

    def mapped(self, name: str) -> torch.Tensor:
        """Zero-copy CPU tensor backed by the file mapping (pages load on first touch)."""
        if self._mapped is None:
            try:
                self._mapped = safe_open(str(self.path), framework="pt")
            except Exception as err:  # safetensors raises its own error types
                raise CorruptCheckpointError(self.path, f"{type(err).__name__}: {err}") from err
        return self._mapped.get_tensor(name)

    def copy(self, name: str) -> torch.Tensor:
        """A private CPU copy read with ``readinto`` (nothing stays mapped afterwards)."""
        return self.read_into(name, torch.empty(self.infos[name].nbytes, dtype=torch.uint8))

    def read_into(self, name: str, buffer: torch.Tensor) -> torch.Tensor:
        """Read tensor ``name`` into the front of the uint8 ``buffer``; returns a view of it.

        Lets a loader reuse one scratch buffer for every tensor it converts: allocating and freeing
        a fresh buffer per tensor fragments the heap and keeps freed memory in the process RSS.
        """
        info = self.infos[name]
        if buffer.dtype != torch.uint8 or buffer.numel() < info.nbytes:
            raise ValueError(f"buffer must be uint8 with at least {info.nbytes} elements")
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        if self._raw is None:
            self._raw = open(self.path, "rb")
        target = buffer[: info.nbytes]
        self._raw.seek(info.offset)
        got = self._raw.readinto(memoryview(target.numpy()))
        if got != info.nbytes:
            raise CorruptCheckpointError(self.path, f"tensor {name!r}: read {got} of {info.nbytes} bytes")
        return target.view(info.dtype).reshape(info.shape)

    def close(self) -> None:
        # Tensors handed out by mapped() keep the mapping alive on their own (torch storage).
        self._mapped = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors dtype string of a torch dtype (error if safetensors cannot store it)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"safetensors cannot store dtype {dtype}") from None


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Write ``tensors`` to ``path`` streaming one tensor at a time; returns the data bytes written.

    Layout: the data section starts on a 64-byte boundary; tensors whose byte size is a multiple of
    64 come first (so each of them starts 64-byte aligned, like a fresh torch allocation), then the
    rest by element size, largest first (so every tensor is at least aligned to its element size, as
    zero-copy ``view(dtype)`` needs). Alignment matters beyond speed: CPU SIMD kernels reduce in a
    different order for differently aligned buffers, so a memory-mapped tensor that is not 64-byte
    aligned can give results that differ in the last bit from the same values in fresh memory.
    """
    items = list(tensors.items() if isinstance(tensors, Mapping) else tensors)
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in state dict")
    items.sort(key=lambda item: (_nbytes(item[1]) % _ALIGN != 0, -item[1].dtype.itemsize, item[0]))
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ValueError(f"safetensors metadata must map str to str; bad entries: {bad}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, tensor in items:
        nbytes = _nbytes(tensor)
        header[name] = {"dtype": dtype_name(tensor.dtype), "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-(8 + len(encoded)) % _ALIGN)  # JSON allows trailing spaces

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for _, tensor in items:
            if tensor.numel():
                flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                handle.write(memoryview(flat.numpy()))
    os.replace(tmp, path)  # never leave a half-written file under the final name
    return offset
