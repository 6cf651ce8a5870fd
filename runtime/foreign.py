"""ONNX folders made elsewhere (optimum exports, Hub repositories): no manifest.json, an encoder
graph with the usual contract, read as if it had one.

    folder/model.onnx, model_quantized.onnx, ...      (optimum's ORTModel.save_pretrained)
    folder/onnx/model.onnx, onnx/model_quantized.onnx  (Hub layout; config and tokenizer at the root)

Inputs: input_ids, attention_mask (and token_type_ids, fed zeros). Outputs name the task:
last_hidden_state, start_logits + end_logits, or logits (whose task config.architectures names).
Nothing here assumes this project's graph: it is run as its outputs say, padded positions included.
"""

from __future__ import annotations

import json
from pathlib import Path

from modernbert_edge.contract import END_LOGITS, HEADS, LAST_HIDDEN_STATE, LOGITS, START_LOGITS, task_of_architecture
from modernbert_edge.errors import UserError
from modernbert_edge.manifest import FORMAT, MANIFEST, TOKENIZER_FILES
from modernbert_edge.runtime.errors import ModelFolderError

DEFAULT_FILES = ("model.onnx", "onnx/model.onnx")


def is_foreign(folder: str | Path) -> bool:
    """A folder without manifest.json that holds an .onnx file (at its root or under onnx/)."""
    folder = Path(folder).expanduser()
    return folder.is_dir() and not (folder / MANIFEST).is_file() and bool(onnx_files(folder))


def onnx_files(folder: Path) -> list[str]:
    """The folder's .onnx files, relative to it: root first, then onnx/."""
    found = sorted(p.name for p in folder.glob("*.onnx"))
    return found + sorted(f"onnx/{p.name}" for p in (folder / "onnx").glob("*.onnx"))


def pick_file(folder: Path, file: str | None) -> str:
    """The model file to run: `file` (relative to the folder, or to its onnx/), else model.onnx."""
    files = onnx_files(folder)
    if file is not None:
        for candidate in (file, f"onnx/{file}"):
            if candidate in files:
                return candidate
        raise UserError(f"{folder} has no model file {file!r} (it has: {', '.join(files) or 'none'}).")
    for candidate in DEFAULT_FILES:
        if candidate in files:
            return candidate
    if len(files) == 1:
        return files[0]
    raise UserError(f"{folder} holds several model files ({', '.join(files)}): pick one with --file / file=.")


def precision_of(file: str) -> str:
    name = Path(file).stem.lower()
    if "int4" in name or "q4" in name:
        return "int4"
    if "quantized" in name or "int8" in name or "uint8" in name:
        return "int8"
    if "fp16" in name or "float16" in name:
        return "fp16"
    return "fp32"


def task_of(outputs: dict[str, list], architectures: list[str], vocab_size: int | None) -> str:
    """The task a graph's outputs ({name: shape}) and config.architectures imply; UserError if none."""
    names = set(outputs)
    if {START_LOGITS, END_LOGITS} <= names:
        return "question-answering"
    if LOGITS in names:
        for arch in architectures:
            task = task_of_architecture(arch)
            if task is not None and HEADS[task].output_names == (LOGITS,):
                return task
        shape = outputs[LOGITS]
        if len(shape) == 2:
            return "text-classification"
        if len(shape) == 3 and isinstance(shape[-1], int):
            return "fill-mask" if shape[-1] == vocab_size else "token-classification"
    if LAST_HIDDEN_STATE in names:
        return "feature-extraction"
    raise ModelFolderError(
        f"the graph's outputs {sorted(names)} fit no task this runtime runs (it needs last_hidden_state, "
        "logits, or start_logits and end_logits)."
    )


def foreign_manifest(folder: Path, file: str, outputs: dict[str, list]) -> dict:
    """A manifest for a folder that has none, from its graph's outputs and config.json."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(
            f"{folder} has no config.json next to {file}: the runtime needs the model's config."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFolderError(f"{folder / 'config.json'} could not be read ({e}).") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{folder / 'config.json'} does not hold a JSON object; the folder may be corrupt.")
    architectures = config.get("architectures")
    architectures = [a for a in architectures if isinstance(a, str)] if isinstance(architectures, list) else []
    vocab_size = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
    try:
        task = task_of(outputs, architectures, vocab_size)
    except ModelFolderError as e:
        raise ModelFolderError(f"{folder / file}: {e}") from None
    return {
        "format": FORMAT,
        "task": task,
        "model_file": file,
        "precision": precision_of(file),
        "outputs": list(outputs),
        "config": {k: config[k] for k in ("hidden_size", "vocab_size", "max_position_embeddings") if k in config},
        "tokenizer_files": [f for f in TOKENIZER_FILES if (folder / f).is_file()],
        "source": {"checkpoint": str(folder), "foreign": True},
    }
