"""CLI commands of the runtime: `mbedge run` and `mbedge info`.

This module is imported whenever `mbedge` starts (for --help), so it imports only typer and the
option definitions (modernbert_edge/cli_options.py, runtime/options.py: no numpy, onnxruntime or
tokenizers); the runtime itself is imported when a command runs. Inputs are read by inputs.py and
run and written by stream.py.

    run_cmd (the flags) ─ run(model_dir, RunInput, LoadOptions, TaskOptions, RunOutput)
                        ─ load(**LoadOptions) ─ the task's options checked ─ read_inputs ─ run_items
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from modernbert_edge.cli_options import (
    BATCH_ROWS_DEFAULT,
    BATCH_TOKENS_DEFAULT,
    ENGINE_DEFAULT,
    MAX_PADDING_DEFAULT,
    SPINNING_DEFAULT,
    TRUNCATION_DEFAULT,
    AggregationOpt,
    BatchRows,
    BatchTokens,
    Dim,
    EngineOpt,
    File,
    LoadOptions,
    MaxLength,
    MaxPadding,
    ModelDir,
    Normalize,
    PoolingOpt,
    PromptName,
    SpinningOpt,
    TaskOptions,
    Threads,
    TopK,
    TruncationOpt,
    plain,
)
from modernbert_edge.errors import UserError
from modernbert_edge.runtime.options import InputFormat, OnError


@dataclass(frozen=True)
class RunInput:
    """Where `mbedge run` reads its inputs: the arguments, else --input, else stdin."""

    texts: list[str] | None
    file: Path | None
    format: InputFormat
    question: str | None  # question answering: the question for every context


@dataclass(frozen=True)
class RunOutput:
    """What `mbedge run` does with bad inputs and progress."""

    on_error: OnError
    progress: bool | None  # None: on a terminal, for long inputs


def run_cmd(
    model_dir: ModelDir,
    texts: Annotated[
        list[str] | None, typer.Argument(metavar="TEXT", help="Texts to run; without them, --input or stdin is read.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="One text per line, or JSONL with a text field ('-' for stdin); UTF-8."),
    ] = None,
    input_format: Annotated[
        InputFormat, typer.Option("--format", help="auto: JSONL when the first line is an object.")
    ] = InputFormat.AUTO,
    task: Annotated[
        str | None,
        typer.Option(
            help="Check the folder's task ('embed' on any folder with hidden states, 'rerank' on a cross-encoder)."
        ),
    ] = None,
    top_k: TopK = None,
    pooling: PoolingOpt = None,
    normalize: Normalize = None,
    prompt_name: PromptName = None,
    dim: Dim = None,
    aggregation: AggregationOpt = None,
    question: Annotated[
        str | None, typer.Option(help="Question answering: the question for every context text.")
    ] = None,
    max_answer_len: Annotated[
        int | None, typer.Option(help="Question answering: longest answer in tokens (15).")
    ] = None,
    batch_tokens: BatchTokens = BATCH_TOKENS_DEFAULT,
    batch_rows: BatchRows = BATCH_ROWS_DEFAULT,
    max_padding: MaxPadding = MAX_PADDING_DEFAULT,
    threads: Threads = None,
    spinning: SpinningOpt = SPINNING_DEFAULT,
    engine: EngineOpt = ENGINE_DEFAULT,
    truncation: TruncationOpt = TRUNCATION_DEFAULT,
    max_length: MaxLength = None,
    on_error: Annotated[OnError, typer.Option(help="A bad input: skip (report it, go on) or stop.")] = OnError.SKIP,
    progress: Annotated[
        bool | None, typer.Option(help="Progress on stderr (default: on a terminal, for long inputs).")
    ] = None,
    file: File = None,
) -> None:
    """Run a model folder's task on texts; write one JSON line per input to stdout."""
    run(
        model_dir,
        task,
        RunInput(texts, input_file, input_format, question),
        LoadOptions(threads, engine, spinning, truncation, max_length, batch_tokens, batch_rows, max_padding, file),
        TaskOptions(top_k, pooling, normalize, prompt_name, dim, aggregation, max_answer_len),
        RunOutput(on_error, progress),
    )


