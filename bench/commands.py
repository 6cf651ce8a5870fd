"""CLI command of the benchmark: `mbedge bench`."""

from __future__ import annotations

import os
import shlex
import sys
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.cli_options import ENGINE_DEFAULT, EngineOpt, Threads, plain
from modernbert_edge.errors import UserError

DEFAULT_WORK = Path.home() / ".cache" / "modernbert-edge" / "bench"


def _log(msg: str) -> None:
    typer.echo(msg, err=True)


class Size(StrEnum):
    BASE = "base"
    TINY = "tiny"


RACE_SCHEMA = "mbedge.bench.race/1"  # results.json of the peer race; folders: bench.folders.SCHEMA
RACE_OPTIONS = (
    "checkpoint",
    "size",
    "jobs",
    "shapes",
    "systems",
    "work",
    "lower_bound",
    "max_seconds",
    "prepare_only",
    "skip",
)
FOLDER_OPTIONS = ("input_file", "batch_sizes", "engine", "reference", "task", "progress")


def bench_cmd(
    ctx: typer.Context,
    model_dirs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Model folders to compare (any folder `mbedge run` takes, or an .onnx file in a folder made "
            "elsewhere); without them, the synthetic peer race on a random checkpoint (--size ...).",
            show_default=False,
            metavar="MODEL_DIR",
        ),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help="Folders: texts, one per line or JSONL with a text field (default: built-in texts)."
        ),
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Folders: comma-separated texts per call.")] = "1,8,32",
    engine: EngineOpt = ENGINE_DEFAULT,
    reference: Annotated[
        Path | None, typer.Option(help="Folders: fidelity against this folder (default: the first MODEL_DIR).")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="Folders: the task to run on every folder; 'embed' on folders whose graph outputs hidden states "
            "compares their embeddings."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Folders: progress on stderr.")] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Peer race: Hugging Face checkpoint folder; default: a random checkpoint of --size per job."),
    ] = None,
    size: Annotated[
        Size, typer.Option(help="Peer race: random checkpoint size: base (ModernBERT-base shape) or tiny.")
    ] = Size.BASE,
    jobs: Annotated[str, typer.Option(help="Peer race: comma-separated: embeddings, fill-mask, classification.")] = (
        "embeddings,fill-mask,classification"
    ),
    shapes: Annotated[str, typer.Option(help="Peer race: comma-separated BxS shapes and/or 'mixed'.")] = (
        "1x128,8x128,1x512,1x2048,1x8192,mixed"
    ),
    systems: Annotated[
        str,
        typer.Option(
            help="Peer race: comma-separated: pytorch, pytorch-int8, trace-fp32, trace-int8, optimum-int8, ours-fp32, "
            "ours-int8, ours-int4, ours-openvino-int8 (unavailable ones are skipped with a note)."
        ),
    ] = "pytorch,pytorch-int8,trace-fp32,trace-int8,optimum-int8,ours-fp32,ours-int8,ours-int4,ours-openvino-int8",
    repeats: Annotated[
        int, typer.Option(help="Timed rounds per shape (folders: per batch size), after one warm-up run.")
    ] = 5,
    threads: Threads = None,
    out: Annotated[Path, typer.Option(help="Where results.json, results.md and chart.png go.")] = Path("bench-results"),
    work: Annotated[Path, typer.Option(help="Peer race: cache of built checkpoints and model files.")] = DEFAULT_WORK,
    lower_bound: Annotated[
        bool, typer.Option(help="Peer race: also time the int8-GEMM-only lower-bound graph.")
    ] = True,
    max_seconds: Annotated[
        float, typer.Option(help="Peer race: a system whose warm-up run takes longer is timed once (the warm-up).")
    ] = 60.0,
    prepare_only: Annotated[
        bool, typer.Option(help="Peer race: build every system's files into --work and stop.")
    ] = False,
    skip: Annotated[
        str, typer.Option(help="Peer race: comma-separated system@shape pairs not to run, e.g. trace-int8@1x8192.")
    ] = "",
) -> None:
    """Compare model folders on your texts (speed, memory, fidelity), or race peers on a random checkpoint.

    Without MODEL_DIR, race PyTorch, plain ONNX export + quantize_dynamic, optimum and this project on a
    random checkpoint (--size, --jobs, --shapes, --systems).
    """
    given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    if model_dirs:
        stray = [_flag(n) for n in RACE_OPTIONS if n in given]
        if stray:
            raise UserError(f"{', '.join(stray)} {_verb(stray)} to the peer race (no MODEL_DIR), not to model folders.")
        folders_cmd(model_dirs, input_file, batch_sizes, engine, reference, task, progress, repeats, threads, out)
        return
    stray = [_flag(n) for n in FOLDER_OPTIONS if n in given]
    if stray:
        raise UserError(f"{', '.join(stray)} {_verb(stray)} to model folders: name them (mbedge bench MODEL_DIR ...).")
    _need_race_packages()
    from modernbert_edge.bench import harness, report
    from modernbert_edge.bench import systems as sysmod
    from modernbert_edge.runtime.options import check_threads

    check_threads(threads)
    threads = threads or physical_cores()  # torch.set_num_threads needs the number the runtime's 0 means

    if checkpoint is not None and not (checkpoint / "config.json").is_file():
        raise UserError(f"checkpoint folder {checkpoint} has no config.json.")
    size = plain(size)
    if repeats < 1:
        raise UserError("--repeats must be at least 1.")
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
    typer.echo(report.markdown(results))
    for t in results["targets"]:
        typer.echo(f"target {t['line']}")
    typer.echo("wrote " + ", ".join(str(p) for p in files.values()))


