"""What a model folder holds: manifest.json, config.json and the model file, read and checked
(`read_folder`; a folder made elsewhere: `foreign_info`, from its graph's outputs), then checked
against the graph the model file holds (`check_graph`).

Written by `mbedge export` (and `mbedge quantize`, which may name another model file: always use
manifest["model_file"]). Every problem is a ModelFolderError that names the file and what to do.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modernbert_edge.cpu import cpu_info
from modernbert_edge.errors import UserError
from modernbert_edge.manifest import MODEL_FILE, read_manifest
from modernbert_edge.runtime.errors import ModelFolderError
from modernbert_edge.runtime.foreign import foreign_manifest
from modernbert_edge.runtime.sentence import Embedder
from modernbert_edge.runtime.tasks import FOLDER_TASKS, TASKS

if TYPE_CHECKING:
    from modernbert_edge.runtime.session import Session
    from modernbert_edge.runtime.tokenize import TextTokenizer

CONFIG = "config.json"
# The dimensions of each folder task's first output (DESIGN.md, Contract): per token, or per input.
OUTPUT_RANK = {"feature-extraction": 3, "fill-mask": 3, "token-classification": 3, "text-classification": 2,
               "question-answering": 2}  # fmt: skip


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a model folder that the runtime uses (config.json field names where they exist)."""

    folder: Path
    task: str  # a key of runtime.tasks.FOLDER_TASKS
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
    sentence: Embedder = field(default_factory=Embedder, compare=False, repr=False)  # embeddings after the encoder
    activation: str | None = None  # a cross-encoder's score activation, as its config.json names it


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
    for key, kind, what in (
        ("config", dict, "an object"),
        ("outputs", list, "a list"),
        ("sentence", dict, "an object"),
    ):
        if manifest.get(key) is not None and not isinstance(manifest[key], kind):
            raise ModelFolderError(f"{manifest_path}'s {key!r} must be {what}: the folder is corrupt; export it again.")
    if not all(isinstance(o, str) for o in manifest.get("outputs") or ()):
        raise ModelFolderError(f"{manifest_path}'s 'outputs' must be a list of names: the folder is corrupt.")
    if not isinstance(task, str) or task not in FOLDER_TASKS:
        raise ModelFolderError(
            f"{manifest_path} names task {task!r}, which this runtime does not run "
            f"(it runs: {', '.join(FOLDER_TASKS)})."
        )
    model_path = folder / str(manifest.get("model_file") or MODEL_FILE)
    if not model_path.is_file():
        raise ModelFolderError(f"{folder} has no {model_path.name}: the folder is incomplete; export it again.")
    check_inside(
        folder, model_path, model_path.with_name(model_path.name + ".data"), folder / "tokenizer.json", folder / CONFIG
    )
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
        pad_token_id=pad if _token_id(pad, setting("vocab_size")) else 0,
        cls_token_id=cls if _token_id(cls, setting("vocab_size")) else None,
        manifest=manifest,
        sentence=_sentence(folder, manifest),
        activation=_activation(config),
    )


def _token_id(value: object, vocab_size: int) -> bool:
    """Whether a config.json token id is an id of the vocabulary (else the runtime's default is used)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size


def _sentence(folder: Path, manifest: dict) -> Embedder:
    """The manifest's sentence-transformers section; a section of the wrong shape is one sentence."""
    try:
        return Embedder.from_manifest(folder, manifest.get("sentence"))
    except (TypeError, KeyError, AttributeError, ValueError, IndexError):
        raise ModelFolderError(
            f"{folder / 'manifest.json'}'s 'sentence' section is not what mbedge export writes: "
            "the folder is corrupt; export it again."
        ) from None


def _activation(config: dict) -> str | None:
    """The activation a sentence-transformers CrossEncoder's config.json names, if any."""
    section = config.get("sentence_transformers")
    named = (section if isinstance(section, dict) else {}).get("activation_fn")
    named = named or config.get("sbert_ce_default_activation_function")
    return str(named) if named else None


