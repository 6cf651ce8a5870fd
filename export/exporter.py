"""`mbedge export`: checkpoint folder -> model folder (model.onnx, config, tokenizer, manifest).

The folder is written to a temporary sibling and renamed into place only when everything,
validation included, has succeeded: a failed export leaves nothing behind. config.json is parsed
once and the weight files found once, here; the runtime loads the written folder once (prove.py),
and the parity check runs on that same session (validate.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnx

from modernbert_edge.contract import INPUTS, task_of_architecture
from modernbert_edge.errors import UserError
from modernbert_edge.export.builder import CONTRIB, OPSETS
from modernbert_edge.export.config import ModernBertConfig, read_config
from modernbert_edge.export.prove import prove_folder
from modernbert_edge.export.sentence import copy_sentence, read_sentence
from modernbert_edge.export.tasks import build_graph, choose_task
from modernbert_edge.folders import OutputFolder, package_versions, save_model
from modernbert_edge.manifest import FORMAT, MODEL_FILE, TOKENIZER_FILES, write_manifest
from modernbert_edge.safetensors import MissingTensorError, Weights, find_weight_files

FUSED_OPS = (
    "MultiHeadAttention",
    "GroupQueryAttention",
    "Attention",
    "RotaryEmbedding",
    "Gelu",
    "LayerNormalization",
)


def resolve_checkpoint(checkpoint: str) -> Path:
    """A local folder, or a Hub id downloaded with huggingface_hub when it is installed and reachable."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{checkpoint} is a file; pass the checkpoint folder that holds config.json.")
    # A Hub id is "owner/name"; a path with another shape, or whose first part is a local folder
    # (a typo in ckpts/mymodel), is a local path that does not exist, never a Hub lookup.
    parts = checkpoint.split("/")
    looks_like_hub_id = (
        len(parts) == 2
        and all(parts)
        and not checkpoint.startswith((".", "~"))
        and os.sep not in checkpoint.replace("/", "")
        and not (os.altsep and os.altsep != "/" and os.altsep in checkpoint)
        and not Path(parts[0]).exists()
    )
    if not looks_like_hub_id:
        raise UserError(f"checkpoint folder {checkpoint} does not exist.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"{checkpoint} is not a local folder, and huggingface_hub is not installed to fetch it."
        ) from None
    try:
        patterns = ["config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]
        return Path(snapshot_download(checkpoint, allow_patterns=patterns))
    except Exception as e:  # any Hub failure is the user's to fix (network, name, auth)
        raise UserError(f"{checkpoint} is not a local folder and could not be fetched from the Hub ({e}).") from None


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """The most of each fused op that one forward pass runs.

    Of an If, one branch runs: both branches are walked (recursively) and each op counts as often as
    in the branch that has more of it, so an op that only some batches take (GroupQueryAttention
    for long right-padded ones) is listed."""

    def walk(graph: onnx.GraphProto) -> Counter:
        counts = Counter(n.op_type for n in graph.node)
        for node in graph.node:
            if node.op_type == "If":
                then_counts, else_counts = (
                    walk(a.g) for a in node.attribute if a.name in ("then_branch", "else_branch")
                )
                counts += then_counts | else_counts  # Counter union: the larger count of each op
        return counts

    counts = walk(model.graph)
    return {op: counts[op] for op in FUSED_OPS if counts[op]}


def write_input_names(folder: Path, names: list[str]) -> None:
    """tokenizer_config.json lists the graph's inputs (model_input_names), so loaders build no others."""
    path = folder / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return  # none, or unreadable: prove_folder refuses the latter with its own sentence
    if isinstance(config, dict):
        config["model_input_names"] = list(names)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def export(
    checkpoint: str,
    out_dir: str | Path,
    task: str | None = None,
    overwrite: bool = False,
    validate: bool = True,
    log: Callable[[str], None] = print,
    ops: str = CONTRIB,
) -> dict:
    """Export a ModernBERT checkpoint folder to an ONNX model folder; returns the manifest.

    ops: "contrib" (ONNX Runtime's com.microsoft fused ops, the fastest there) or "portable"
    (standard opset-23 ops only, which OpenVINO also runs)."""
    out_dir = Path(out_dir)
    src = resolve_checkpoint(checkpoint)
    cfg, raw_config = read_config(src / "config.json")
    chosen = choose_task(cfg, task)
    files = find_weight_files(src)
    # Claimed before the (possibly long) build: refuses a source, an existing OUT_DIR, or a parent
    # that cannot hold the folder (the fp32 graph is at least as large as the weight files).
    target = OutputFolder(out_dir, overwrite, sources=[src], need_bytes=sum(f.stat().st_size for f in files))
    sentence = read_sentence(src, cfg.hidden_size) if chosen.name == "feature-extraction" else None
    t0 = time.perf_counter()
    weights = Weights(files)
    try:
        model, unused = build_graph(cfg, weights, chosen, ops)
    except MissingTensorError as e:
        raise _head_mismatch(cfg, chosen.name, e) if task is not None else e from None
    build_s = time.perf_counter() - t0
    log(f"built {chosen.name} graph: {len(model.graph.node)} nodes, {cfg.num_hidden_layers} layers ({build_s:.1f} s)")

    manifest = {
        "format": FORMAT,
        "task": chosen.name,
        "model_file": MODEL_FILE,
        "precision": "fp32",
        "opset": OPSETS[ops],
        "ops": ops,
        "inputs": list(INPUTS),
        "outputs": [name for name, _ in chosen.outputs],
        "fused_ops": fused_op_counts(model),
        "source": {
            "checkpoint": checkpoint if not Path(checkpoint).exists() else str(src.absolute()),
            "architectures": list(cfg.architectures),
            "ignored_tensors": unused,
        },
        "config": {
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "local_attention": cfg.local_attention,
            "layer_types": list(cfg.layer_types),
        },
        "tokenizer_files": [f for f in TOKENIZER_FILES if (src / f).is_file()],
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "validation": None,
    }
    if sentence is not None:
        manifest["sentence"] = sentence

    def fill(tmp: Path) -> None:
        save_model(model, tmp / MODEL_FILE)
        (tmp / "config.json").write_text(json.dumps(raw_config, indent=2) + "\n", encoding="utf-8")
        for f in manifest["tokenizer_files"]:
            shutil.copy2(src / f, tmp / f)
        copy_sentence(src, tmp, sentence)
        write_input_names(tmp, manifest["inputs"])
        write_manifest(tmp, manifest)
        loaded = prove_folder(tmp, cfg.vocab_size, cfg.max_position_embeddings)  # the one session
        if validate:
            from modernbert_edge.export.validate import validate_export

            manifest["validation"] = validate_export(src, loaded.run, cfg, chosen.name, log=log)
        else:
            manifest["validation"] = {"status": "skipped", "reason": "--no-validate"}
        write_manifest(tmp, manifest)

    target.write(fill)
    log(f"wrote {out_dir}")
    return manifest


def _head_mismatch(cfg: ModernBertConfig, task: str, missing: MissingTensorError) -> UserError:
    """--task names a head the checkpoint does not have: say which it has (config.architectures)."""
    for arch in cfg.architectures:
        has = task_of_architecture(arch)
        if has == "feature-extraction":
            return UserError(
                f"the checkpoint is a {arch}, an encoder with no {task} head (no tensor {missing.tensor!r}): "
                "export it without --task (feature-extraction)."
            )
        if has is not None and has != task:
            return UserError(
                f"the checkpoint is a {arch} ({has}), with no {task} head (no tensor {missing.tensor!r}): drop "
                f"--task to export it as {has}, or pass --task feature-extraction for its encoder alone."
            )
    return missing
