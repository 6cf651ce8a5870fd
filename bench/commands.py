"""CLI command of the benchmark: `mbedge bench`."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.errors import UserError

DEFAULT_WORK = Path.home() / ".cache" / "modernbert-edge" / "bench"


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


def bench_cmd(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Hugging Face checkpoint folder; default: a random checkpoint of --size per job."),
    ] = None,
    size: Annotated[str, typer.Option(help="Random checkpoint size: base (ModernBERT-base shape) or tiny.")] = "base",
    jobs: Annotated[str, typer.Option(help="Comma-separated: embeddings, fill-mask, classification.")] = (
        "embeddings,fill-mask,classification"
    ),
    shapes: Annotated[str, typer.Option(help="Comma-separated BxS shapes and/or 'mixed'.")] = (
        "1x128,8x128,1x512,1x2048,1x8192,mixed"
    ),
    systems: Annotated[
        str,
        typer.Option(
            help="Comma-separated: pytorch, pytorch-int8, trace-fp32, trace-int8, optimum-int8, ours-fp32, "
            "ours-int8, ours-int4, ours-openvino-int8 (unavailable ones are skipped with a note)."
        ),
    ] = "pytorch,pytorch-int8,trace-fp32,trace-int8,optimum-int8,ours-fp32,ours-int8,ours-int4,ours-openvino-int8",
    repeats: Annotated[int, typer.Option(help="Timed rounds per shape, after one warm-up run.")] = 5,
    threads: Annotated[int, typer.Option(help="Threads per system (ORT intra-op, torch.set_num_threads).")] = 2,
    out: Annotated[Path, typer.Option(help="Where results.json, results.md and chart.png go.")] = Path("bench-results"),
    work: Annotated[Path, typer.Option(help="Cache of built checkpoints and model files.")] = DEFAULT_WORK,
    lower_bound: Annotated[bool, typer.Option(help="Also time the int8-GEMM-only lower-bound graph.")] = True,
    max_seconds: Annotated[
        float, typer.Option(help="A system whose warm-up run takes longer is timed once (the warm-up).")
    ] = 60.0,
    prepare_only: Annotated[bool, typer.Option(help="Build every system's files into --work and stop.")] = False,
    skip: Annotated[
        str, typer.Option(help="Comma-separated system@shape pairs not to run, e.g. trace-int8@1x8192.")
    ] = "",
) -> None:
    """Time PyTorch, plain ONNX export + quantize_dynamic, optimum and this project side by side."""
    from modernbert_edge.bench import harness, report
    from modernbert_edge.bench import systems as sysmod

    if checkpoint is not None and not (checkpoint / "config.json").is_file():
        raise UserError(f"checkpoint folder {checkpoint} has no config.json.")
    if size not in ("base", "tiny"):
        raise UserError(f"--size must be base or tiny, got {size!r}.")
    if repeats < 1 or threads < 1:
        raise UserError("--repeats and --threads must be at least 1.")
    job_list = harness.parse_list(jobs, harness.JOBS, "job")
    system_list = harness.parse_list(systems, list(sysmod.SYSTEMS), "system")
    shape_list = harness.parse_shapes(shapes)
    results = run(
        job_list, shape_list, system_list, checkpoint, size, repeats, threads, work, lower_bound, max_seconds,
        prepare_only, [p.strip() for p in skip.split(",") if p.strip()], out,
    )  # fmt: skip
    if prepare_only:
        typer.echo(f"prepared {work}" + "".join(f"\nnote: {n}" for n in results["notes"]))
        return
    files = report.write_outputs(results, out, _log)
    for t in results["targets"]:
        typer.echo(f"target {t['line']}")
    typer.echo("wrote " + ", ".join(str(p) for p in files.values()))


def run(
    jobs: list[str],
    shapes: list,
    systems: list[str],
    checkpoint: Path | None,
    size: str,
    repeats: int,
    threads: int,
    work: Path,
    lower_bound: bool,
    max_seconds: float,
    prepare_only: bool = False,
    skip: list[str] | None = None,
    partial_out: Path | None = None,
) -> dict:
    """Run the benchmark and return the results dict that report.write_outputs writes (and, with
    partial_out, write the outputs so far there after every shape, marked partial)."""
    from modernbert_edge.bench import harness, report

    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None

    def finish(results: dict, partial: bool) -> dict:
        results["machine"] = report.machine(threads)
        results["machine"]["load_average_start"] = load_start
        results["command"] = "mbedge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        results["jobs"] = jobs
        results["partial"] = partial
        results["settings"] = {
            "shapes": [s.label for s in shapes],
            "systems": systems,
            "repeats": repeats,
            "skip": skip or [],
            "threads": threads,
            "checkpoint": str(checkpoint) if checkpoint else f"random {size}",
            "mixed": {
                "texts": harness.MIXED_TEXTS,
                "min_tokens": harness.MIXED_MIN,
                "max_tokens": harness.MIXED_MAX,
                "seed": harness.MIXED_SEED,
                "input_order_batch_rows": harness.MIXED_BATCH_ROWS,
            },
        }
        results["targets"] = report.check_targets(results["rows"])
        return results

    def on_shape(so_far: dict) -> None:
        if partial_out is not None:
            report.write_outputs(finish(dict(so_far), partial=True), partial_out, _log)

    results = harness.run_bench(
        jobs,
        shapes,
        systems,
        checkpoint=checkpoint,
        size=size,
        repeats=repeats,
        threads=threads,
        work=work,
        lower_bound=lower_bound,
        max_seconds=max_seconds,
        prepare_only=prepare_only,
        skip=skip or [],
        on_shape=on_shape,
        log=_log,
    )
    return finish(results, partial=False)