def foreign_info(folder: Path, model_file: str, session: Session) -> ModelInfo:
    """A folder made elsewhere (no manifest.json), read from its model file's graph and config.json."""
    return folder_info(folder, foreign_manifest(folder, model_file, session.output_shapes))


def check_graph(info: ModelInfo, session: Session) -> ModelInfo:
    """The graph's outputs are the task's, with the sizes config.json gives; fills id2label if absent."""
    spec = TASKS[info.task]
    where = info.model_path
    if set(session.output_names) != set(info.outputs) or not set(spec.outputs) <= set(session.output_names):
        raise ModelFolderError(
            f"{where} has outputs {session.output_names}, but the manifest says {list(info.outputs)} "
            f"and a {info.task} model needs {list(spec.outputs)}: the folder is inconsistent; export it again."
        )
    shape = session.output_shapes[spec.outputs[0]]
    rank = OUTPUT_RANK.get(info.task)
    if rank is not None and len(shape) != rank:
        raise ModelFolderError(
            f"{where}'s {spec.outputs[0]} output has {len(shape)} dimensions {shape}, but a {info.task} model's has "
            f"{rank}: the manifest names the wrong task; export it again."
        )
    last = shape[-1]
    expected = spec.head_size(info)
    if isinstance(last, int) and expected is not None and last != expected:
        raise ModelFolderError(
            f"{where}'s {spec.outputs[0]} output has size {last}, but config.json implies {expected} "
            "(hidden_size, vocab_size or id2label): the folder is inconsistent; export it again."
        )
    if spec.labelled and not info.id2label:
        if not isinstance(last, int):
            raise ModelFolderError(
                f"{info.folder / 'config.json'} has no id2label, and the graph does not say how many labels."
            )
        info = dataclasses.replace(info, id2label=tuple(f"LABEL_{i}" for i in range(last)))
    return info


def check_inside(folder: Path, *paths: Path) -> None:
    """A ModelFolderError unless each of paths that exists resolves (symbolic links followed) inside folder."""
    root = folder.resolve()
    for path in paths:
        if path.exists() and not path.resolve().is_relative_to(root):
            raise ModelFolderError(
                f"{path} is a link to {path.resolve()}, outside the model folder: a model folder's files "
                "must lie inside it."
            )


def describe(info: ModelInfo, session: Session, tok: TextTokenizer | None, max_length: int) -> dict:
    """What a loaded folder holds, for `mbedge info` (JSON-friendly)."""
    m = info.manifest
    validation = m.get("validation") or {}
    return {
        "folder": str(info.folder),
        "task": info.task,
        "precision": info.precision,
        "model_file": info.model_path.name,
        "model_bytes": model_bytes(info.model_path),
        "inputs": list(session.input_names),
        "outputs": {name: session.output_shapes[name] for name in session.output_names},
        "config": dict(m.get("config") or {}),
        "labels": list(info.id2label),
        "problem_type": info.problem_type,
        "tokenizer": None
        if tok is None
        else {"file": "tokenizer.json", "vocab_size": tok.max_id + 1, "mask_token": tok.mask_token},
        "max_length": max_length,
        "validation": {k: validation[k] for k in ("status", "max_abs_diff", "atol", "reason") if k in validation},
        "source": (m.get("source") or {}).get("checkpoint"),
        "sentence": m.get("sentence"),
        "cpu": cpu_info().to_dict(),
    }


def model_bytes(model_path: Path) -> int:
    """The model file's size, with its external-data file when it has one (model.onnx_data, as optimum
    names it; model.onnx.data, as this project named it before)."""
    data = [model_path.with_name(model_path.name + suffix) for suffix in ("_data", ".data")]
    return model_path.stat().st_size + sum(d.stat().st_size for d in data if d.is_file())
