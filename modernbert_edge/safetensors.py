"""Read a Hugging Face checkpoint folder's safetensors with numpy only (no torch, no safetensors):
the exporter's checkpoint weights, and the runtime's sentence-transformers Dense modules.

A safetensors file is an 8-byte header length, a JSON header mapping names to dtype, shape and
byte offsets, then the raw little-endian data. bf16 and fp16 tensors are widened to fp32.

`Weights` hands out each tensor once and remembers which were taken, so the exporter can stop
on any tensor the graph did not use (practice 4 of STYLE.md).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from modernbert_edge.errors import UserError

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "BF16": np.uint16,  # widened below
    "I64": np.int64,
    "I32": np.int32,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


_ITEMSIZE = {name: np.dtype(dt).itemsize for name, dt in _DTYPES.items()}
MAX_HEADER = 100_000_000  # bytes; the safetensors format's own limit


def _read_header(path: Path) -> tuple[dict, int]:
    """The header's tensor entries (each checked) and where the data starts."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise UserError(f"{path} is not a safetensors file (too short).")
            (n,) = struct.unpack("<Q", raw_len)
            if n > MAX_HEADER or 8 + n > size:
                raise UserError(f"{path} is not a safetensors file (header length {n} for a {size}-byte file).")
            header = json.loads(f.read(n))
    except OSError as e:
        raise UserError(f"{path} could not be read ({e.strerror}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path} is not a safetensors file (unreadable header).") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file (its header is not an object).")
    header.pop("__metadata__", None)
    _check_entries(path, header, size - 8 - n)
    return header, 8 + n


def _check_entries(path: Path, header: dict, data_bytes: int) -> None:
    """Each entry's dtype, shape and offsets are well-formed, and the tensors tile the data exactly:
    in order, without gaps or overlaps, from byte 0 to the end of the file."""
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise UserError(f"{path}: the header entry of tensor {name} is not an object.")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise UserError(f"{path}: tensor {name} has unsupported dtype {dtype!r}.")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise UserError(f"{path}: tensor {name} has an invalid shape {shape!r}.")
        if (
            not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets))
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise UserError(f"{path}: tensor {name} has invalid data_offsets {offsets!r}.")
        nbytes = _ITEMSIZE[dtype] * math.prod(shape)
        if offsets[1] - offsets[0] != nbytes:
            raise UserError(
                f"{path}: tensor {name} spans {offsets[1] - offsets[0]} bytes, but {dtype} {shape} needs {nbytes}."
            )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            raise UserError(f"{path} is corrupt: tensor {name} {what}.")
        end = stop
    if end != data_bytes:
        raise UserError(
            f"{path} is corrupt or truncated: its tensors cover {end} bytes of data, the file holds {data_bytes}."
        )


class MissingTensorError(UserError):
    """A tensor the graph needs is not in the checkpoint; `tensor` is its name."""

    tensor: str = ""


class Weights:
    """All tensors of a checkpoint, by name, loaded lazily from memory maps."""

    def __init__(self, files: list[Path]) -> None:
        self._where: dict[str, tuple[Path, dict, int]] = {}
        for path in files:
            header, start = _read_header(path)
            for name, info in header.items():
                if name in self._where:
                    raise UserError(f"tensor {name} is in both {self._where[name][0].name} and {path.name}.")
                self._where[name] = (path, info, start)
        self.used: set[str] = set()

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name` as float32, checked against `shape`; marks it used."""
        if name not in self._where:
            error = MissingTensorError(f"the checkpoint has no tensor {name!r} (expected shape {list(shape)}).")
            error.tensor = name
            raise error
        path, info, start = self._where[name]
        if tuple(info["shape"]) != tuple(shape):
            raise UserError(
                f"tensor {name!r} in {path.name} has shape {info['shape']}, expected {list(shape)} from config.json."
            )
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        if end == begin:  # an empty tensor: nothing to map
            arr = np.zeros(shape, dtype=dtype)
        else:
            data = np.memmap(path, dtype=np.uint8, mode="r", offset=start + begin, shape=(end - begin,))
            arr = np.frombuffer(data, dtype=dtype).reshape(shape)
        if info["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        self.used.add(name)
        return np.ascontiguousarray(arr, dtype=np.float32)

    def unused(self) -> list[str]:
        return sorted(set(self._where) - self.used)


def find_weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise UserError(f"{index} could not be read ({e!r}).") from None
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise UserError(f"{index}: weight_map must be an object mapping tensor names to shard file names.")
        shards = sorted({folder / s for s in weight_map.values()})
        inside = folder.resolve()
        outside = [str(s) for s in shards if s.resolve().parent != inside or s.name in ("", ".", "..")]
        if outside:
            raise UserError(f"{index} names shards outside its folder ({outside[0]}); shards must be files in it.")
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise UserError(f"{index} lists shards that are missing: {', '.join(missing)}.")
        return shards
    if (folder / "pytorch_model.bin").is_file():
        raise UserError(
            f"{folder} holds only pytorch_model.bin; convert it to safetensors first "
            "(transformers: model.save_pretrained(dir, safe_serialization=True))."
        )
    raise UserError(f"{folder} has no model.safetensors or model.safetensors.index.json.")
