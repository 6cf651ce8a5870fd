"""What a model folder holds: manifest.json, config.json and the model file, read and checked.

Written by `mbedge export` (and `mbedge quantize`, which may name another model file: always use
manifest["model_file"]). Every problem is a ModelFolderError that names the file and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modernbert_edge.errors import UserError
from modernbert_edge.manifest import MODEL_FILE, read_manifest
from modernbert_edge.runtime.errors import ModelFolderError
from modernbert_edge.runtime.tasks import TASKS

CONFIG = "config.json"


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a model folder that the runtime uses (config.json field names where they exist)."""

    folder: Path
    task: str  # a key of runtime.tasks.TASKS
    precision: str  # fp32, int8, int4, ...
    model_path: Path  # folder / manifest["model_file"]
    outputs: tuple[str, ...]  # graph output names, as the manifest lists them
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int  # the longest input, special tokens included
    id2label: tuple[str, ...]  # labels in id order; () for tasks without labels
    problem_type: str | None  # config.json's: single_label_classification, multi_label_classification, regression
    pad_token_id: int  # the id written into padded positions (masked out, so any valid id works)
    cls_token_id: int | None
    manifest: dict = field(compare=False, repr=False)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelFolderError(f"{path.parent} has no {path.name} ({what}): the folder is incomplete; export it again.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path} could not be read ({e}); the folder may be corrupt.") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} does not hold a JSON object; the folder may be corrupt.")
    return data


def _int(value: object, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelFolderError(f"{path} has no valid {name} (got {value!r}).")
    return value


def read_folder(model_dir: str | Path) -> ModelInfo:
    """Read and check a model folder's manifest and config (not the model file or the tokenizer)."""
    folder = Path(model_dir).expanduser()
    try:
        manifest = read_manifest(folder)
    except UserError as e:
        raise ModelFolderError(str(e)) from None
    return folder_info(folder, manifest)


def folder_info(folder: Path, manifest: dict) -> ModelInfo:
    """ModelInfo from a manifest (read from the folder, or made for a folder without one) and config.json."""
    manifest_path = folder / "manifest.json"
    task = manifest["task"]
    if task not in TASKS:
        raise ModelFolderError(
            f"{manifest_path} names task {task!r}, which this runtime does not run (it runs: {', '.join(TASKS)})."
        )
    model_path = folder / str(manifest.get("model_file") or MODEL_FILE)
    if not model_path.is_file():
        raise ModelFolderError(f"{folder} has no {model_path.name}: the folder is incomplete; export it again.")
    if model_path.stat().st_size == 0:
        raise ModelFolderError(f"{model_path} is empty: the folder is corrupt; export it again.")

    config = _read_json(folder / CONFIG, "the checkpoint's config")
    summary = manifest.get("config") or {}

    def setting(name: str) -> int:
        return _int(summary.get(name, config.get(name)), name, manifest_path)

    outputs = tuple(manifest.get("outputs") or TASKS[task].outputs)
    labels: tuple[str, ...] = ()
    if TASKS[task].labelled:
        raw = config.get("id2label") or {}
        try:
            by_id = {int(k): str(v) for k, v in raw.items()}
        except (AttributeError, ValueError):
            raise ModelFolderError(f"{folder / CONFIG} has an id2label that is not a map of ids to labels.") from None
        n = len(by_id) or int(config.get("num_labels") or 0)
        if sorted(by_id) != list(range(len(by_id))):
            raise ModelFolderError(f"{folder / CONFIG}'s id2label ids are not 0..{len(by_id) - 1}.")
        labels = tuple(by_id.get(i, f"LABEL_{i}") for i in range(n))
    pad = config.get("pad_token_id")
    cls = config.get("cls_token_id")
    return ModelInfo(
        folder=folder,
        task=task,
        precision=str(manifest.get("precision", "fp32")),
        model_path=model_path,
        outputs=outputs,
        hidden_size=setting("hidden_size"),
        vocab_size=setting("vocab_size"),
        max_position_embeddings=setting("max_position_embeddings"),
        id2label=labels,
        problem_type=config.get("problem_type"),
        pad_token_id=pad if isinstance(pad, int) and 0 <= pad else 0,
        cls_token_id=cls if isinstance(cls, int) and 0 <= cls else None,
        manifest=manifest,
    )
