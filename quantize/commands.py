"""CLI commands of the quantizer: `mbedge quantize` and `mbedge compare`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.cli_options import ENGINE_DEFAULT, EngineOpt, File, plain
from modernbert_edge.errors import UserError


class Mode(StrEnum):
    """quantize.quantizer.MODES (a test checks they agree; the quantizer imports onnx)."""

    INT8 = "int8"
    INT8_STATIC = "int8-static"
    INT4 = "int4"


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("quantizing needs the export extra (onnx): pip install 'modernbert-edge[export]'.") from None


def _gate_engine(engine: str, precision: str, model_dir: Path) -> str:
    """The engine the gate runs: `engine`, or for "auto" the one runtime.engines.choose_engine picks for
    the folder this writes (model_dir's export, at `precision`); onnxruntime for a folder made elsewhere."""
    if engine != "auto":
        return engine
    from types import SimpleNamespace

    from modernbert_edge.manifest import read_manifest
    from modernbert_edge.runtime.engines import choose_engine

    try:
        manifest = read_manifest(model_dir)
    except UserError:  # a folder made elsewhere: onnxruntime's dynamic int8, run by onnxruntime
        return "onnxruntime"
    written = SimpleNamespace(manifest=manifest, precision=precision, task=manifest.get("task"))  # as ModelInfo
    return choose_engine(written, engine)


def quantize_cmd(
    model_dir: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL_DIR", help="fp32 model folder written by mbedge export, or an ONNX folder made elsewhere."
        ),
    ],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Model folder to write.")],
    mode: Annotated[
        Mode, typer.Option(help="int8 (dynamic), int8-static (QDQ; OpenVINO runs it) or int4 (MatMulNBits).")
    ] = Mode.INT8,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration texts: one per line, or JSONL with a 'text' field.")
    ] = None,
    min_cosine: Annotated[float, typer.Option(help="Fail when the worst token's cosine to fp32 is lower.")] = 0.99,
    force: Annotated[bool, typer.Option(help="Write the model even when it fails the fidelity gate.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
    keep_float: Annotated[
        list[str] | None,
        typer.Option(help="Leave this projection in fp32 (e.g. /model/layers.0/attn/Wqkv); repeatable."),
    ] = None,
    engine: EngineOpt = ENGINE_DEFAULT,
    file: File = None,
) -> None:
    """Quantize a model folder and measure it against fp32 (exit 2, nothing written, below --min-cosine).

    An ONNX folder made elsewhere (optimum, Hub onnx/) gets onnxruntime's dynamic int8 (--mode int8 only).
    The fidelity gate runs the quantized model on --engine, the engine that will run it (auto: the one
    `mbedge run` would pick for the folder written)."""
    _need_onnx()
    from modernbert_edge.quantize.fidelity import check_min_cosine
    from modernbert_edge.quantize.quantizer import quantize

    check_min_cosine(min_cosine)
    _check_calibration(calibration)
    manifest = quantize(
        model_dir,
        out_dir,
        mode=plain(mode),
        calibration=calibration,
        min_cosine=min_cosine,
        force=force,
        overwrite=overwrite,
        keep_float=keep_float or (),
        log=_log,
        engine=_gate_engine(plain(engine), plain(mode), model_dir),
        file=file,
    )
    typer.echo(f"{manifest['precision']} {manifest['task']}: {out_dir / manifest['model_file']}")
    if manifest["fidelity"]["gate"]["status"] != "passed":  # only reachable with --force
        typer.echo("warning: written with --force although it fails the fidelity gate.", err=True)


def _check_calibration(calibration: Path | None) -> None:
    """--calibration names a file of texts, or one sentence says what it names instead."""
    if calibration is None or calibration.is_file():
        return
    if calibration.is_dir():
        raise UserError(f"calibration file {calibration} is a folder; give a file of texts.")
    raise UserError(f"calibration file {calibration} does not exist.")


def compare_cmd(
    model_a: Annotated[Path, typer.Argument(metavar="MODEL_A", help="Reference model folder (usually fp32).")],
    model_b: Annotated[Path, typer.Argument(metavar="MODEL_B", help="Model folder to measure against it.")],
    calibration: Annotated[Path | None, typer.Option(help="Texts to compare on (default: the built-in set).")] = None,
    engine: EngineOpt = ENGINE_DEFAULT,
) -> None:
    """Print the fidelity report of MODEL_B against MODEL_A (token cosine, head agreement, logits)."""
    _need_onnx()
    _check_calibration(calibration)
    from modernbert_edge.quantize.calibration import load_data
    from modernbert_edge.quantize.fidelity import compare_models, format_report, load_model

    a, manifest_a = load_model(model_a)
    b, manifest_b = load_model(model_b)
    if manifest_a["task"] != manifest_b["task"]:
        raise UserError(f"{model_a} is a {manifest_a['task']} model and {model_b} a {manifest_b['task']} model.")
    data = load_data(model_a, manifest_a, calibration)
    engine_b = _gate_engine(plain(engine), manifest_b.get("precision", ""), model_b)
    report = compare_models(a, b, manifest_a["task"], data, progress=_log, engine=engine_b)
    title = f"{manifest_b.get('precision', '?')} vs {manifest_a.get('precision', '?')} ({manifest_a['task']})"
    typer.echo(format_report(report, title))
