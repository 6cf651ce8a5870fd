"""Read a Hugging Face checkpoint folder's safetensors with numpy only (no torch, no safetensors).

A safetensors file is an 8-byte header length, a JSON header mapping names to dtype, shape and
byte offsets, then the raw little-endian data. bf16 and fp16 tensors are widened to fp32.

`Weights` hands out each tensor once and remembers which were taken, so the exporter can stop
on any tensor the graph did not use (practice 4 of STYLE.md).
"""

from __future__ import annotations

import json
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


def _read_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise UserError(f"{path} is not a safetensors file (too short).")
            (n,) = struct.unpack("<Q", raw_len)
            if n > 100_000_000:
                raise UserError(f"{path} is not a safetensors file (header length {n}).")
            header = json.loads(f.read(n))
    except OSError as e:
        raise UserError(f"{path} could not be read ({e.strerror}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a safetensors file (unreadable header).") from None
    header.pop("__metadata__", None)
    return header, 8 + n


class Weights:
    """All tensors of a checkpoint, by name, loaded lazily from memory maps."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, tuple[Path, dict, int]] = {}
        for path in files:
            header, start = _read_header(path)
            size = path.stat().st_size
            for name, info in header.items():
                begin, end = info["data_offsets"]
                if start + end > size:
                    raise UserError(f"{path} is truncated: tensor {name} runs past the end of the file.")
                if info["dtype"] not in _DTYPES:
                    raise UserError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
                self._where[name] = (path, info, start)
        self.used: set[str] = set()

    def names(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name` as float32, checked against `shape`; marks it used."""
        if name not in self._where:
            raise UserError(f"the checkpoint has no tensor {name!r} (expected shape {list(shape)}).")
        path, info, start = self._where[name]
        if tuple(info["shape"]) != tuple(shape):
            raise UserError(
                f"tensor {name!r} in {path.name} has shape {info['shape']}, expected {list(shape)} from config.json."
            )
        begin, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
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
        except (OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{index} could not be read ({e}).") from None
        shards = sorted({folder / s for s in weight_map.values()})
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


def load_weights(folder: Path) -> Weights:
    return Weights(find_weight_files(folder))