RACE_PACKAGES = ("torch", "transformers", "onnx")


def _need_race_packages() -> None:
    """The peer race builds a random checkpoint and runs PyTorch: without its packages, one sentence."""
    import importlib.util

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True

    missing = [name for name in RACE_PACKAGES if absent(name)]
    if missing:
        raise UserError(
            f"the peer race (mbedge bench without MODEL_DIR) needs {', '.join(missing)}: install the dev extra, "
            "pip install 'modernbert-edge[dev]', or name model folders to compare (mbedge bench MODEL_DIR ...)."
        )


def physical_cores() -> int:
    """Physical cores (psutil's count; the logical count where psutil cannot tell)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _verb(flags: list[str]) -> str:
    return "applies" if len(flags) == 1 else "apply"


def _flag(name: str) -> str:
    return {"input_file": "--input", "lower_bound": "--lower-bound"}.get(name, "--" + name.replace("_", "-"))


def folders_cmd(
    model_dirs: list[str],
    input_file: Path | None,
    batch_sizes: str,
    engine: str | Enum,
    reference: Path | None,
    task: str | None,
    progress: bool,
    repeats: int,
    threads: int | None,
    out: Path,
) -> None:
    """`mbedge bench MODEL_DIR ...`: the folders on texts, interleaved (bench/folders.py); prints the table."""
    from modernbert_edge.bench import folder_report, folders, report
    from modernbert_edge.runtime.options import ENGINES, check_threads, choice

    if repeats < 1:
        raise UserError("--repeats must be at least 1.")
    check_threads(threads)
    engine = choice("engine", engine, ENGINES)
    if input_file is not None and not input_file.is_file():
        raise UserError(f"input file {input_file} does not exist.")
    sizes = folders.parse_batch_sizes(batch_sizes)
    targets = [folders.target(d) for d in model_dirs]
    ref = folders.target(str(reference)) if reference is not None else None
    for t, what in [*((t, "MODEL_DIR") for t in targets), *(((ref, "--reference"),) if ref else ())]:
        _check_folder(t.folder, t.label, what)
    load_start = folders.load_average()
    run_out = folders.run_folders(
        targets, sizes, input_file, repeats, threads, engine, task, ref, _log if progress else lambda _m: None
    )
    settings = {
        "folders": model_dirs,
        "reference": str(reference) if reference is not None else model_dirs[0],
        "batch_sizes": sizes,
        "repeats": repeats,
        "threads": threads,
        "engine": engine,
        "task": task,
    }
    results = folders.results_dict(run_out, settings, threads, load_start)
    typer.echo(folder_report.table(results))
    files = report.write_outputs(results, out, _log, folder_report.markdown, folder_report.chart)
    typer.echo("wrote " + ", ".join(str(p) for p in files.values()))
    failed = [f["folder"] for f in results["folders"] if f["error"]]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(results['folders'])} folders failed ({', '.join(failed)}): see the table."
        )


def _check_folder(folder: Path, label: str, what: str) -> None:
    """A model folder that is missing, not a folder or unreadable is refused before anything runs."""
    if not folder.exists():
        problem = "does not exist"
    elif not folder.is_dir():
        problem = "is not a folder"
    elif not os.access(folder, os.R_OK | os.X_OK):
        problem = "cannot be read"
    else:
        return
    raise UserError(
        f"{what} {label} {problem}: name a model folder (or an .onnx file in one) written by mbedge export or "
        "quantize, or made elsewhere."
    )


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
    from modernbert_edge.timing import machine

    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None

    def finish(results: dict, partial: bool) -> dict:
        results["schema"] = RACE_SCHEMA
        results["machine"] = machine(threads)
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
