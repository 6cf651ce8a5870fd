"""CLI commands of the exporter: `mbedge export` and `mbedge parity`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.errors import UserError


class Ops(StrEnum):
    """export.builder.OPSETS (a test checks they agree; the builder imports onnx)."""

    CONTRIB = "contrib"
    PORTABLE = "portable"


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def export_cmd(
    checkpoint: Annotated[
        str, typer.Argument(metavar="CHECKPOINT", help="Hugging Face checkpoint folder (or Hub id, when reachable).")
    ],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Model folder to write.")],
    task: Annotated[
        str | None,
        typer.Option(
            help="feature-extraction, fill-mask, text-classification, token-classification, "
            "question-answering; default: from config.architectures."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
    validate: Annotated[bool, typer.Option(help="Check the graph against PyTorch after export.")] = True,
    ops: Annotated[
        Ops,
        typer.Option(
            help="contrib: ONNX Runtime's fused com.microsoft ops (fastest there); "
            "portable: standard ONNX opset-23 ops only, for other engines (OpenVINO)."
        ),
    ] = Ops.CONTRIB,
) -> None:
    """Build a fused-op ONNX graph from a ModernBERT checkpoint, checked against PyTorch."""
    try:
        from modernbert_edge.export.exporter import export
    except ImportError as e:
        raise UserError(
            f"exporting needs the export extra ({e.name} is missing): pip install 'modernbert-edge[export]'."
        ) from None
    manifest = export(checkpoint, out_dir, task=task, overwrite=overwrite, validate=validate, log=_log, ops=ops.value)
    typer.echo(f"{manifest['task']}: {out_dir / manifest['model_file']}")


def parity_cmd(
    checkpoint: Annotated[
        str, typer.Argument(metavar="CHECKPOINT", help="The Hugging Face checkpoint folder the model came from.")
    ],
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="Model folder written by mbedge export.")],
    atol: Annotated[float | None, typer.Option(help="Tolerance; default: the task's (1e-4).")] = None,
) -> None:
    """Compare an exported model folder with its PyTorch checkpoint on several batches."""
    from modernbert_edge.export.config import read_config
    from modernbert_edge.export.exporter import resolve_checkpoint
    from modernbert_edge.export.validate import reference_available, validate_export
    from modernbert_edge.runtime.loader import load
    from modernbert_edge.safetensors import find_weight_files

    if not reference_available():
        raise UserError("mbedge parity needs torch and transformers: pip install 'modernbert-edge[dev]'.")
    model = load(model_dir)
    src = resolve_checkpoint(checkpoint)
    find_weight_files(src)  # safetensors only: nothing is ever unpickled
    cfg, _ = read_config(src / "config.json")
    result = validate_export(src, model.run, cfg, model.task, log=_log, atol=atol)
    typer.echo(f"max abs diff {result['max_abs_diff']:.3e} <= {result['atol']:.0e}: {result['status']}")
