"""The model folder's manifest.json: what a folder holds and how it was made.

Written by export and quantize, read by the runtime; kept free of onnx and torch imports so
the device-side install can read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from modernbert_edge.errors import UserError

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
FORMAT = "modernbert-edge/1"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        if Path(folder).exists():
            raise UserError(f"{folder} is a file, not a model folder: give the folder that holds {MANIFEST}.")
        raise UserError(f"model folder {folder} does not exist.")
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: is it a folder written by mbedge export?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path} could not be read ({e}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "task" not in manifest:
        raise UserError(f"{path} is not a modernbert-edge manifest (expected format {FORMAT!r}).")
    if manifest.get("model_file") is None:
        manifest["model_file"] = MODEL_FILE
    model_file = manifest["model_file"]
    if not is_plain_name(model_file):
        raise UserError(f"{path} names model_file {model_file!r}; it must be a file name inside the folder.")
    return manifest


def is_plain_name(name: object) -> bool:
    """A file name with no folder part: not absolute, no separators, not '.' or '..'."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and Path(name).name == name
    )