def run(
    model_dir: Path,
    task: str | None,
    source: RunInput,
    load_options: LoadOptions,
    task_options: TaskOptions,
    output: RunOutput,
) -> None:
    """`mbedge run`: load the folder, check the task's options, then read, run and write input by input."""
    from modernbert_edge.runtime.inputs import line_cap, read_inputs
    from modernbert_edge.runtime.loader import load
    from modernbert_edge.runtime.stream import PROGRESS_ABOVE, Progress, run_items
    from modernbert_edge.runtime.tokenize import CHARS_PER_TOKEN

    if source.texts and source.file is not None:
        raise UserError("pass texts as arguments or with --input, not both.")
    model = load(model_dir, **load_options.kwargs())
    spec = model.resolve_task(task)
    options = task_options.given()
    spec.with_options(options)  # the task's one check: unknown options and values, before any input is read
    if source.question is not None and not (spec.pair and spec.expand is None):
        raise UserError(f"{spec.name} takes no option --question (question-answering and text pairs do).")

    cap = line_cap(CHARS_PER_TOKEN * model.max_length, texts_per_line=2 if spec.pair else 1)
    items, total_known = read_inputs(source.texts, source.file, plain(source.format), spec, source.question, cap)
    long_input = total_known is None or total_known > PROGRESS_ABOVE
    shown = output.progress if output.progress is not None else (sys.stderr.isatty() and long_input)
    bar = Progress(total_known, shown)
    try:
        total, failed = run_items(model, items, spec, options, plain(output.on_error), bar)
    finally:
        bar.close()
    if total == 0:
        raise UserError("no input: the input was empty.")
    if failed:
        raise UserError(
            f"{failed} of {total} inputs failed (see above)"
            + ("." if failed == total else "; the others were written.")
        )


def info_cmd(
    model_dir: ModelDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    engine: EngineOpt = ENGINE_DEFAULT,
    file: File = None,
) -> None:
    """Load a model folder (checking it) and print what it holds."""
    from modernbert_edge.cpu import cpu_info
    from modernbert_edge.runtime.loader import load

    info = load(model_dir, engine=plain(engine), file=file).describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    cfg = info["config"]
    outputs = ", ".join(f"{name} {shape}" for name, shape in info["outputs"].items())
    tok = info["tokenizer"]
    rows = [
        ("folder", info["folder"]),
        ("task", info["task"]),
        ("precision", info["precision"]),
        ("engine", info["engine"]),
        ("model file", f"{info['model_file']} ({info['model_bytes'] / 1e6:.1f} MB)"),
        ("inputs", ", ".join(info["inputs"])),
        ("outputs", outputs),
        (
            "config",
            ", ".join(
                f"{k.replace('_', ' ')} {cfg[k]}"
                for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "local_attention")
                if k in cfg
            ),
        ),
        ("max length", f"{info['max_length']} tokens"),
        ("labels", ", ".join(info["labels"]) + (f" ({info['problem_type']})" if info["problem_type"] else "")),
        (
            "tokenizer",
            "none: pass token ids to Model.run()"
            if tok is None
            else f"{tok['file']} (vocab {tok['vocab_size']}, mask {tok['mask_token']})",
        ),
        ("validation", _validation_line(info["validation"])),
        ("source", info["source"]),
        ("cpu", cpu_info().line()),
        *(("", line) for line in info["int8"]),
    ]
    for key, value in rows:
        if value:
            typer.echo(f"{key:<11} {value}")


def _validation_line(validation: dict) -> str:
    """'passed (max abs diff 1.8e-07 <= 1e-04)', 'skipped (reason)', or 'none recorded'."""
    if not validation:
        return "none recorded"
    if "max_abs_diff" in validation:
        detail = f"max abs diff {validation['max_abs_diff']:.1e}"
        detail += f" <= {validation['atol']:.0e}" if "atol" in validation else ""
    else:
        detail = validation.get("reason", "")
    return f"{validation.get('status', '?')} ({detail})" if detail else str(validation.get("status", "?"))
